"""Two jobs in one worker at once (SVDQ_OVERLAP ≥ 2): the GPU lock, the jobs in flight, and
the time limits Celery's threads pool does not keep.

Why: with one job at a time the GPU idles while a job encodes, uploads and writes result.json,
and while the next one is fetched and fitted. With SVDQ_OVERLAP=2 the worker runs Celery's
threads pool (`--pool=svdq.worker.threadpool:TaskPool --concurrency=2`, one process, the model
loaded once at worker_init, worker/tasks.py): job N+1 is fetched, fitted and denoising while
job N encodes, uploads and writes its marker. Only the GPU phase is serialized, by `GpuGate`:
`resident.ensure_variant` (a variant switch evicts the pipeline the other job would use) and
`stepdown.generate` (its step-down rung changes too) run under one process-wide lock, taken
through run_job's `gpu()` context manager (worker/lifecycle.py), so every try of the
generation takes it.

Why the guarantees hold with two jobs in flight:
- acks_late is per message: each thread's task acknowledges its own message when it returns,
  after its result.json (celery/worker/request.py: `on_success` → `acknowledge` when
  `task.acks_late`). With prefetch multiplier 1 and concurrency 2 the worker holds at most two
  unacknowledged messages.
- A killed process (any phase of either job) leaves both messages unacknowledged: Redis
  redelivers them after the visibility timeout, or the reaper (worker/reaper.py) queues them
  again once their leases lapse and this pid is gone. Nothing is lost.
- Leases and the commit marker are per job (worker/delivery.py, worker/lease.py), keyed by the
  job id, not the process: two jobs in one process take two leases; a copy of either delivered
  elsewhere finds the lease or its result.json. Nothing runs twice.
- The job's context is per thread: `task.request` is a `LocalStack` (celery/app/task.py:
  `cls.request_stack = LocalStack()`, celery/utils/threads.py: `class _FastLocalStack(
  threading.local)`), and so is `current_task` (celery/_state.py: `_task_stack = LocalStack()`).
- Shared clients are thread-safe: redis-py's client takes a connection from its pool per
  command (ConnectionPool is guarded by a lock); boto3's low-level clients are thread-safe
  (the store builds one client per process and no resource or session is shared across jobs).

Time limits: Celery's threads pool keeps none (celery/concurrency/thread.py defines no
`on_soft_timeout`/`on_hard_timeout`, celery/concurrency/base.py's are `pass`; only prefork's
billiard pool arms timers). So the worker keeps them itself, in `Watchdog` (one thread):
- soft: at the job's soft limit it raises SoftTimeLimitExceeded (billiard's, the one prefork's
  timer raises) in the job's thread, asynchronously, with `PyThreadState_SetAsyncExc`. CPython's
  C-API docs: "Asynchronously raise an exception in a thread. [...] The exception is raised
  the next time the thread executes Python bytecode" — never inside a long C call (a CUDA
  kernel, a blocking socket read): it lands when that call returns. Python-level work (a loop
  of short calls, a denoising loop) ends with the same JobTimeoutError as under prefork
  (worker/delivery.py). The job's own look at every denoising step (InFlight.check_soft) is
  a second way in to the same deadline; whichever raises it first, it is raised once: never
  again in a job that raised it itself, nor once its run ended (result.json written or the
  run failed: `finishing`), where it would land in the handling of the first (the attempt's
  close, the callback) and leave the attempt open;
- waits at a gate (this GpuGate, worker/sharing.py's RunGate) do not count: the waiting
  job's deadlines, soft and hard, are pushed out by as long as it waited (`waiting`), so a
  job is delayed, never timed out, for the other job's turn. The job holding the gate is
  watched by its own limits, so no wait lasts for ever;
- hard: a job past its hard limit (a hang inside C) ends the whole process (os._exit, with a
  log line naming the job) — a thread cannot be killed. First it closes that job's attempt
  as prefork's hard limit ends it (failed for good, "TimeLimitExceeded", worker/sharing.py),
  so its copy coming back is refused, and the job held beside it is lost without blame. The
  supervisor starts the worker again, and the other job comes back (redelivery or the reaper).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

log = logging.getLogger("svdq.worker")

EXIT_HARD_LIMIT = 71  # the process's exit status when the watchdog ends it


@dataclass
class _Held:
    started: float
    hard: float | None  # deadlines, time.time(), before the gate waits are added (`waited`)
    soft: float | None
    thread: int  # the job's thread (threading.get_ident())
    hard_limit: float | None
    soft_limit: float | None = None
    waited: float = 0.0  # the thread's gate waits (`waited_in`) when the job began
    signalled: bool = False  # the soft limit was raised in its thread (by the watchdog)
    stopped: bool = False  # the job raised its soft limit itself (`InFlight.check_soft`)
    finishing: bool = False  # its run ended (result.json written, or it failed): no raise now

    def pushed(self, deadline: float | None, now: float) -> float | None:
        """`deadline` pushed out by the time the job's thread waited at a gate since it began."""
        return deadline + (waited_in(self.thread, now) - self.waited) if deadline else None


