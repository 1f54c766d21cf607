"""Unreadable messages on the dead-letter list, capped.

The dead-letter list (DEAD_LETTER_KEY, a hash) holds two kinds of entry: jobs that used up
their deliveries (worker/delivery.py), one per job, and messages no worker could read
(worker/intake.py, worker/brokerguard.py), one per distinct body. Jobs are bounded by what
producers submit and each is a person's work to retry, so they are never dropped. Messages
come from anyone who can write to a queue: a flood of distinct ones would grow the hash
without bound. So each message entry is also indexed by when it was set aside
(DEAD_MESSAGES_KEY), and past SVDQ_DEAD_LETTER_MAX of them the oldest are dropped, counted in
DEAD_DROPPED_KEY (`svdq exporter`: svdq_dead_letter_dropped_total; `svdq dead list` says so).

One Lua script does the write, the index and the trim, so two workers setting messages aside
at once never leave the index and the hash disagreeing, and it costs one round trip.
"""

from __future__ import annotations

import json
from typing import Any

from svdq.shared.constants import DEAD_DROPPED_KEY, DEAD_LETTER_KEY, DEAD_MESSAGES_KEY
from svdq.shared.variables import DEFAULTS

# The cap travels to the worker's consumer and its transport in Celery's
# broker_transport_options (worker/brokerguard.guard puts it there): kombu ignores names it
# does not know, and both places can read them.
CAP_OPTION = "svdq_dead_letter_max"

# KEYS: the hash, the index, the dropped counter. ARGV: field, record, time, cap.
# Returns how many old entries were dropped.
_KEEP = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over <= 0 then return 0 end
local oldest = redis.call('ZRANGE', KEYS[2], 0, over - 1)
for _, field in ipairs(oldest) do redis.call('HDEL', KEYS[1], field) end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
redis.call('INCRBY', KEYS[3], over)
return over
"""


def keep_message(redis: Any, key: str, record: dict[str, Any], cap: int) -> int:
    """Put a set-aside message's `record` on the dead-letter list under `key`, keeping at
    most `cap` message entries (the oldest go); return how many were dropped."""
    keys = (DEAD_LETTER_KEY, DEAD_MESSAGES_KEY, DEAD_DROPPED_KEY)
    args = (key, json.dumps(record), record["dead_at"], cap)
    return int(redis.eval(_KEEP, len(keys), *keys, *args))


def cap_of(transport_options: Any) -> int:
    """The cap guard() put in broker_transport_options (SVDQ_DEAD_LETTER_MAX's default where
    an app was not guarded)."""
    value = (transport_options or {}).get(CAP_OPTION)
    return int(value or DEFAULTS["SVDQ_DEAD_LETTER_MAX"])
