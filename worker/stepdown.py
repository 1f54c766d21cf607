"""Out-of-memory step-down: retry a job one profile rung lower, inside the same task.

On an out-of-memory error (any of the forms worker/oom.py knows) the attempt's memory is
freed *outside* the `except` block (inside it, the traceback still holds the failed frames and
their tensors), the pipeline is reloaded with the next rung's profile, and the job runs
again — down to the last rung, after which the job fails with ResourceError. Every rung
tried is recorded as `{"profile": name, "outcome": "oom" | "succeeded", "seconds": s}`;
a rung whose pipeline does not load is recorded as `"load_failed"` (with its `"error"`) and
the one below it is tried. When no rung below loads, the process has no pipeline: it exits
(the job goes back to the queue) and never takes another job.

A CUDA error that breaks the context, or a third job in a row that no rung could hold, ends
the pool child instead (acks_late: the job goes back to the queue; Celery starts a fresh child).

The loaded model stays on the rung that worked: the next job would most likely run out of
memory on the higher one too. A restarted worker starts from the top again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from svdq.shared.errors import ResourceError, WorkerFatalError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, models, oom

log = logging.getLogger(__name__)

EXIT_POISONED = 70  # the pool child's exit status; Celery starts a fresh child, fresh context
# Jobs in a row that ran out of memory on every rung: by then the process itself is the likely
# culprit (fragmented or leaked memory), so the next one ends it and the job is retried fresh.
REPEATED_OOM_EXIT = 3
_state = {"exhausted_in_a_row": 0}


def exit_poisoned(job_id: str | None, exc: BaseException) -> None:
    """Leave the process at once: with acks_late and reject_on_worker_lost the job goes back
    to the queue, and Celery replaces this pool child (the model loads on a fresh context).
    Also the end of a process whose pipeline could not be loaded again (WorkerFatalError)."""
    log.critical(
        "job %s: this process cannot go on (%s); exiting (WorkerFatalError) so a fresh one "
        "replaces it",
        job_id,
        exc,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_POISONED)


def generate(
    model: models.LoadedModel,
    settings: Settings,
    spec: JobSpec,
    image: Image.Image,
    progress: engine.Progress | None = None,
    on_step_down: Callable[[str, str], None] = lambda before, after: None,
) -> tuple[np.ndarray, dict[str, float], engine.RunParams, list[dict[str, Any]]]:
    """`engine.generate`, stepping down the model's ladder on out-of-memory errors.

    Returns frames, phase timings, the parameters that ran and the attempts. `model` is changed in
    place to the rung that succeeded. `on_step_down(before, after)` hears of every step down
    (the worker counts them), told as it happens: a job may still fail on a lower rung.
    """

    attempts: list[dict[str, Any]] = []
    while True:
        params = engine.params_for(spec, model)
        start = time.perf_counter()
        out_of_memory = False
        try:
            frames, timings = engine.generate(model, spec, image, params, progress)
        except RuntimeError as exc:  # every out-of-memory form is one (worker/oom.py)
            if not oom.out_of_memory(exc):
                if oom.poisoned(exc):
                    exit_poisoned(spec.job_id, exc)
                raise
            out_of_memory = True
            log.warning("job %s: out of memory on %s: %s", spec.job_id, model.profile.name, exc)
        seconds = round(time.perf_counter() - start, 4)
        name = model.profile.name
        if not out_of_memory:
            attempts.append({"profile": name, "outcome": "succeeded", "seconds": seconds})
            _state["exhausted_in_a_row"] = 0
            return frames, timings, params, attempts
        attempts.append({"profile": name, "outcome": "oom", "seconds": seconds})
        models.free_memory()  # the exception and its frames are gone by now
        if not model.lower:
            _state["exhausted_in_a_row"] += 1
            if _state["exhausted_in_a_row"] >= REPEATED_OOM_EXIT:
                _state["exhausted_in_a_row"] = 0
                exit_poisoned(
                    spec.job_id, RuntimeError(f"{REPEATED_OOM_EXIT} jobs in a row out of memory")
                )
            tried = ", ".join(a["profile"] for a in attempts)
            raise ResourceError(
                f"job {spec.job_id}: out of GPU memory on every profile this worker has "
                f"({tried}); try fewer frames (num_frames), a smaller size, or a card with "
                "more memory"
            )
        following, rest = model.lower[0], model.lower[1:]
        log.warning("job %s: stepping down from %s to %s", spec.job_id, name, following.name)
        on_step_down(name, following.name)
        lost: WorkerFatalError | None = None
        try:  # a rung that does not load is in `attempts`, and the next one is tried
            models.swap(model, settings, following, rest, attempts)
        except WorkerFatalError as exc:
            lost = exc
        if lost is not None:  # no pipeline left: never take another job; this one is requeued
            exit_poisoned(spec.job_id, lost)
            raise lost  # not reached: exit_poisoned ends the process
