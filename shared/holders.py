"""Who holds a message: one entry per delivered, unacknowledged svdq.generate message, written
by the worker that took it, so the reaper (worker/reaper.py, via shared/orphans.py) can tell a
dead host's message from a live worker's even when no run of it is open.

Why it is needed: a message's only other owner mark is the open attempt its run records
(worker/delivery.py). A message with none — a retry waiting out its countdown (Celery keeps ETA
tasks reserved and unacknowledged in the worker's main process), or a run that ended on a host
that died before its ack — named nobody, so it sat in kombu's unacked hash until the
visibility timeout (two hours) and `svdq stats` counted it as running.

The entry: HOLDERS_KEY hash, field = kombu's delivery tag (the field of kombu's `unacked`
hash), value = JSON {worker, boot, at, score}. `worker` is the Celery worker name, `boot` the random
id made once per worker start (worker/identity.boot_id) and carried in every heartbeat of that
worker, whichever process beats (a prefork pool child or, with the threads pool, the main
process). So the holder is alive exactly while svdq:worker:<name> exists and names the same
boot: a worker restarted under the same name has a new boot id, and its predecessor's messages
are orphans. `at` is the holder's clock when it took the message (only for "silent for N s").
`score` is the message's score in kombu's `unacked_index` as the holder read it right after
taking it (kombu adds it there, and to `unacked`, before Celery's task_received signal fires).
A delivery tag survives a restore, so an entry may be an earlier delivery's: the entry is this
delivery's exactly when its `score` equals the score in `unacked_index` now — each take ZADDs
a fresh time() under the tag. No clock of two hosts is compared: an earlier holder whose clock
ran ahead once made its stale entry look newer than a live worker's receipt, and the live
worker's message was reaped. An entry without `score` (written before it existed, or when the
read failed) is never this delivery's: its message waits for the visibility timeout.

Entries go when a scan finds their message acknowledged (`forget_released`) or requeues it;
the hash also expires a visibility timeout after its last write, when kombu itself would
have restored every message it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from svdq.shared import redisjson
from svdq.shared.constants import HOLDERS_KEY

# KEYS: holders, kombu's unacked hash. Drops every holder entry whose message is no longer
# unacked (acknowledged, or restored to a queue), in one atomic pass: a message taken again
# under the same tag re-enters `unacked` before its new entry is written, so none is lost.
_FORGET_RELEASED = """
local fields = redis.call('hkeys', KEYS[1])
local gone = 0
for _, tag in ipairs(fields) do
  if redis.call('hexists', KEYS[2], tag) == 0 then
    gone = gone + redis.call('hdel', KEYS[1], tag)
  end
end
return gone
"""


@dataclass(frozen=True)
class Holder:
    """The worker start that took one message."""

    worker: str  # Celery's worker name (svdq:worker:<name>)
    boot: str  # that start's boot id
    at: float  # when it took the message, on its own clock
    score: float | None  # the message's unacked_index score it saw (None: unknown)
    raw: bytes  # the entry as stored (a requeue removes exactly this)


def record(
    redis: Any,
    tag: str,
    worker: str,
    boot: str,
    at: float,
    keep: int,
    score: float | None = None,
) -> None:
    """Say that worker start `boot` of `worker` took the message with delivery tag `tag`,
    whose unacked_index score was `score`; the hash lives `keep` seconds past its last write
    (the visibility timeout)."""
    entry: dict[str, Any] = {"worker": worker, "boot": boot, "at": at}
    if score is not None:
        entry["score"] = score
    value = json.dumps(entry)
    pipe = redis.pipeline()
    pipe.hset(HOLDERS_KEY, tag, value)
    pipe.expire(HOLDERS_KEY, keep)
    pipe.execute()


def parse(raw: Any) -> Holder | None:
    """A holder entry as stored; None for anything unreadable (a tampered entry must stop
    neither a scan nor `svdq stats`: its message is judged as if it had no entry)."""
    entry = redisjson.obj(raw)
    if entry is None:
        return None
    worker, boot, at = entry.get("worker"), entry.get("boot"), redisjson.number(entry.get("at"))
    if not (isinstance(worker, str) and worker and isinstance(boot, str) and boot):
        return None
    if at is None:
        return None
    score = redisjson.number(entry["score"]) if "score" in entry else None
    if "score" in entry and score is None:
        return None  # a score that is no finite number: tampered
    stored = raw if isinstance(raw, bytes) else str(raw).encode()
    return Holder(worker, boot, at, score, stored)


def holders(redis: Any) -> dict[str, Holder]:
    """Every readable holder entry, by delivery tag (a few per worker: one HGETALL)."""
    found = {}
    for tag, raw in redis.hgetall(HOLDERS_KEY).items():
        holder = parse(raw)
        if holder is not None:
            found[tag.decode() if isinstance(tag, bytes) else str(tag)] = holder
    return found


def boot_alive(redis: Any, worker_hash: str, boot: str) -> bool:
    """Whether the worker start `boot` still beats: its heartbeat hash exists and names it."""
    current = redis.hget(worker_hash, "boot")
    return (
        current is not None
        and (current.decode() if isinstance(current, bytes) else str(current)) == boot
    )


def forget_released(redis: Any, unacked_key: str) -> int:
    """Drop the entries of messages no longer unacknowledged; return how many went."""
    return int(redis.eval(_FORGET_RELEASED, 2, HOLDERS_KEY, unacked_key))
