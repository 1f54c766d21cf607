"""Memory profiles: which variant and settings a device can carry, and what to fall back to.

Pure and table driven: (total VRAM, compute capability, requested variant) → a ladder of
`Profile`s, best first. Nothing here touches a GPU, imports torch, reads files or reads the
environment (the operator's overrides arrive parsed, in `WorkerSettings`), so the producer
side (`svdq plan`) and the unit tests use it as is.

VRAM bands are compared in decimal gigabytes with a 5 % tolerance, because cards report a
little less than the size printed on the box: an "A100 40GB" reports ~40.5e9 bytes, an RTX
4090 ("24GB") ~25.7e9, a T4 ("16GB") ~15.8e9. With floors at 40/24/16/10/8 GB minus 5 %
(38, 22.8, 15.2, 9.5, 7.6 GB) each of them lands in the row people expect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from svdq.shared.constants import queue_for
from svdq.shared.errors import ConfigError
from svdq.shared.settings import WorkerSettings
from svdq.shared.variables import PROFILE_VARIABLES
from svdq.shared.variants import BY_NAME as VARIANT_ROWS
from svdq.shared.variants import REAL_VARIANTS

GB = 10**9
GIB = 1024**3
BAND_TOLERANCE = 0.05  # a card may report up to 5 % under its row's floor and still get it
COMPILE_MIN_CAPABILITY = (7, 0)  # torch.compile's Triton backend needs Volta or newer


@dataclass(frozen=True)
class Profile:
    """How the pipeline is set up on one device."""

    name: str
    variant: str
    dtype: str  # float16 | float32
    offload: str  # none | model | sequential
    forward_chunking: bool
    decode_chunk_size: int | None  # None: all frames at once
    compile: bool
    device: str  # cuda | cpu
    # Why a rung the table compiles runs eagerly here (worker/toolchain.py); None: as the table.
    compile_unavailable: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON form recorded in result.json (compile_unavailable only when set)."""
        out = dataclasses.asdict(self)
        if out["compile_unavailable"] is None:
            del out["compile_unavailable"]
        return out


# (floor in decimal GB, profile) from the top down: the seed's measurements.
GPU_TABLE: tuple[tuple[float, Profile], ...] = (
    (40, Profile("xt-40g", "svd-xt", "float16", "none", False, 25, True, "cuda")),
    (24, Profile("xt-24g", "svd-xt", "float16", "none", False, 8, False, "cuda")),
    (16, Profile("xt-16g", "svd-xt", "float16", "model", False, 4, False, "cuda")),
    (10, Profile("xt-10g", "svd-xt", "float16", "model", True, 2, False, "cuda")),
    (8, Profile("xt-8g", "svd-xt", "float16", "model", True, 1, False, "cuda")),
    (0, Profile("svd-low", "svd", "float16", "sequential", True, 1, False, "cuda")),
)
# A row carries the variants whose `min_vram_gb` (shared/variants.py) is at most its floor:
# the xt rows run every variant, below 8 GB only svd and tiny fit.
ROW_FLOOR: dict[str, float] = {p.name: floor for floor, p in GPU_TABLE}

# No CUDA: fp32 (fp16 is ~35x slower on a CPU). The step down decodes in chunks of 2 with
# forward chunking: the same levers as on a GPU, so the step-down path runs in CPU tests too.
CPU_PROFILE = Profile("cpu", "tiny", "float32", "none", False, None, False, "cpu")
CPU_LEAN = Profile("cpu-lean", "tiny", "float32", "none", True, 2, False, "cpu")
CPU_LADDER = (CPU_PROFILE, CPU_LEAN)

PROFILE_NAMES = tuple(p.name for _, p in GPU_TABLE) + tuple(p.name for p in CPU_LADDER)

# The operator's field overrides (parsed by shared.settings): variable -> Profile field.
FIELD_OVERRIDES = {
    "SVDQ_DTYPE": "dtype",
    "SVDQ_OFFLOAD": "offload",
    "SVDQ_FORWARD_CHUNKING": "forward_chunking",
    "SVDQ_DECODE_CHUNK_SIZE": "decode_chunk_size",
    "SVDQ_COMPILE": "compile",
}
# The variables and their help text live in the contract (svdq --help lists them); the
# ladder names are only known here.
OVERRIDE_VARIABLES: dict[str, tuple[str, str]] = {
    **PROFILE_VARIABLES,
    "SVDQ_PROFILE": ("", f"start the profile ladder at this row: {', '.join(PROFILE_NAMES)}"),
}


def vram_gb(total_vram_bytes: int) -> float:
    """Decimal gigabytes, the unit the table's floors are written in."""
    return total_vram_bytes / GB


