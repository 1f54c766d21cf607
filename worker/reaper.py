"""The reaper: a dead host's job is queued again minutes after it died, not at the visibility
timeout (SVDQ_VISIBILITY_TIMEOUT, two hours by default, which must stay above the longest job).

Every worker runs it: a thread in the pool child scans every SVDQ_REAP_INTERVAL seconds, under a
Redis lock (REAPER_LOCK_KEY, SET NX with a TTL) so one scan runs at a time across the fleet; no
extra service to deploy. shared/orphans.py decides what is an orphan (lease expired, and an
open attempt whose process no longer beats, or a holder entry naming a worker start that no
longer beats: shared/holders.py); this module puts it back, once.

Why the pool child, not the Celery parent or the supervisor: the parent forks the pool child
at start and again after every child death, and a thread doing Redis I/O in a process that
forks can leave a lock held in the new child (CUDA is never touched there either way); the
supervisor runs only for GPU workers (a CPU worker execs straight into Celery) and never imports
Celery or kombu; the child already holds the runtime — Redis, the store that says whether a
result.json is valid, and the /metrics where svdq_jobs_reaped_total is counted. Its thread runs
beside a job as the heartbeat's and the lease's threads do.

Requeue = the exact original message, moved from kombu's unacked hash back to the front of its
queue, in one Lua script. kombu 5.7 does the same move when the visibility timeout passes
(kombu/transport/redis.py, QoS.restore_by_tag):

        def restore_transaction(pipe):
            p = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if p:
                M, EX, RK = loads(bytes_to_str(p))  # json is unicode
                self.channel._do_restore_message(M, EX, RK, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as client:
            client.transaction(restore_transaction, self.unacked_key)

and Channel._do_restore_message RPUSHes it (`(pipe.lpush if leftmost else pipe.rpush)(
self._q_for_pri(queue, pri), dumps(payload))`) after setting `redelivered`. Ours differs in one
way: HDEL's return value picks the single winner. Two reapers racing, or ours racing kombu's own
restore: the HDEL that removes the entry pushes the message; every other finds it gone and
pushes nothing (kombu's WATCH on the unacked hash sees our change and retries, then reads
nothing). So the job is queued once and the "late original" no longer exists: when the visibility
timeout passes there is nothing left to restore. Should the old holder be alive after all (a
network partition), its ack of a tag no longer present only removes nothing (`QoS.ack` ->
`_remove_from_indices`: `zrem` + `hdel`), and the lease (now taken by the new delivery) and
result.json keep the effects once.

The same script closes the lost attempt with its reason (`worker lost (host gone): requeued by
<reaper> after 75 s`; `worker lost (process gone: ...)` when the worker beats again under its name
as a new process: restarted after a crash or a watchdog exit), so the next delivery does not call it
merely "lost", and clears the job's stale `running (denoise 2/40)` state: `svdq status` says queued
again, and why. A message judged by its holder entry has no open attempt to close (a retry waiting
out its countdown, or a run that ended before its host died and its ack never came); the job's
record says why it was queued again, and the entry goes with the message. A run that ended with its
result.json written is not run again: the copy finds the result, and the callback-once mark
(lifecycle._callback_once) keeps the callback single.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.utils.json import dumps, loads

from svdq.shared import records, redisjson
from svdq.shared.constants import (
    HOLDERS_KEY,
    LAST_SEEN_KEY,
    REAPER_LOCK_KEY,
    REQUEUED_FIELD,
    deliveries_key,
    job_key,
    lease_key,
    worker_key,
)
from svdq.shared.holders import forget_released
from svdq.shared.orphans import Orphan, orphans
from svdq.shared.spec import JobSpec
from svdq.shared.storage import ObjectStore

log = logging.getLogger("svdq.reaper")

LOCK_TTL = 60  # seconds: frees the lock of a scanner that died mid-scan
HOST_GONE = "worker lost (host gone)"  # nothing beats under the holder's worker name
# The holder's worker name beats again as another process: its process died (a SIGKILL, a
# crash or a watchdog exit, restarted by the supervisor or by Celery), not its host.
PROCESS_GONE = "worker lost (process gone: its worker beats again as a new process)"
ALREADY_WRITTEN = " (its result.json was already written: the copy returns it, no GPU run)"

# KEYS: unacked, unacked_index, deliveries, celery meta, job record, lease, holder's heartbeat,
# holders, queue list(s)...
# ARGV: tag, message, attempt index ('' when none), attempt as the scan saw it, attempt
# closed, note, note's field, holder's pid, holder's process id ('' when none), holder entry
# as the scan saw it ('' when judged by the attempt), holder entry's boot id
# The scan's decision is checked again here, atomically: nobody took the lease since, the
# attempt is as the scan saw it and the heartbeat still does not name its process — or, for a
# message judged by its holder entry, the entry is unchanged and the heartbeat does not name
# its worker start.
_REQUEUE = """
if redis.call('exists', KEYS[6]) == 1 then
  return 0
