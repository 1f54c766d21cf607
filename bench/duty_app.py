"""The Celery app bench/duty.py's worker runs: `svdq.worker.tasks`' app with the stand-in GPU
(bench/duty_gpu.py) installed before the worker modules are imported."""

from __future__ import annotations

from bench import duty_gpu

duty_gpu.install()

from svdq.worker.tasks import app  # noqa: E402  (after the stand-in is in place)

__all__ = ["app"]