def row_index(total_vram_bytes: int) -> int:
    """Index of the first table row whose floor (less the tolerance) the device meets."""
    for i, (floor, _) in enumerate(GPU_TABLE):
        if total_vram_bytes >= floor * GB * (1 - BAND_TOLERANCE):
            return i
    return len(GPU_TABLE) - 1


def _fit_capability(profile: Profile, capability: tuple[int, int] | None) -> Profile:
    """Drop compile on GPUs older than Triton supports (unknown capability: keep the row)."""
    if profile.compile and capability is not None and capability < COMPILE_MIN_CAPABILITY:
        return dataclasses.replace(profile, compile=False)
    return profile


def gpu_profile(total_vram_bytes: int, capability: tuple[int, int] | None = None) -> Profile:
    """The table row for a device with that much VRAM."""
    return _fit_capability(GPU_TABLE[row_index(total_vram_bytes)][1], capability)


def carries(profile: Profile, variant: str) -> bool:
    """Whether a table row's memory settings can run `variant`."""
    if profile.device == "cpu":
        return True
    row = VARIANT_ROWS.get(variant)
    # An operator-changed top rung keeps its row's floor ("xt-24g*" is xt-24g's memory).
    floor = ROW_FLOOR.get(profile.name.removesuffix("*"), 0.0)
    return row is not None and floor >= row.min_vram_gb


def default_variant(total_vram_bytes: int | None, allow_cpu: bool = False) -> str:
    """What `auto` means on this device: the best real variant it carries (never tiny).

    On a CPU without `allow_cpu` there is none: such a worker serves tiny jobs only.
    """
    if total_vram_bytes is None:
        if not allow_cpu:
            raise ConfigError(
                "variant 'auto' cannot run without a GPU: it never means tiny; set "
                "SVDQ_ALLOW_CPU=1 to run real variants on the CPU (hours per clip)"
            )
        return "svd-xt"
    return gpu_profile(total_vram_bytes).variant


def ladder(
    total_vram_bytes: int | None,
    variant: str,
    capability: tuple[int, int] | None = None,
    allow_cpu: bool = False,
    start: str | None = None,
) -> tuple[Profile, ...]:
    """The profiles to try for `variant`, best first: the device's row, then every row below
    that still carries the variant. `start` (SVDQ_PROFILE) names the first rung instead.

    Raises ConfigError when the device cannot run the variant at all.
    """
    if variant == "auto":
        variant = default_variant(total_vram_bytes, allow_cpu)
    if total_vram_bytes is None:
        if variant != "tiny" and not allow_cpu:
            raise ConfigError(
                f"variant={variant!r} needs a GPU and none is visible; set SVDQ_ALLOW_CPU=1 "
                "to run it on the CPU anyway (hours per clip), or use tiny"
            )
        rows = [dataclasses.replace(p, variant=variant) for p in CPU_LADDER]
    else:
        first = row_index(total_vram_bytes)
        rows = [
            _fit_capability(dataclasses.replace(p, variant=variant), capability)
            for _, p in GPU_TABLE[first:]
            if carries(p, variant)
        ]
        if not rows:
            need = min(f for f, p in GPU_TABLE if carries(p, variant)) * (1 - BAND_TOLERANCE)
            raise ConfigError(
                f"variant={variant!r} needs at least {need:g} GB of VRAM; this GPU has "
                f"{vram_gb(total_vram_bytes):.1f} GB"
            )
    if start is not None:
        names = [p.name for p in rows]
        if start not in names:
            raise ConfigError(
                f"SVDQ_PROFILE={start!r} is not allowed for {variant} on this device: one of "
                f"{', '.join(names)}"
            )
        rows = rows[names.index(start) :]
    return tuple(rows)


def runnable_variants(total_vram_bytes: int | None, allow_cpu: bool = False) -> tuple[str, ...]:
    """The variants whose jobs this device can take: real ones its ladder carries; on a CPU,
    tiny (plus every real variant with `allow_cpu`). GPUs leave tiny jobs to CPU workers."""
    if total_vram_bytes is None:
        return (*REAL_VARIANTS, "tiny") if allow_cpu else ("tiny",)
    top = row_index(total_vram_bytes)
    rows = [p for _, p in GPU_TABLE[top:]]
    return tuple(v for v in REAL_VARIANTS if any(carries(p, v) for p in rows))


def worker_queues(total_vram_bytes: int | None, allow_cpu: bool = False) -> list[str]:
    """The Celery queues a worker on this device consumes: its variants, plus svdq.auto when
    it runs a real variant (auto never means tiny)."""
    variants = runnable_variants(total_vram_bytes, allow_cpu)
    queues = [queue_for(v) for v in variants]
    if any(v != "tiny" for v in variants):
        queues.append(queue_for("auto"))
    return queues