class _Clock:
    """Per thread, what the time limits must not count: the seconds spent waiting at a gate
    (GpuGate, sharing.RunGate) — another job holds it, the waiting one is not slow. Keyed by
    thread, so the gates need no InFlight: a thread runs one job at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total: dict[int, float] = {}  # thread -> seconds waited, every wait ended so far
        self.since: dict[int, float] = {}  # thread -> when its wait now began (time.time())


_CLOCK = _Clock()


def waited_in(thread: int, now: float | None = None) -> float:
    """Seconds `thread` has waited at a gate so far (a running total, the wait now included)."""
    now = time.time() if now is None else now
    with _CLOCK.lock:
        since = _CLOCK.since.get(thread)
        return _CLOCK.total.get(thread, 0.0) + (max(0.0, now - since) if since else 0.0)


def _wait_starts() -> None:
    with _CLOCK.lock:
        _CLOCK.since[threading.get_ident()] = time.time()


def _wait_ends() -> None:
    """Add the calling thread's wait to its total; a second call does nothing."""
    thread = threading.get_ident()
    with _CLOCK.lock:
        since = _CLOCK.since.pop(thread, None)
        if since is not None:
            _CLOCK.total[thread] = _CLOCK.total.get(thread, 0.0) + max(0.0, time.time() - since)


@contextmanager
def waiting() -> Iterator[None]:
    """The calling thread waits at a gate in this block: its job's deadlines (InFlight) are
    pushed out by as long, so a job is never timed out for another job's turn. A gate is
    only held by a job that is itself watched by its own hard limit (a holder hung in C ends
    the process), so a wait cannot last for ever unnoticed."""
    _wait_starts()
    try:
        yield
    finally:
        _wait_ends()


def raise_in(thread: int, exc: type[BaseException] | None) -> bool:
    """Raise `exc` in the thread `thread` at its next bytecode (None: take back one still
    pending). True when one thread state was changed."""
    obj = ctypes.py_object(exc) if exc is not None else None
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), obj) == 1


