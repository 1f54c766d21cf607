"""The one pipeline a worker process keeps loaded: which variant and rung, and switching.

A worker consumes every queue its device's ladder supports, so a job may ask for a variant
other than the loaded one: the old pipeline is evicted before the new one loads.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from svdq.shared.constants import RUNG_MEMORY_TTL, rung_key
from svdq.shared.errors import ConfigError, InvalidJobError, WorkerFatalError
from svdq.shared.settings import Settings
from svdq.worker import models, profiles, stepdown
from svdq.worker.devices import DevicePlan, ladder_for, local_plan
from svdq.worker.identity import Identity
from svdq.worker.profiles import Profile

log = logging.getLogger(__name__)
IN_JOB = (
    "loaded inside a job (variant switch or reload): only start-up compiles, so it runs "
    "eagerly until the worker process restarts"
)


@cache
def process_plan(settings: Settings, variant: str) -> DevicePlan:
    """This process's device plan (read once: the device does not change under it)."""
    return local_plan(settings, variant)


class RungMemory:
    """The rung that last worked for each variant on this worker's GPU, kept in Redis for
    RUNG_MEMORY_TTL after it last worked.

    Without it a worker that ran out of memory at start-up (warm-up) or in jobs would be
    restarted on the top rung again, and fail the same way: a crash loop. Redis being away
    never stops a worker: it then starts at the top, as before.
    """

    def __init__(self, redis: Any, host: str, gpu_index: int) -> None:
        self.redis, self.host, self.gpu_index = redis, host, gpu_index

    @classmethod
    def of(cls, redis: Any, identity: Identity) -> RungMemory:
        """Keyed by the machine and GPU index of `identity` (its Celery name is name@host)."""
        return cls(redis, identity.hostname.rsplit("@", 1)[-1], identity.gpu_index)

    def recall(self, variant: str) -> str | None:
        """The profile name that last worked for `variant` here, if any is remembered."""
        try:
            raw = self.redis.get(rung_key(self.host, self.gpu_index, variant))
        except Exception as exc:
            log.warning("could not read the remembered rung (starting at the top): %s", exc)
            return None
        return raw.decode() if isinstance(raw, bytes) else raw

    def remember(self, model: models.LoadedModel) -> None:
        """Record `model`'s rung as the one that works for its variant here."""
        key = rung_key(self.host, self.gpu_index, model.info.name)
        try:
            self.redis.set(key, model.profile.name, ex=RUNG_MEMORY_TTL)
        except Exception as exc:
            log.warning("could not remember the rung %s: %s", model.profile.name, exc)


def start_from(ladder: tuple[Profile, ...], remembered: str | None) -> tuple[Profile, ...]:
    """`ladder` from the remembered rung down (whole when it names no rung of it)."""
    names = [p.name for p in ladder]
    return ladder[names.index(remembered) :] if remembered in names else ladder


def load_initial(
    settings: Settings, variant: str, memory: RungMemory | None = None
) -> models.LoadedModel:
    """Load the worker's default variant on the first rung of its ladder that loads, warm-up
    included (`models.load_first`): from the rung that last worked on this GPU when `memory`
    has one. Raises WorkerFatalError when none loads: the worker stops rather than take jobs.
    """
    ladder = process_plan(settings, variant).ladder
    if memory is not None and ladder:
        remembered = memory.recall(ladder[0].variant)
        rungs = start_from(ladder, remembered)
        if rungs != ladder:
            log.warning(
                "starting on %s, the rung that last worked on this GPU (not %s); it is "
                "remembered for %d h after it last worked",
                rungs[0].name,
                ladder[0].name,
                RUNG_MEMORY_TTL // 3600,
            )
        ladder = rungs
    model = models.load_first(settings, ladder)
    if memory is not None:
        memory.remember(model)
    return model


def ensure_variant(
    model: models.LoadedModel,
    settings: Settings,
    worker_variant: str,
    job_variant: str,
    job_id: str | None = None,
) -> models.LoadedModel:
    """`model`, switched in place to `job_variant` when another one is loaded, or loaded
    again on the rungs it must return to (`model.resume`) or when its pipeline is empty.

    `resume`: the last job stepped down on out of memory and failed anyway (worker/stepdown.py):
    the rungs it started on are loaded again here, lazily, at the next job. Cheapest and
    correct: an idle worker or one told to stop loads nothing; the failed job's record stays
    what happened (a reload right after it would run under that job's time limit, and a limit
    hit there would turn its ResourceError into a time-out); and the next job needs that
    reload anyway to run on the rung it should.
    Empty: a job's soft time limit (SoftTimeLimitExceeded, which `models.load_first` lets
    through) ended a step-down or switch between its eviction and its load; that job ended
    as timed out.

    When no rung of the wanted variant loads, the old pipeline is gone already: the process
    ends (stepdown.exit_poisoned), the job goes back to the queue, and a fresh process loads.
    """
    plan = process_plan(settings, worker_variant)
    wanted = plan.default_variant if job_variant == "auto" else job_variant
    if wanted == model.info.name and model.pipe is not None and not model.resume:
        return model
    if wanted == model.info.name:
        # What was loaded or loading, and the rest below.
        rungs = model.resume or (model.profile, *model.lower)
        log.warning(
            "job %s: loading %s/%s again (%s)",
            job_id,
            wanted,
            rungs[0].name,
            "back from the last job's step-downs" if model.resume else "the pipeline is empty",
        )
    else:
        try:
            rungs = ladder_for(plan, wanted, settings)
        except ConfigError as exc:
            raise InvalidJobError(
                f"variant={job_variant!r} cannot run on this worker: {exc}", field="variant"
            ) from None
    # Only start-up compiles: a pipeline loaded inside a job (this switch, or a reload) runs
    # eagerly, and result.json's profile says so (`compile_unavailable`). A compiled rung's
    # load warms the UNet at every SVDQ_WARM_SHAPES shape (models.warm_all), minutes of
    # compiling and CUDA-graph recording on a GPU that this job would wait for, out of its
    # time limit; engine's `set_stance("eager_on_recompile")` guards only the pipeline call,
    # not this warm-up. Serving only the warmed variant instead would leave the other
    # variants' queues, which this worker consumes, without it. The cost: after a switch, a
    # compiled worker runs eagerly until its process restarts.
    rungs = profiles.without_compile(rungs, IN_JOB)
    lost: WorkerFatalError | None = None
    try:
        return models.swap(model, settings, rungs[0], rungs[1:])
    except WorkerFatalError as exc:
        lost = exc
    stepdown.exit_poisoned(job_id, lost)
    raise lost  # not reached: exit_poisoned ends the process
