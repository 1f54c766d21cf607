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
  (worker/delivery.py). `check_soft`, at every denoising step, stays as a second way in;
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
    hard: float | None  # deadlines, time.time()
    soft: float | None
    thread: int  # the job's thread (threading.get_ident())
    hard_limit: float | None
    signalled: bool = False  # the soft limit was raised in its thread


def raise_in(thread: int, exc: type[BaseException] | None) -> bool:
    """Raise `exc` in the thread `thread` at its next bytecode (None: take back one still
    pending). True when one thread state was changed."""
    obj = ctypes.py_object(exc) if exc is not None else None
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), obj) == 1


class InFlight:
    """The jobs this process holds now, which one holds the GPU, and their deadlines: what
    the heartbeat shows (`svdq stats`) and the watchdog enforces; safe to read from their
    threads while jobs change it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Held] = {}
        self._gpu: str | None = None

    def begin(
        self, job_id: str, hard_limit: float | None = None, soft_limit: float | None = None
    ) -> float:
        """A job starts here, in the calling thread; returns its start time (time.time())."""
        now = time.time()
        with self._lock:
            self._jobs[job_id] = _Held(
                now,
                now + hard_limit if hard_limit else None,
                now + soft_limit if soft_limit else None,
                threading.get_ident(),
                hard_limit,
            )
        return now

    def end(self, job_id: str) -> None:
        with self._lock:
            held = self._jobs.pop(job_id, None)
            if self._gpu == job_id:
                self._gpu = None
            if held is not None and held.signalled:
                raise_in(held.thread, None)  # a soft limit not yet delivered stays with the job

    @contextmanager
    def on_gpu(self, job_id: str) -> Iterator[None]:
        """`job_id` holds the GPU inside this block."""
        with self._lock:
            self._gpu = job_id
        try:
            yield
        finally:
            with self._lock:
                if self._gpu == job_id:
                    self._gpu = None

    def holds(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._jobs

    def overdue(self, now: float) -> str | None:
        """A job past its hard deadline, if any."""
        with self._lock:
            late = [j for j, h in self._jobs.items() if h.hard and now > h.hard]
        return late[0] if late else None

    def hard_limit(self, job_id: str) -> float | None:
        with self._lock:
            held = self._jobs.get(job_id)
        return held.hard_limit if held else None

    def raise_soft(self, now: float) -> list[str]:
        """Raise SoftTimeLimitExceeded once in the thread of every job past its soft deadline
        (under the lock, so never in a thread whose job has ended); returns those jobs."""
        raised = []
        with self._lock:
            for job_id, held in self._jobs.items():
                if held.soft and now > held.soft and not held.signalled:
                    held.signalled = raise_in(held.thread, SoftTimeLimitExceeded)
                    raised.append(job_id)
        return raised

    def fields(self) -> dict[str, Any]:
        """Heartbeat fields: `job_id` is the job on the GPU, else the newest one held (what
        `svdq stats` shows with its phase), `job_started_at` its start, `jobs` every job held
        (the one on the GPU first); all empty when idle."""
        with self._lock:
            order = sorted(self._jobs, key=lambda j: (j != self._gpu, -self._jobs[j].started))
            shown = order[0] if order else ""
            started = self._jobs[shown].started if shown else ""
        return {"job_id": shown, "job_started_at": started, "jobs": ",".join(order)}


class GpuGate:
    """The process-wide lock around the GPU phase of a job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def held(self, job_id: str) -> Iterator[None]:
        began = time.monotonic()
        with self._lock:
            waited = time.monotonic() - began
            if waited > 0.05:
                log.debug("job %s waited %.2fs for the GPU", job_id, waited)
            yield


def check_soft(started: float, limit: float | None, now: Callable[[], float] = time.time) -> None:
    """Raise SoftTimeLimitExceeded (billiard's, as prefork's timer does) once `limit` seconds
    have passed since `started`: the threads pool has no timer to do it."""
    if limit and now() - started > limit:
        raise SoftTimeLimitExceeded(f"soft time limit ({limit}s) exceeded")


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
        """Raise due soft limits; end the process if a job is overdue: True when it did (or
        would, in a test)."""
        now = time.time()
        for job_id in self.inflight.raise_soft(now):
            log.warning("job %s reached its soft time limit: stopped at its next bytecode", job_id)
        late = self.inflight.overdue(now)
        if late is None:
            return False
        job_id = late
        log.critical(
            "job %s ran past its hard time limit (SVDQ_TASK_TIME_LIMIT, scaled by variant): "
            "a thread cannot be stopped, so this worker process exits now (status %d); it is "
            "started again and the job held beside it comes back (redelivery or the reaper)",
            job_id,
            EXIT_HARD_LIMIT,
        )
        try:
            self._culprit(job_id, self.inflight.hard_limit(job_id))
        except Exception:  # Redis away: the job's loss is then recorded as any other
            log.exception("job %s: could not record its hard time limit", job_id)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._end(EXIT_HARD_LIMIT)
        return True

    def _forever(self) -> None:
        while not self._stopping.wait(self.every):
            self.check()
