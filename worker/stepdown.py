"""Out-of-memory step-down: retry a job one profile rung lower, inside the same task.

On an out-of-memory error (any of the forms worker/oom.py knows) the attempt's memory is
freed *outside* the `except` block (inside it, the traceback still holds the failed frames and
their tensors), the pipeline is reloaded with the next rung's profile, and the job runs
again — down to the last rung, after which the job fails with ResourceError. Every try is
recorded as `{"profile": name, "outcome": "oom" | "succeeded", "seconds": s,
"decode_chunk_size": n}`, an "oom" with its `"phase"` ("denoise", or "decode" for each
halving of the chunk, `Decoder`); a rung whose pipeline does not load is recorded as
`"load_failed"` (with its `"error"`) and the one below it is tried. When no rung below
loads, the process has no pipeline: it exits (the job goes back to the queue) and never takes
another job.

A CUDA error that breaks the context, or a third job in a row that no rung could hold, ends
the pool child instead (acks_late: the job goes back to the queue; Celery starts a fresh child).

The loaded model stays on the rung that worked: the next job would most likely run out of
memory on the higher one too, and the rung is remembered (worker/resident.py `RungMemory`), so
a restarted worker starts there. A job that steps down and then fails anyway (out of memory on
every rung: one oversized job, up to 2048x2048) proves nothing about the rungs below: the
model goes back to the rungs it had before the job (`LoadedModel.resume`, loaded again at the
next job) and that rung is not remembered.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from svdq.shared.errors import ResourceError, WorkerFatalError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, models, oom

log = logging.getLogger(__name__)
T = TypeVar("T")

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


class BatchTooLarge(ResourceError):
    """Raised when a batch of candidates (`seeds`) ran out of memory in the denoise (a
    ResourceError should it ever escape, though worker/quality.py always catches it): the
    caller runs them one by one instead; the rung is not stepped down for it (worker/quality.py).
    `attempts`: the call's tries, the batch's "oom" last."""

    def __init__(self, message: str, attempts: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.attempts = attempts


def generate(
    model: models.LoadedModel,
    settings: Settings,
    spec: JobSpec,
    image: Image.Image,
    progress: engine.Progress | None = None,
    on_step_down: Callable[[str, str], None] = lambda before, after: None,
    seeds: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, dict[str, float], engine.RunParams, list[dict[str, Any]]]:
    """`engine.generate`, stepping down the model's ladder on out-of-memory errors.

    Returns frames, phase timings, the parameters that ran and the attempts. `model` is changed in
    place to the rung that succeeded. `on_step_down(before, after)` hears of every step down
    (the worker counts them), told as it happens: a job may still fail on a lower rung.
    An out-of-memory error in the decode first halves the decode chunk (`Decoder`).
    `seeds`: one clip per seed in one call (engine.generate); a batch of more than one that
    runs out of memory in the denoise raises BatchTooLarge (recorded, "phase": "batch")
    rather than stepping down: one clip at a time may well fit on this rung.
    """
    attempts: list[dict[str, Any]] = []
    # Where the job started (or where an earlier such job started, if not resumed yet).
    home = model.resume or (model.profile, *model.lower)
    while True:
        params = engine.params_for(spec, model)
        decoder = Decoder(spec, model, attempts)
        start = time.perf_counter()
        run = functools.partial(
            engine.generate, model, spec, image, params, progress, decoder, seeds
        )
        done, _ = _try(spec, model, run)
        seconds = round(time.perf_counter() - start, 4)
        name = model.profile.name
        if done is not None:
            frames, timings = done
            used = decoder.chunk or params.decode_chunk_size
            params = dataclasses.replace(params, decode_chunk_size=used)
            attempts.append(_attempt(name, "succeeded", seconds, params.decode_chunk_size))
            _state["exhausted_in_a_row"] = 0
            model.resume = ()  # a step-down that ended in success stays (and is remembered)
            return frames, timings, params, attempts
        if decoder.chunk is None and seeds is not None and len(seeds) > 1:
            attempt = _attempt(name, "oom", seconds, params.decode_chunk_size, "batch")
            attempts.append({**attempt, "videos": len(seeds)})
            models.free_memory()
            raise BatchTooLarge(f"{len(seeds)} clips in one call do not fit on {name}", attempts)
        if decoder.chunk is None:  # the denoise ran out (the decoder records its own tries)
            attempts.append(_attempt(name, "oom", seconds, params.decode_chunk_size, "denoise"))
        models.free_memory()  # the exception and its frames are gone by now
        if not model.lower:
            _state["exhausted_in_a_row"] += 1
            if _state["exhausted_in_a_row"] >= REPEATED_OOM_EXIT:
                _state["exhausted_in_a_row"] = 0
                exit_poisoned(
                    spec.job_id, RuntimeError(f"{REPEATED_OOM_EXIT} jobs in a row out of memory")
                )
            tried = ", ".join(dict.fromkeys(a["profile"] for a in attempts))
            raise ResourceError(
                f"job {spec.job_id}: out of GPU memory on every profile this worker has "
                f"({tried}); try fewer frames (num_frames), a smaller size, or a card with "
                "more memory"
            )
        following, rest = model.lower[0], model.lower[1:]
        log.warning("job %s: stepping down from %s to %s", spec.job_id, name, following.name)
        on_step_down(name, following.name)
        lost: WorkerFatalError | None = None
        # Until a rung succeeds, the next job goes back to `home`. Set before the swap too: a
        # time limit may end the job inside it (then the next job reloads from `home`).
        model.resume = home
        try:  # a rung that does not load is in `attempts`, and the next one is tried
            models.swap(model, settings, following, rest, attempts)
        except WorkerFatalError as exc:
            lost = exc
        model.resume = home  # `swap` put the fresh model's fields in place
        if lost is not None:  # no pipeline left: never take another job; this one is requeued
            exit_poisoned(spec.job_id, lost)
            raise lost  # not reached: exit_poisoned ends the process


class Decoder:
    """The decode of one denoised clip, halving its chunk on out of memory, down to 1.

    The latents stay: an out-of-memory error in the VAE decode is retried with half the chunk
    without denoising again and without reloading. Each failed try is recorded in `attempts`
    (`"phase": "decode"` with its chunk); when even one frame at a time does not fit, it
    raises out of memory for the rung's step-down. `chunk` is the last chunk tried (None
    before the decode started).
    """

    def __init__(
        self, spec: JobSpec, model: models.LoadedModel, attempts: list[dict[str, Any]]
    ) -> None:
        self.spec, self.model, self.attempts = spec, model, attempts
        self.chunk: int | None = None

    def __call__(self, latents: Any, num_frames: int, chunk: int) -> np.ndarray:
        import torch

        chunk = max(1, chunk)
        while True:
            self.chunk = chunk
            start = time.perf_counter()
            decode = functools.partial(
                engine.decode_latents, self.model, latents, num_frames, chunk
            )
            frames, _ = _try(self.spec, self.model, decode)
            if frames is not None:
                return frames
            seconds = round(time.perf_counter() - start, 4)
            name = self.model.profile.name
            self.attempts.append(_attempt(name, "oom", seconds, chunk, "decode"))
            models.free_memory()
            if chunk == 1:
                raise torch.OutOfMemoryError(
                    f"out of memory decoding one frame at a time on profile {name}"
                )
            log.warning(
                "job %s: decode out of memory at %d frames a chunk; trying %d",
                self.spec.job_id,
                chunk,
                chunk // 2,
            )
            chunk //= 2


def _attempt(
    profile: str, outcome: str, seconds: float, chunk: int, phase: str | None = None
) -> dict[str, Any]:
    """One try as result.json's `attempts` lists it."""
    record: dict[str, Any] = {"profile": profile, "outcome": outcome, "seconds": seconds}
    if phase:
        record["phase"] = phase
    record["decode_chunk_size"] = chunk
    return record


def _try(spec: JobSpec, model: models.LoadedModel, run: Callable[[], T]) -> tuple[T | None, bool]:
    """`(run(), False)`, or `(None, True)` when it ran out of memory (any form worker/oom.py
    knows); a broken CUDA context ends the process, anything else propagates. The exception
    is out of scope when this returns, so its frames' tensors can be freed."""
    try:
        return run(), False
    except RuntimeError as exc:  # every out-of-memory form is one (worker/oom.py)
        if not oom.out_of_memory(exc):
            if oom.poisoned(exc):
                exit_poisoned(spec.job_id, exc)
            raise
        log.warning("job %s: out of memory on %s: %s", spec.job_id, model.profile.name, exc)
    return None, True
