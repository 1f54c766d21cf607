"""From a device reading to what a worker on it does: default variant, profile ladder, queues.

`device_plan` is pure (a reading and the settings in, a plan out): `svdq plan` prints it, the
launcher starts workers from it, and each worker child builds the same plan for its own GPU
(`local_plan`) without touching CUDA to decide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from svdq.shared import shapes, variants
from svdq.shared.errors import ConfigError
from svdq.shared.settings import Settings
from svdq.worker import profiles
from svdq.worker.gpuinfo import Device, read_devices, visible
from svdq.worker.profiles import Profile
from svdq.worker.toolchain import compile_unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    """What one worker on one device will do."""

    device: Device | None  # None: no CUDA
    default_variant: str  # what `auto` resolves to (tiny only on a CPU worker)
    ladder: tuple[Profile, ...]  # for the default variant, best first
    queues: tuple[str, ...]
    # Why torch.compile cannot run on this machine (no C compiler, no Python.h); None: it can.
    compile_unavailable: str | None = None
    # What a rung that compiles warms at load (SVDQ_WARM_SHAPES); () when no rung compiles.
    warm_shapes: tuple[shapes.Resolved, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON form for `svdq plan --json`."""
        out: dict[str, object] = {
            "device": self.device.to_dict() if self.device else None,
            "default_variant": self.default_variant,
            "ladder": [p.to_dict() for p in self.ladder],
            "queues": list(self.queues),
        }
        if self.compile_unavailable:
            out["compile_unavailable"] = self.compile_unavailable
        if self.warm_shapes:
            out["warm_shapes"] = [shapes.text(s) for s in self.warm_shapes]
        return out


def device_plan(
    device: Device | None,
    settings: Settings,
    variant: str = "auto",
    toolchain: Callable[[], str | None] = compile_unavailable,
) -> DevicePlan:
    """The plan for a worker on `device`; `variant` other than auto pins its default.

    On a GPU, `toolchain()` says whether torch.compile can build kernels on this machine; when
    it cannot, the rungs that compile run eagerly and carry the reason."""
    allow_cpu = settings.allow_cpu
    total = device.total_bytes if device else None
    capability = device.capability if device else None
    if variant == "auto":
        if total is None and not allow_cpu:
            variant = "tiny"  # a CPU worker serves tiny jobs; auto never means tiny
        else:
            variant = profiles.default_variant(total, allow_cpu)
    rungs = profiles.profile_ladder(total, variant, settings.worker, capability, allow_cpu)
    queues = profiles.worker_queues(total, allow_cpu)
    if variant == "tiny" and device is not None:
        queues = ["svdq.tiny"]  # a GPU pinned to tiny (smoke tests): tiny jobs only
    blocker = toolchain() if device is not None else None
    if blocker:
        rungs = profiles.without_compile(rungs, blocker)
    compiles = any(p.compile for p in rungs)
    warm = settings.worker.warm_shapes_for(variants.variant(variant).frames) if compiles else ()
    return DevicePlan(device, variant, rungs, tuple(queues), blocker, warm)


def ladder_for(plan: DevicePlan, variant: str, settings: Settings) -> tuple[Profile, ...]:
    """The rungs for a job of `variant` on the plan's device (auto: the default's ladder)."""
    if variant in ("auto", plan.default_variant):
        return plan.ladder
    dev = plan.device
    rungs = profiles.profile_ladder(
        dev.total_bytes if dev else None,
        variant,
        settings.worker,
        dev.capability if dev else None,
        settings.allow_cpu,
    )
    if plan.compile_unavailable:
        rungs = profiles.without_compile(rungs, plan.compile_unavailable)
    return rungs


def this_device(
    settings: Settings, devices: list[Device], env: Mapping[str, str] | None = None
) -> Device | None:
    """The device among `devices` this process is meant to use: the launcher's SVDQ_GPU_INDEX,
    else the first one a preset CUDA_VISIBLE_DEVICES (Slurm, a container runtime) leaves
    visible in `env` (default: this process's environment), else None (no CUDA)."""
    wanted = settings.worker.gpu_index
    if not devices:
        return None  # no CUDA here: a CPU worker, whatever index its metrics port was given
    if wanted is None:
        seen = visible(devices, (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES"))
        return seen[0] if seen else None
    for device in devices:
        if device.index == wanted:
            return device
    raise ConfigError(
        f"SVDQ_GPU_INDEX={wanted} is not a GPU on this host: one of "
        f"{', '.join(str(d.index) for d in devices) or 'none'}"
    )


def local_plan(settings: Settings, variant: str) -> DevicePlan:
    """The plan for this process's device (read now, through NVML or nvidia-smi)."""
    plan = device_plan(this_device(settings, read_devices()), settings, variant)
    if any(p.compile_unavailable for p in plan.ladder):
        log.warning(
            "torch.compile is unavailable here (%s): the rungs that would compile run eagerly",
            plan.compile_unavailable,
        )
    return plan


def local_profile(settings: Settings, variant: str) -> Profile:
    """The first rung for `variant` on this process's device (kept for `svdq run`)."""
    return local_plan(settings, variant).ladder[0]
