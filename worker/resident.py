"""The one pipeline a worker process keeps loaded: which variant and rung, and switching.

A worker consumes every queue its device's ladder supports, so a job may ask for a variant
other than the loaded one: the old pipeline is evicted before the new one loads.
"""

from __future__ import annotations

from functools import cache

from svdq.shared.errors import ConfigError, InvalidJobError
from svdq.shared.settings import Settings
from svdq.worker import models
from svdq.worker.devices import DevicePlan, ladder_for, local_plan
from svdq.worker.profiles import Profile


@cache
def process_plan(settings: Settings, variant: str) -> DevicePlan:
    """This process's device plan (read once: the device does not change under it)."""
    return local_plan(settings, variant)


def _load_rungs(settings: Settings, rungs: tuple[Profile, ...]) -> models.LoadedModel:
    return models.load_model(settings, rungs[0], rungs[1:])


def load_initial(settings: Settings, variant: str) -> models.LoadedModel:
    """Load the worker's default variant on the top rung of its ladder."""
    return _load_rungs(settings, process_plan(settings, variant).ladder)


def ensure_variant(
    model: models.LoadedModel, settings: Settings, worker_variant: str, job_variant: str
) -> models.LoadedModel:
    """`model`, switched in place to `job_variant` when another one is loaded."""
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
    return models.swap(model, settings, rungs[0], rungs[1:])
