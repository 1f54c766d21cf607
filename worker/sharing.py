"""Poison isolation with overlap on (SVDQ_OVERLAP ≥ 2): a job that kills its process also
kills the job running beside it, and that loss must not count against the innocent one.

Why: worker/delivery.py dead-letters a job after SVDQ_MAX_DELIVERIES lost deliveries. Under
prefork a process runs one job, so a lost process convicts its job. With two jobs in one
process a SIGKILL, a segfault or an out-of-memory kill tells nobody which job caused it.

The rules (prefork, overlap 1, never takes this path: nothing changes there):
- every job with an open attempt is in its process's Redis hash (`proc_key(process id)`:
  job id -> "running"), kept `ttl` seconds past the process, so the next delivery of a lost
  job can read who else was in the process when it died;
- a lost attempt whose process held another job is *shared*: not charged to the job's
  delivery limit; its reason says beside which job ("...; beside job X: not charged, runs
  alone next"). A suspect still waiting at the gate to run alone (below) is "waiting" in the
  hash, not "running": it ran nothing, so it is no suspect of the loss of the job that ran;
- a job whose last lost attempt was shared is a *suspect*: its next delivery runs alone in
  its worker (`RunGate.alone`: it waits for the other job to end, and the other thread's next
  message waits until it is done — delayed, never lost). A loss while alone is charged as
  under prefork, so a poison job is dead-lettered after SVDQ_MAX_DELIVERIES charged losses;
- a hard cap: more than 2 × SVDQ_MAX_DELIVERIES lost deliveries in all, charged or not,
  dead-letters the job too (worker/delivery.py), so nothing loops for ever;
- the hard-limit watchdog (worker/overlap.py) knows its culprit: before it ends the process
  it closes that job's attempt as prefork's hard limit ends it (charged, failed for good,
  "TimeLimitExceeded") and marks it "hard limit" in the hash, so the job beside it is told
  why it was lost ("...; job X beside it ran past its hard time limit: not charged") and is
  not a suspect.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from svdq.shared import redisjson
from svdq.shared.constants import proc_key
from svdq.worker import overlap

log = logging.getLogger("svdq.worker")

RUNNING, WAITING, HARD_LIMIT = "running", "waiting", "hard limit"
LOST_PREFIX = "worker lost"  # how every lost attempt's reason starts (delivery.LOST, reaper)


def classify(redis: Any, job_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """What a lost attempt of `job_id` becomes, from its process's hash: `charged` (counts
    toward SVDQ_MAX_DELIVERIES), and for an uncharged one its reworded `reason` and, when
    the job beside it is unknown to be the culprit, `beside` (the next delivery runs alone)."""
    proc = entry.get("proc")
    if not proc:
        return {"charged": True}
    held = {
        redisjson.text(k): redisjson.text(v) for k, v in redis.hgetall(proc_key(str(proc))).items()
    }
    # A job waiting at the gate ran nothing: it cannot have killed the process.
    others = {j: v for j, v in held.items() if j != job_id and v != WAITING}
    reason = str(entry.get("reason") or "")
    culprits = sorted(j for j, v in others.items() if v == HARD_LIMIT)
    if culprits:
        why = f"; job {', '.join(culprits)} beside it ran past its hard time limit: not charged"
        return {"charged": False, "reason": reason + why}
    if others:
        names = ", ".join(sorted(others))
        why = f"; beside job {names}: not charged, runs alone next"
        return {"charged": False, "beside": sorted(others), "reason": reason + why}
    return {"charged": True}


def suspect(history: list[dict[str, Any]]) -> bool:
    """Whether the job's last lost attempt (in `history`, oldest first) was shared."""
    lost = [a for a in history if str(a.get("reason") or "").startswith(LOST_PREFIX)]
    return bool(lost and lost[-1].get("beside"))


class RunGate:
    """A readers-writer gate: every job holds the shared side for its whole run
    (`shared`); a suspect trades it for the exclusive side (`alone`) and runs with no job
    beside it. A wait here does not count against the waiting job's time limits
    (worker/overlap.py `waiting`: its deadlines are pushed out by as long): the job is
    delayed, never timed out for the other job's turn. The other job is watched by its own
    hard limit, so no wait lasts for ever. Waits poll, so an exception raised in the
    waiting thread (a soft limit raised before the wait) still lands."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0  # suspects waiting to be alone: new jobs let them go first

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            if self._writer or self._waiting:
                with overlap.waiting():
                    while self._writer or self._waiting:
                        self._cond.wait(0.2)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Held inside `shared`: wait until no other job runs, keep new ones out."""
        with self._cond:
            self._readers -= 1
            self._waiting += 1
            try:
                with overlap.waiting():
                    while self._writer or self._readers:
                        self._cond.wait(0.2)
            except BaseException:
                self._waiting -= 1
                self._readers += 1
                raise
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._readers += 1
                self._cond.notify_all()


class Sharing:
    """This process's part in the rules above: its hash in Redis, its gate, and the attempts
    open in it (so the watchdog can close its culprit's)."""

    def __init__(self, redis: Any, proc: str, ttl: int) -> None:
        self.redis, self.proc, self.ttl = redis, proc, ttl
        self.gate = RunGate()
        self._open: dict[str, Any] = {}  # job id -> its delivery.Attempt
        self._lock = threading.Lock()

    def opened(self, job_id: str, attempt: Any, state: str = RUNNING) -> None:
        """`job_id`'s attempt is open in this process (`state` WAITING: a suspect not yet
        let through the gate, `alone`)."""
        with self._lock:
            self._open[job_id] = attempt
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(proc_key(self.proc), job_id, state)
        pipe.expire(proc_key(self.proc), self.ttl)
        pipe.execute()

    @contextlib.contextmanager
    def alone(self, job_id: str) -> Iterator[None]:
        """Run suspect `job_id` with no job beside it: wait at the gate (recorded WAITING,
        by `opened`), then say it runs."""
        with self.gate.alone():
            self.redis.hset(proc_key(self.proc), job_id, RUNNING)
            yield

    def closed(self, job_id: str) -> None:
        with self._lock:
            self._open.pop(job_id, None)
        self.redis.hdel(proc_key(self.proc), job_id)

    def hard_limit(self, job_id: str, limit: float | None) -> None:
        """The watchdog is ending this process for `job_id`: close its attempt as prefork's
        hard limit ends a job (failed for good, charged) and name it the culprit."""
        with self._lock:
            attempt = self._open.get(job_id)
        self.redis.hset(proc_key(self.proc), job_id, HARD_LIMIT)
        if attempt is not None:
            attempt.close(
                f"failed: TimeLimitExceeded: ran past its hard time limit of {limit or '?'}s "
                "(SVDQ_TASK_TIME_LIMIT, scaled by variant); the worker process was ended",
                final=True,
            )