def apply_overrides(rungs: tuple[Profile, ...], overrides: WorkerSettings) -> tuple[Profile, ...]:
    """Field overrides change the first rung only (marked `*`): the rungs below stay as the
    table says, so an out-of-memory error can still step down past an operator's choice."""
    changes = overrides.profile_changes()
    if not changes or not rungs:
        return rungs
    top = dataclasses.replace(rungs[0], name=rungs[0].name + "*", **changes)  # type: ignore[arg-type]
    if top.device == "cpu" and top.offload == "sequential":
        raise ConfigError(
            "SVDQ_OFFLOAD='sequential' is not allowed without a GPU: sequential offload needs "
            "an accelerator to stream weights to; use none or model"
        )
    if top.compile and top.offload != "none":
        _refuse_compile_with_offload(top, changes)
    return (top, *rungs[1:])


def _refuse_compile_with_offload(top: Profile, changes: dict[str, object]) -> None:
    """torch.compile's reduce-overhead mode records CUDA graphs with fixed weight addresses,
    while offload hooks move the weights on and off the card at every call: never both."""
    said = [
        f"{var}=1" if changes[field] is True else f"{var}={changes[field]!r}"
        for var, field in (("SVDQ_COMPILE", "compile"), ("SVDQ_OFFLOAD", "offload"))
        if field in changes
    ]
    table = "" if len(said) == 2 else f" (profile {top.name.removesuffix('*')} gives the other)"
    raise ConfigError(
        f"SVDQ_COMPILE=1 with SVDQ_OFFLOAD={top.offload!r} is not allowed: a compiled UNet's "
        "CUDA graphs cannot run while offload hooks move its weights; you set "
        f"{' and '.join(said)}{table}. Use SVDQ_COMPILE=0 to offload, or SVDQ_OFFLOAD=none "
        "to compile"
    )


def without_compile(rungs: tuple[Profile, ...], reason: str) -> tuple[Profile, ...]:
    """The rungs with compile turned off where it was on, each saying why."""
    return tuple(
        dataclasses.replace(p, compile=False, compile_unavailable=reason) if p.compile else p
        for p in rungs
    )


def profile_ladder(
    total_vram_bytes: int | None,
    variant: str,
    overrides: WorkerSettings,
    capability: tuple[int, int] | None = None,
    allow_cpu: bool = False,
) -> tuple[Profile, ...]:
    """`ladder` with the operator's overrides (SVDQ_PROFILE and the field ones) applied."""
    start = overrides.profile
    if start is not None and start not in PROFILE_NAMES:
        raise ConfigError(
            f"SVDQ_PROFILE={start!r} is not allowed: one of {', '.join(PROFILE_NAMES)}"
        )
    rungs = ladder(total_vram_bytes, variant, capability, allow_cpu, start)
    return apply_overrides(rungs, overrides)


def choose_profile(total_vram_bytes: int | None, variant: str) -> Profile:
    """The first rung for `variant` (None: no CUDA; tiny and CPU-allowed variants only)."""
    return ladder(total_vram_bytes, variant, allow_cpu=True)[0]


# Candidates (worker/quality.py): how many clips one pipeline call may generate at once. The
# estimate, to be refined with data like the table above: a clip at the reference shape
# (1024x576, 25 frames, fp16, classifier-free guidance) adds about CLIP_GB of denoise
# activations; the weights and one clip's VAE decode (candidates are decoded one clip at a
# time) take about FIXED_GB. A wrong guess costs one batch: a batch that runs out of memory
# falls back to one clip per call without stepping the rung down (worker/stepdown.py).
REFERENCE_PIXEL_FRAMES = 1024 * 576 * 25
CLIP_GB = 12.0
FIXED_GB = 6.0


def candidates_per_call(profile: Profile, n: int, width: int, height: int, frames: int) -> int:
    """How many of `n` candidates one pipeline call generates on `profile` (1: one by one).

    Pure: decided from the rung alone. A rung that offloads or chunks the UNet's forward is
    already short of memory: one clip per call. A CPU gains nothing from a batch (it has no
    idle lanes to fill) and measured slower with one: bench/results/candidates.json, 4 clips
    of 8 frames at 128x64 on the tiny model, 2.66 s a clip batched against 1.19 s one by one:
    one clip per call. A GPU rung without offload gets as many as its row's VRAM floor (less
    FIXED_GB) holds at CLIP_GB per clip, scaled by the clip's pixels and frames.
    """
    if n <= 1 or profile.device == "cpu":
        return 1
    if profile.offload != "none" or profile.forward_chunking:
        return 1
    floor = ROW_FLOOR.get(profile.name.removesuffix("*"), 0.0)
    per_clip = CLIP_GB * (width * height * frames) / REFERENCE_PIXEL_FRAMES
    fits = int((floor - FIXED_GB) // per_clip)
    return max(1, min(n, fits))