end
if ARGV[3] ~= '' and redis.call('lindex', KEYS[3], ARGV[3]) ~= ARGV[4] then
  return 0
end
if ARGV[10] ~= '' then
  if redis.call('hget', KEYS[8], ARGV[1]) ~= ARGV[10] then
    return 0
  end
  if redis.call('hget', KEYS[7], 'boot') == ARGV[11] then
    return 0
  end
else
  local beat = redis.call('hmget', KEYS[7], 'pid', 'proc')
  if beat[1] and beat[1] == ARGV[8] and (beat[2] or '') == ARGV[9] then
    return 0
  end
end
if redis.call('hdel', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('hdel', KEYS[8], ARGV[1])
for i = 9, #KEYS do
  redis.call('rpush', KEYS[i], ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('lset', KEYS[3], ARGV[3], ARGV[5])
end
local meta = redis.call('get', KEYS[4])
if meta then
  local ok, state = pcall(cjson.decode, meta)
  if ok and (state['status'] == 'PROGRESS' or state['status'] == 'STARTED') then
    redis.call('del', KEYS[4])
  end
end
if redis.call('exists', KEYS[5]) == 1 then
  redis.call('hset', KEYS[5], ARGV[7], ARGV[6])
end
return 1
"""
# KEYS: deliveries, job record. ARGV: attempt index ('' when none), attempt as stored,
# reworded, note as stored, reworded, note's field
_AMEND = """
if ARGV[1] ~= '' and redis.call('lindex', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('lset', KEYS[1], ARGV[1], ARGV[3])
end
if redis.call('hget', KEYS[2], ARGV[6]) == ARGV[4] then
  redis.call('hset', KEYS[2], ARGV[6], ARGV[5])
end
return 1
"""
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Reaped:
    """One orphan this reaper queued again."""

    job_id: str
    worker: str  # the lost holder
    reason: str  # as recorded on the attempt


def reason_for(orphan: Orphan, reaper: str, now: float, done: bool) -> str:
    """The lost attempt's reason: what was lost (the host, or only the process: the worker
    beats again under its name), who queued it again, after how long a silence."""
    lost = PROCESS_GONE if orphan.restarted else HOST_GONE
    text = f"{lost}: requeued by {reaper} after {orphan.silent_for(now):.0f} s"
    if done:
        text += ALREADY_WRITTEN
    return text


def result_written(store: ObjectStore, raw: bytes) -> bool:
    """Whether a valid result.json exists for the message's job (shared/records.py's rules).
    A job that died after writing it is queued again too — the copy returns the recorded
    result without a GPU run, and sends the callback the dead worker may not have — but its
    reason says so. The store failing to answer counts as not written."""
    try:
        spec = JobSpec.from_dict(_spec(raw))
        record, _problem = records.read_result(store, spec.job_id or "", spec.output_prefix)
    except Exception:
        return False
    return record is not None


def _spec(raw: bytes) -> dict[str, Any]:
    """The job spec inside an unacked entry (kombu's virtual transport base64-encodes bodies)."""
    message = loads(raw)[0]
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = loads(body)[0]
    return dict(args[0])


class Broker:
    """kombu's own view of the broker: the key names and the queue a message goes back to, so
    a requeue lands exactly where kombu's restore would put it. Broker and result backend are
    one Redis (shared/celery_app.make_celery gives both the same URL), so the job's svdq keys
    are in the same database as the unacked hash, and one script can change both."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.connection = app.connection_for_write()

    def close(self) -> None:
        self.connection.release()

    @property
    def channel(self) -> Any:
        return self.connection.default_channel

    def queues_of(self, raw: bytes) -> list[str]:
        """The Redis list(s) kombu's restore would push this unacked entry to."""
        message, exchange, routing_key = loads(raw)
        channel = self.channel
        priority = channel._get_message_priority(message, reverse=False)
        return [channel._q_for_pri(q, priority) for q in channel._lookup(exchange, routing_key)]

    def client(self) -> Any:
        with self.channel.conn_or_acquire() as client:
            return client


def requeue(broker: Broker, orphan: Orphan, reason: str) -> bool:
    """Put the orphan's message back at the front of its queue, close its lost attempt with
    `reason`; True for the one caller that did it, False when another got there first."""
    return _requeue(broker, orphan, reason) is not None


def _requeue(broker: Broker, orphan: Orphan, reason: str) -> tuple[str, str] | None:
    """requeue(); for the winner, the closed attempt and the job's note as stored."""
    channel = broker.channel
    message = loads(orphan.held.raw)[0]
    # As kombu's Channel._do_restore_message marks a restored message.
    message.get("headers", {})["redelivered"] = True
    message.get("properties", {}).get("delivery_info", {})["redelivered"] = True
    closed = ""
    if orphan.attempt_index is not None:
        closed = json.dumps({**orphan.attempt, "reason": reason, "ended_at": round(time.time(), 3)})
    job_id = orphan.held.job_id
    keys = [
        channel.unacked_key,
        channel.unacked_index_key,
        deliveries_key(job_id),
        redisjson.text(broker.app.backend.get_key_for_task(job_id)),
        job_key(job_id),
        lease_key(job_id),
        worker_key(orphan.worker),
        HOLDERS_KEY,
        *broker.queues_of(orphan.held.raw),
    ]
    holder = orphan.holder
    note = json.dumps({"reason": reason, "at": time.time(), "worker": orphan.worker})
    won = broker.client().eval(
        _REQUEUE,
        len(keys),
        *keys,
        orphan.held.tag,
        dumps(message),
        "" if orphan.attempt_index is None else orphan.attempt_index,
        orphan.attempt_raw,
        closed,
        note,
        REQUEUED_FIELD,
        str(orphan.attempt.get("pid")),
        str(orphan.attempt.get("proc") or ""),
        b"" if holder is None else holder.raw,
        "" if holder is None else holder.boot,
    )
    return (closed, note) if won else None


def _amend(client: Any, orphan: Orphan, stored: tuple[str, str], reason: str) -> None:
    """Reword a requeued attempt's reason and the job's note, if nobody changed them since."""
    closed, note = stored
    new_note = json.loads(note)
    new_note["reason"] = reason
    index, reworded = "", ""
    if orphan.attempt_index is not None:  # judged by its holder entry: no attempt to reword
        attempt = json.loads(closed)
        attempt["reason"] = reason
        index, reworded = str(orphan.attempt_index), json.dumps(attempt)
    keys = [deliveries_key(orphan.held.job_id), job_key(orphan.held.job_id)]
    args = [index, closed, reworded, note, json.dumps(new_note)]
    client.eval(_AMEND, 2, *keys, *args, REQUEUED_FIELD)


def scan(broker: Broker, store: ObjectStore, reaper: str) -> list[Reaped]:
    """One pass, under the fleet-wide lock: queue every orphan again. Returns those this call
    requeued (none when another scan holds the lock).

    The store is asked whether a requeued job's result.json exists only after every requeue,
    and after the lock is released: it only words the reason, and a store that hangs must
    hold no requeue up."""
    client = broker.client()
    token = f"{reaper}:{uuid.uuid4().hex}"
    if not client.set(REAPER_LOCK_KEY, token, nx=True, ex=LOCK_TTL):
        return []
    won = []
    try:
        channel = broker.channel
        for orphan in orphans(client, channel.unacked_key, channel.unacked_index_key):
            try:
                reason = reason_for(orphan, reaper, time.time(), False)
                stored = _requeue(broker, orphan, reason)
                if stored is not None:
                    log.warning("job %s: %s", orphan.held.job_id, reason)
                    won.append((orphan, reason, stored))
            except Exception as exc:  # one bad entry must not keep the others from their requeue
                log.warning("job %s: could not requeue: %s", orphan.held.job_id, exc)
        forget_silent(client, _keep_seconds(broker.app), time.time())
        forget_released(client, channel.unacked_key)
    finally:
        client.eval(_UNLOCK, 1, REAPER_LOCK_KEY, token)
    reaped = []
    for orphan, reason, stored in won:
        if result_written(store, orphan.held.raw):
            reason += ALREADY_WRITTEN
            try:
                _amend(client, orphan, stored, reason)
            except Exception as exc:  # the requeue is done; only the wording is left as it was
                log.warning("job %s: could not reword its requeue: %s", orphan.held.job_id, exc)
        reaped.append(Reaped(orphan.held.job_id, orphan.worker, reason))
    return reaped


def _keep_seconds(app: Celery) -> float:
    """How long a worker's last beat is remembered: as long as task states (result_expires,
    set from SVDQ_RESULT_EXPIRES by shared/celery_app.make_celery)."""
    expires = app.conf.result_expires
    return float(expires.total_seconds() if hasattr(expires, "total_seconds") else expires or 0)


def forget_silent(client: Any, keep: float, now: float) -> int:
    """Drop from LAST_SEEN_KEY the workers silent for longer than `keep` seconds (every spot
    instance or pod name ever seen would stay in it otherwise); return how many went."""
    if keep <= 0:
        return 0
    old = [
        name for name, raw in client.hgetall(LAST_SEEN_KEY).items() if _beat_at(raw) < now - keep
    ]
    return int(client.hdel(LAST_SEEN_KEY, *old)) if old else 0


def _beat_at(raw: Any) -> float:
    entry = redisjson.obj(raw)
    at = None if entry is None else redisjson.number(entry.get("at"))
    return 0.0 if at is None else at  # unreadable: as good as forgotten


class Reaper:
    """The scan, every `interval` seconds from a daemon thread, until `stop()`."""

    def __init__(
        self,
        app: Celery,
        store: ObjectStore,
        name: str,
        interval: float,
        on_reaped: Callable[[Reaped], None] = lambda _: None,
    ) -> None:
        self.app, self.store, self.name, self.interval = app, store, name, interval
        self.on_reaped = on_reaped  # told of every job requeued (the worker counts them)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._forever, name="reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _forever(self) -> None:
        broker: Broker | None = None
        # A random first wait: workers started together do not all scan at the same moment.
        wait = random.uniform(0, self.interval)
        while not self._stop.wait(wait):
            wait = self.interval
            try:
                broker = broker or Broker(self.app)
                for reaped in scan(broker, self.store, self.name):
                    self.on_reaped(reaped)
            except Exception as exc:  # Redis away for a moment: the next scan tries again
                log.warning("reaper scan failed: %s", exc)
                if broker is not None:
                    broker.close()
                broker = None
