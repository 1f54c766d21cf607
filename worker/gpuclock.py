"""How busy this worker keeps its GPU: seconds inside the pipeline call over wall time.

A GPU-hour is the fleet's main cost; every second the GPU waits for the CPU (fetch, fit,
encode, upload, result.json, the hand-off to the next job) is paid for and wasted. The clock
counts the seconds a job spends generating (the denoising pipeline call and the VAE decode,
out-of-memory retries and a step-down's reload included: the GPU is held throughout) and the
wall time since the worker became ready (its model loaded and warmed up).

Two figures come out of it (worker/metrics.py exports both):
- `svdq_gpu_busy_seconds_total`, a counter: Prometheus' `rate(...[5m])` of it is the busy
  ratio over any sliding window, which is what the dashboard plots;
- `svdq_gpu_busy_ratio`, a gauge: busy seconds over wall seconds since the worker became
  ready, the whole life of the process in one number (`svdq stats` shows it too).
A call still running counts up to the moment it is read, so a long job does not make the
ratio dip and then jump.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class GpuClock:
    """Busy seconds and the ready moment of one worker process (one GPU). Thread-safe: the
    job runs in one thread, the metrics server and the heartbeat read from others."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.ready_at: float | None = None  # when the model was loaded and warmed up
        self._busy = 0.0  # seconds of finished calls
        self._since: float | None = None  # start of the call running now

    def ready(self) -> None:
        """The worker is ready to take jobs: wall time counts from now."""
        with self._lock:
            self.ready_at = self._clock()

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count the time inside this block as GPU-busy (whatever ends it)."""
        with self._lock:
            self._since = self._clock()
        try:
            yield
        finally:
            with self._lock:
                if self._since is not None:
                    self._busy += self._clock() - self._since
                self._since = None

    def busy_seconds(self) -> float:
        """Seconds inside the pipeline call so far, a running call included."""
        with self._lock:
            running = 0.0 if self._since is None else self._clock() - self._since
            return self._busy + running

    def ratio(self) -> float | None:
        """Busy seconds over wall seconds since ready (0–1); None before the worker is ready."""
        with self._lock:
            if self.ready_at is None:
                return None
            now = self._clock()
            running = 0.0 if self._since is None else now - self._since
            wall = now - self.ready_at
            return min(1.0, (self._busy + running) / wall) if wall > 0 else 0.0
