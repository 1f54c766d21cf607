"""Which jobs in flight lost their worker: read from Redis alone, for the reaper
(worker/reaper.py), which queues them again, and for `svdq stats` / `svdq status`, which must
never show a dead host's job as running.

A job in flight is a message in kombu's `unacked` hash (delivered to a worker, not yet
acknowledged). Its job has lost its worker — it is an orphan — when all of these hold:

- nobody holds the job's lease (worker/lease.py): the holder renews it every third of
  SVDQ_LEASE_TTL while the job runs, however long it runs, so only a holder that stopped
  renewing lets it expire;
- the job's attempt list (worker/delivery.py) has an attempt still open (no reason yet): a
  run began and nobody recorded its end. Its worker, pid and process id name the holder;
- that holder has no heartbeat: its worker's hash (svdq:worker:<name>) is gone, or belongs to
  another process now (a restarted worker under the same name: a new process id, even where
  a container hands it its old pid);
- the message was received at or before that attempt began (kombu stamps the receipt in the
  `unacked_index` sorted set, on the same host as the attempt's clock): a copy received later
  is some other worker's, and is left alone.

A message with no open attempt of its own — a retry waiting out its countdown (Celery keeps an
ETA task reserved and unacknowledged), a run that ended on a host that died before its ack, or
another copy beside the lost run's — is judged by its holder entry (shared/holders.py): the
worker start that took it. It is an orphan when nobody holds the job's lease, the entry is this
delivery's (the unacked_index score it stored is the message's score now: no clocks of two
hosts compared) and that worker start has no heartbeat (its hash is gone, or names another boot
id: the worker was restarted). A message without a readable entry of this delivery (taken by a
worker older than the entries, or an entry without its score) is never taken on this ground:
it waits for the visibility timeout, as before. A live worker's reserved message is never
taken. A slow job is never taken: its lease is renewed.

Every entry is read through shared/redisjson.py: a tampered one (not JSON, nested thousands
deep, a number too large for a float, the wrong shape) counts as absent and stops nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from svdq.shared import redisjson
from svdq.shared.constants import (
    LAST_SEEN_KEY,
    TASK_GENERATE,
    deliveries_key,
    lease_key,
    worker_key,
)
from svdq.shared.holders import Holder, boot_alive, holders

UNACKED_KEY = "unacked"  # kombu's Redis transport defaults (Channel.unacked_key, ...)
UNACKED_INDEX_KEY = "unacked_index"
# The attempt's started_at is rounded to the millisecond; kombu's receipt time is not. No more
# slack than that: a killed pool child's message goes back to its queue and the same worker may
# take it again within a second of the lost run's start, and that copy is a live worker's.
CLOCK_SLACK = 0.001


@dataclass(frozen=True)
class Held:
    """One svdq.generate message in kombu's unacked hash."""

    tag: str  # kombu's delivery tag: the field of the unacked hash
    job_id: str
    received_at: float  # its score in the unacked index: when a worker took it
    raw: bytes  # the hash's value, kombu's JSON [message, exchange, routing_key]
    queue: str  # its routing key: the queue it was taken from


@dataclass(frozen=True)
class Orphan:
    """A message whose job's worker is gone: with the attempt that worker left open, or (no
    open attempt of its own) with the holder entry that names the dead worker start."""

    held: Held
    attempt_index: int | None  # in the job's attempt list; None: judged by its holder entry
    attempt_raw: bytes  # the open attempt as stored (the reaper replaces exactly this)
    attempt: dict[str, Any]
    last_seen: float | None  # the holder's last heartbeat, if its worker name is known
    holder: Holder | None = None  # the entry it was judged by (attempt_index None)
    # Its worker name beats again, as another process (a restarted worker: a watchdog exit or
    # a crash under the supervisor, or prefork's new pool child): the process was lost, not
    # the host. False when nothing beats under the name.
    restarted: bool = False

    @property
    def worker(self) -> str:
        if self.holder is not None:
            return self.holder.worker
        return str(self.attempt.get("worker") or "?")

    def silent_for(self, now: float) -> float:
        """Seconds since the holder was last heard of (its last beat, else its attempt's
        start, else when it took the message)."""
        since = self.last_seen
        if since is None and self.holder is not None:
            since = self.holder.at
        if since is None:
            since = redisjson.number(self.attempt.get("started_at")) or now
        return max(0.0, now - since)


def held_jobs(
    redis: Any, unacked_key: str = UNACKED_KEY, index_key: str = UNACKED_INDEX_KEY
) -> list[Held]:
    """Every svdq.generate message delivered and not acknowledged. The hash holds one entry
    per message a worker has taken (a few per worker), so one HGETALL is cheap."""
    found = []
    for tag, raw in redis.hgetall(unacked_key).items():
        shape = _shape(raw)
        if shape is None:
            continue  # not kombu's entry for a svdq.generate message: not ours to judge
        job_id, queue = shape
        score = redisjson.number(redis.zscore(index_key, tag))
        if score is None:
            continue  # acknowledged between the two reads
        found.append(Held(redisjson.text(tag), job_id, score, raw, queue))
    return found


def _shape(raw: Any) -> tuple[str, str] | None:
    """(job id, queue) of an unacked entry that is kombu's [message, exchange, routing_key]
    for a svdq.generate message; None for anything else (a tampered or foreign entry, which
    must stop neither a scan nor `svdq stats`)."""
    entry = redisjson.value(raw)
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], dict)):
        return None
    message, exchange, routing_key = entry
    headers = message.get("headers")
    if not isinstance(headers, dict) or headers.get("task") != TASK_GENERATE:
        return None
    job_id = headers.get("id")
    if not (isinstance(job_id, str) and isinstance(exchange, str) and isinstance(routing_key, str)):
        return None
    if not isinstance(message.get("body"), str):
        return None
    return job_id, routing_key


