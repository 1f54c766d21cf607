"""From a device reading to what a worker on it does: default variant, profile ladder, queues.

`device_plan` is pure (a reading and the environment in, a plan out): `svdq plan` prints it,
the launcher starts workers from it, and each worker child builds the same plan for its own
GPU (`local_ladder`) without touching CUDA to decide.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from svdq.shared.errors import ConfigError
from svdq.worker import profiles
from svdq.worker.gpuinfo import Device, read_devices
from svdq.worker.profiles import Profile

GPU_INDEX_VARIABLE = "SVDQ_GPU_INDEX"  # set by the launcher in each per-GPU child
# Test-only: the worker serves every queue it consumes with the tiny pipeline on the CPU,
# keeping its GPU plan (queues, profile names) — how the launcher tests run on CPU hosts.
SERVE_TINY_VARIABLE = "SVDQ_TEST_SERVE_TINY"


@dataclass(frozen=True)
class DevicePlan:
    """What one worker on one device will do."""

    device: Device | None  # None: no CUDA
    default_variant: str  # what `auto` resolves to (tiny only on a CPU worker)
    ladder: tuple[Profile, ...]  # for the default variant, best first
    queues: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON form for `svdq plan --json`."""
        return {
            "device": self.device.to_dict() if self.device else None,
            "default_variant": self.default_variant,
            "ladder": [p.to_dict() for p in self.ladder],
            "queues": list(self.queues),
        }


def _allow_cpu(env: Mapping[str, str]) -> bool:
    return env.get("SVDQ_ALLOW_CPU", "0").strip().lower() in ("1", "true", "yes", "on")


def device_plan(device: Device | None, env: Mapping[str, str], variant: str = "auto") -> DevicePlan:
    """The plan for a worker on `device`; `variant` other than auto pins its default."""
    allow_cpu = _allow_cpu(env)
    total = device.total_bytes if device else None
    capability = device.capability if device else None
    if variant == "auto":
        if total is None and not allow_cpu:
            variant = "tiny"  # a CPU worker serves tiny jobs; auto never means tiny
        else:
            variant = profiles.default_variant(total, allow_cpu)
    rungs = profiles.profile_ladder(total, variant, env, capability, allow_cpu)
    queues = profiles.worker_queues(total, allow_cpu)
    if variant == "tiny" and device is not None:
        queues = ["svdq.tiny"]  # a GPU pinned to tiny (smoke tests): tiny jobs only
    return DevicePlan(device, variant, rungs, tuple(queues))


def ladder_for(plan: DevicePlan, variant: str, env: Mapping[str, str]) -> tuple[Profile, ...]:
    """The rungs for a job of `variant` on the plan's device (auto: the default's ladder)."""
    if variant in ("auto", plan.default_variant):
        return plan.ladder
    dev = plan.device
    return profiles.profile_ladder(
        dev.total_bytes if dev else None,
        variant,
        env,
        dev.capability if dev else None,
        _allow_cpu(env),
    )


def this_device(env: Mapping[str, str] | None = None) -> Device | None:
    """The device this process is meant to use: the launcher's SVDQ_GPU_INDEX, else GPU 0,
    else None (no CUDA)."""
    env = os.environ if env is None else env
    devices = read_devices(env)
    if not devices:
        return None
    raw = env.get(GPU_INDEX_VARIABLE, "").strip()
    if not raw:
        return devices[0]
    wanted = int(raw)
    for device in devices:
        if device.index == wanted:
            return device
    raise ConfigError(f"{GPU_INDEX_VARIABLE}={raw!r} is not a GPU on this host")


def serve_tiny(env: Mapping[str, str] | None = None) -> bool:
    """Whether the test-only SVDQ_TEST_SERVE_TINY=1 is set."""
    env = os.environ if env is None else env
    return env.get(SERVE_TINY_VARIABLE) == "1"


def runnable_here(profile: Profile) -> Profile:
    """Under SVDQ_TEST_SERVE_TINY, the profile the CPU can run in its place (fp32, no
    compile, no sequential offload); otherwise the profile itself."""
    if not serve_tiny() or profile.device == "cpu":
        return profile
    offload = "model" if profile.offload != "none" else "none"
    return dataclasses.replace(
        profile, dtype="float32", compile=False, device="cpu", offload=offload
    )


def local_plan(variant: str) -> DevicePlan:
    """The plan for this process's device and environment."""
    return device_plan(this_device(), os.environ, variant)


def local_profile(variant: str) -> Profile:
    """The first rung for `variant` on this process's device (kept for `svdq run`)."""
    return runnable_here(local_plan(variant).ladder[0])