class InFlight:
    """The jobs this process holds now, which one holds the GPU, and their deadlines: what
    the heartbeat shows (`svdq stats`) and the watchdog enforces; safe to read from their
    threads while jobs change it.

    Each entry is one copy of a job in one thread, keyed by (job id, thread): a second copy
    of a running job (its message restored and taken by the other thread, sent back by
    LeaseBusy) has an entry of its own, so its end never unwatches the copy still running.
    `begin`, `end`, `on_gpu`, `finishing` and `check_soft` act on the calling thread's entry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, int], _Held] = {}
        self._gpu: tuple[str, int] | None = None

    def begin(
        self, job_id: str, hard_limit: float | None = None, soft_limit: float | None = None
    ) -> float:
        """A job starts here, in the calling thread; returns its start time (time.time())."""
        now, thread = time.time(), threading.get_ident()
        held = _Held(
            now,
            now + hard_limit if hard_limit else None,
            now + soft_limit if soft_limit else None,
            thread,
            hard_limit,
            soft_limit,
            waited_in(thread, now),
        )
        with self._lock:
            self._jobs[(job_id, thread)] = held
        return now

    def end(self, job_id: str) -> None:
        key = (job_id, threading.get_ident())
        with self._lock:
            held = self._jobs.pop(key, None)
            if self._gpu == key:
                self._gpu = None
            if held is not None and held.signalled:
                raise_in(held.thread, None)  # a soft limit not yet delivered stays with the job

    def finishing(self, job_id: str) -> None:
        """The calling thread's copy of `job_id` ended its run (result.json is written, or
        the run failed and is being closed): its soft limit is no longer raised in it, and
        one raised but not yet delivered is taken back — it would land in the attempt's
        close or the callback's queueing, leaving the attempt open or a callback lost. The
        hard limit still watches it."""
        with self._lock:
            held = self._jobs.get((job_id, threading.get_ident()))
            if held is not None:
                held.finishing = True
                if held.signalled:
                    raise_in(held.thread, None)

    def check_soft(self, job_id: str) -> None:
        """The job's own look at its soft limit (every denoising step): the same deadline
        the watchdog keeps (gate waits not counted), raised once, by whichever looks first."""
        with self._lock:
            held = self._jobs.get((job_id, threading.get_ident()))
            if held is None or held.signalled or held.stopped or held.finishing:
                return
            if not _past(held.pushed(held.soft, time.time())):
                return
            held.stopped = True
        raise SoftTimeLimitExceeded(f"soft time limit ({held.soft_limit}s) exceeded")

    def soft_deadline(self, job_id: str) -> float | None:
        """The calling thread's copy's soft deadline (time.time()), pushed out by its gate
        waits so far; None without a soft limit."""
        with self._lock:
            held = self._jobs.get((job_id, threading.get_ident()))
            return held.pushed(held.soft, time.time()) if held is not None else None

    @contextmanager
    def on_gpu(self, job_id: str) -> Iterator[None]:
        """`job_id` (the calling thread's copy) holds the GPU inside this block."""
        key = (job_id, threading.get_ident())
        with self._lock:
            self._gpu = key
        try:
            yield
        finally:
            with self._lock:
                if self._gpu == key:
                    self._gpu = None

    def holds(self, job_id: str) -> bool:
        with self._lock:
            return any(j == job_id for j, _ in self._jobs)

    def late(self, now: float) -> tuple[str, float | None] | None:
        """A job past its hard deadline (pushed out by its gate waits), if any, with its
        hard limit."""
        with self._lock:
            for (job_id, _), held in self._jobs.items():
                hard = held.pushed(held.hard, now)
                if hard and now > hard:
                    return job_id, held.hard_limit
        return None

    def raise_soft(self, now: float) -> list[str]:
        """Raise SoftTimeLimitExceeded once in the thread of every job past its soft deadline
        (under the lock, so never in a thread whose job has ended); returns those jobs.

        Never twice: not in a job that raised it itself (`check_soft`), nor once its run
        ended (`finishing`): a second raise would land in the handling of the first
        (delivery's `except SoftTimeLimitExceeded`, closing the attempt) and leave the attempt
        open and the job with a bare SoftTimeLimitExceeded."""
        raised = []
        with self._lock:
            for (job_id, thread), held in self._jobs.items():
                if held.signalled or held.stopped or held.finishing:
                    continue
                if not _past(held.pushed(held.soft, now), now):
                    continue
                held.signalled = raise_in(thread, SoftTimeLimitExceeded)
                raised.append(job_id)
        return raised

    def fields(self) -> dict[str, Any]:
        """Heartbeat fields: `job_id` is the job on the GPU, else the newest one held (what
        `svdq stats` shows with its phase), `job_started_at` its start, `jobs` every job held
        (the one on the GPU first, each job once however many copies); all empty when idle."""
        with self._lock:
            order = sorted(self._jobs, key=lambda k: (k != self._gpu, -self._jobs[k].started))
            shown = order[0] if order else None
            started = self._jobs[shown].started if shown else ""
        jobs = list(dict.fromkeys(job_id for job_id, _ in order))
        return {
            "job_id": shown[0] if shown else "",
            "job_started_at": started,
            "jobs": ",".join(jobs),
        }


def _past(deadline: float | None, now: float | None = None) -> bool:
    return bool(deadline) and (time.time() if now is None else now) > (deadline or 0.0)


class GpuGate:
    """The process-wide lock around the GPU phase of a job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def held(self, job_id: str) -> Iterator[None]:
        """Hold the GPU inside this block; the wait for it does not count against the job's
        time limits (`waiting`): the job beside it holding the GPU is not this job's fault."""
        began = time.monotonic()
        with waiting():
            self._lock.acquire()
        try:
            if (waited := time.monotonic() - began) > 0.05:
                log.debug("job %s waited %.2fs for the GPU", job_id, waited)
            yield
        finally:
            self._lock.release()


class Watchdog:
    """Keeps the time limits the threads pool does not: raises the soft limit in a job's
    thread, and ends the process when a job runs past its hard limit (a thread cannot be
    killed; a job hung inside C would hold its GPU slot and its lease for ever)."""

    def __init__(
        self,
        inflight: InFlight,
        every: float = 1.0,
        end: Callable[[int], Any] = os._exit,
        culprit: Callable[[str, float | None], Any] = lambda job_id, limit: None,
    ) -> None:
        self.inflight, self.every, self._end = inflight, every, end
        self._culprit = culprit  # told, before the end, which job it is for (worker/sharing.py)
        self._stopping = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._forever, name="time-limit-watchdog", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopping.set()

    def check(self) -> bool:
        """End the process if a job is overdue, else raise due soft limits: True when it
        ended it (or would, in a test). The hard limit first: a soft limit raised in the
        same look would only race the culprit's close (worker/sharing.py) in its thread."""
        now = time.time()
        late = self.inflight.late(now)
        if late is None:
            for job_id in self.inflight.raise_soft(now):
                log.warning(
                    "job %s reached its soft time limit: stopped at its next bytecode", job_id
                )
            return False
        job_id, limit = late
        log.critical(
            "job %s ran past its hard time limit (SVDQ_TASK_TIME_LIMIT, scaled by variant): "
            "a thread cannot be stopped, so this worker process exits now (status %d); it is "
            "started again and the job held beside it comes back (redelivery or the reaper)",
            job_id,
            EXIT_HARD_LIMIT,
        )
        try:
            self._culprit(job_id, limit)
        except Exception:  # Redis away: the job's loss is then recorded as any other
            log.exception("job %s: could not record its hard time limit", job_id)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._end(EXIT_HARD_LIMIT)
        return True

    def _forever(self) -> None:
        while not self._stopping.wait(self.every):
            self.check()