def open_attempt(redis: Any, job_id: str) -> tuple[int, bytes, dict[str, Any]] | None:
    """The job's last attempt if it is still open (nobody recorded how it ended)."""
    entries = redis.lrange(deliveries_key(job_id), 0, -1)
    for index in range(len(entries) - 1, -1, -1):
        entry = redisjson.obj(entries[index])
        if entry is None:
            return None  # unreadable, or not an object: no run to judge by
        if entry.get("reason") is None:
            return index, entries[index], entry
        return None  # the last attempt ended: no run is in the air
    return None


def _process(entry: dict[str, Any]) -> tuple[str, str | None]:
    """The process an attempt (or a last-seen entry) names: its pid and its random process id
    (worker/identity.process_id; None in entries written before it existed)."""
    proc = entry.get("proc")
    return str(entry.get("pid")), None if proc is None else str(proc)


def holder_alive(redis: Any, worker: str, attempt: dict[str, Any]) -> bool:
    """Whether the process that ran `attempt` still beats: the worker's heartbeat hash exists
    and names that very process, by pid and by process id (a worker restarted under the same
    name beats with another process id, even when a container hands it its old pid)."""
    pid, proc = redis.hmget(worker_key(worker), "pid", "proc")
    if pid is None:
        return False
    return (redisjson.text(pid), None if proc is None else redisjson.text(proc)) == _process(
        attempt
    )


def beats(redis: Any, worker: str) -> bool:
    """Whether some process beats under the worker name `worker` now (its heartbeat hash
    exists). Asked only of a holder known not to beat itself: then it says a successor does."""
    return bool(redis.exists(worker_key(worker)))


def last_seen(redis: Any, worker: str, attempt: dict[str, Any]) -> float | None:
    """When the process that ran `attempt` last beat, if Redis still knows: the worker's
    last-seen entry counts only while it is that process's (not a successor's under the
    same name)."""
    seen = redisjson.obj(redis.hget(LAST_SEEN_KEY, worker))
    if seen is None or _process(seen) != _process(attempt):
        return None
    return redisjson.number(seen.get("at"))


def last_seen_boot(redis: Any, holder: Holder) -> float | None:
    """When the worker start of `holder` last beat, if Redis still knows (not a successor's
    beat under the same name)."""
    seen = redisjson.obj(redis.hget(LAST_SEEN_KEY, holder.worker))
    if seen is None or seen.get("boot") != holder.boot:
        return None
    return redisjson.number(seen.get("at"))


def held_by_dead(redis: Any, held: Held, holder: Holder | None) -> Orphan | None:
    """`held` as an orphan by its holder entry: the entry is this delivery's and its worker
    start no longer beats. None when there is no such entry or its holder lives."""
    if holder is None or holder.score is None or holder.score != held.received_at:
        # No entry, one without its score, or an earlier delivery's (each take ZADDs a new
        # score under the tag; the new holder's entry is on its way): names nobody.
        return None
    if boot_alive(redis, worker_key(holder.worker), holder.boot):
        return None
    beating = beats(redis, holder.worker)
    return Orphan(held, None, b"", {}, last_seen_boot(redis, holder), holder, beating)


def orphans(
    redis: Any,
    unacked_key: str = UNACKED_KEY,
    index_key: str = UNACKED_INDEX_KEY,
    job_id: str | None = None,
) -> list[Orphan]:
    """Messages whose job lost its worker (the rules above); only `job_id`'s when given."""
    by_job: dict[str, list[Held]] = {}
    for held in held_jobs(redis, unacked_key, index_key):
        if job_id is None or held.job_id == job_id:
            by_job.setdefault(held.job_id, []).append(held)
    entries = holders(redis) if by_job else {}
    found = []
    for job, copies in by_job.items():
        if redis.exists(lease_key(job)):
            continue  # a live delivery renews it (or it has not expired yet)
        run: Held | None = None
        attempt = open_attempt(redis, job)
        if attempt is not None:
            index, raw, entry = attempt
            worker = str(entry.get("worker") or "")
            if holder_alive(redis, worker, entry):
                continue  # its run is alive: whatever else is held waits for it to end
            started = redisjson.number(entry.get("started_at")) or 0.0
            mine = [h for h in copies if h.received_at <= started + CLOCK_SLACK]
            if mine:
                # The run's own message is the last one received before it began. (Copies
                # taken after that run began are some other worker's: judged by their holder.)
                run = max(mine, key=lambda h: h.received_at)
                seen, beating = last_seen(redis, worker, entry), beats(redis, worker)
                found.append(Orphan(run, index, raw, entry, seen, None, beating))
        for held in copies:
            if held is not run:
                orphan = held_by_dead(redis, held, entries.get(held.tag))
                if orphan is not None:
                    found.append(orphan)
    return found


def lost_holder(redis: Any, job_id: str, now: float) -> str | None:
    """For `svdq status` of a job that looks running: why it is not, when its run's worker is
    gone; None while it runs. The very rules the reaper acts on (`orphans`), so status never
    calls a job lost that the reaper rightly leaves."""
    found = orphans(redis, job_id=job_id)
    if not found:
        return None
    orphan = found[0]
    silent = f"{orphan.silent_for(now):.0f} s"
    if orphan.restarted:
        gone = f"its process on {orphan.worker} is gone (the worker beats again as a new process"
        gone += f"; the run's last heard of {silent} ago)"
    else:
        gone = f"its worker {orphan.worker} is gone (no heartbeat for {silent})"
    return f"{gone}: a worker's reaper queues it again within SVDQ_REAP_INTERVAL"
