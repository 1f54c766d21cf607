"""The one pipeline a worker process keeps loaded: which variant and rung, and switching.

A worker consumes every queue its device's ladder supports, so a job may ask for a variant
other than the loaded one: the old pipeline is evicted before the new one loads.
"""

from __future__ import annotations

from functools import cache

from svdq.shared.errors import ConfigError, InvalidJobError, WorkerFatalError
from svdq.shared.settings import Settings
from svdq.worker import models, stepdown
from svdq.worker.devices import DevicePlan, ladder_for, local_plan


@cache
def process_plan(settings: Settings, variant: str) -> DevicePlan:
    """This process's device plan (read once: the device does not change under it)."""
    return local_plan(settings, variant)


def load_initial(settings: Settings, variant: str) -> models.LoadedModel:
    """Load the worker's default variant on the top rung of its ladder that loads (raises
    WorkerFatalError when none does: the worker stops rather than take jobs)."""
    return models.load_first(settings, process_plan(settings, variant).ladder)


def ensure_variant(
    model: models.LoadedModel,
    settings: Settings,
    worker_variant: str,
    job_variant: str,
    job_id: str | None = None,
) -> models.LoadedModel:
    """`model`, switched in place to `job_variant` when another one is loaded.

    When no rung of the wanted variant loads, the old pipeline is gone already: the process
    ends (stepdown.exit_poisoned), the job goes back to the queue, and a fresh process loads.
    """
    plan = process_plan(settings, worker_variant)
    wanted = plan.default_variant if job_variant == "auto" else job_variant
    if wanted == model.info.name:
        return model
    try:
        rungs = ladder_for(plan, wanted, settings)
    except ConfigError as exc:
        raise InvalidJobError(
            f"variant={job_variant!r} cannot run on this worker: {exc}", field="variant"
        ) from None
    lost: WorkerFatalError | None = None
    try:
        return models.swap(model, settings, rungs[0], rungs[1:])
    except WorkerFatalError as exc:
        lost = exc
    stepdown.exit_poisoned(job_id, lost)
    raise lost  # not reached: exit_poisoned ends the process
