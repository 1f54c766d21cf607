"""The pure half of quality repair and candidates (worker/quality.py runs them): which
seeds and parameters each try uses, which problems a clip has, which clip is best, and the
one line `svdq status` prints. Functions of the job's spec and the clips' scores only, no
model and no torch, so the same job always plans the same tries (tests/unit/test_quality.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from svdq.shared import scores
from svdq.shared.spec import JobSpec

CHECKS = ("static", "flicker")
STATIC_BUCKETS = (180, 190, 200)  # motion_bucket_id on repair 1, 2, 3 (SVD-NOTES: 180-200)
STATIC_NOISE_AUG = 0.1  # noise_aug_strength of a static repair (SVD-NOTES: 0.1)


def derived_seed(seed: int, kind: str, index: int) -> int:
    """A seed for generation `index` of `kind` ("candidate", "repair") of a job whose seed is
    `seed`: the first 8 hex digits of sha256("svdq:<kind>:<seed>:<index>"), 0-4294967295."""
    return int(hashlib.sha256(f"svdq:{kind}:{seed}:{index}".encode()).hexdigest()[:8], 16)


def candidate_seeds(spec: JobSpec) -> tuple[int, ...]:
    """The seeds of the job's candidates: the job's own first, then derived ones."""
    assert spec.seed is not None
    derived = (derived_seed(spec.seed, "candidate", i) for i in range(1, spec.candidates))
    return (spec.seed, *derived)


def opted(spec: JobSpec) -> tuple[str, ...]:
    """The checks the job asked to repair (on_static / on_flicker = retry)."""
    return tuple(
        c for c, a in zip(CHECKS, (spec.on_static, spec.on_flicker), strict=True) if a == "retry"
    )


def problems(clip: dict[str, Any], spec: JobSpec, checks: tuple[str, ...]) -> list[str]:
    """Which of `checks` the clip's scores fail under the job's thresholds: the rule the
    badges of `svdq report` use (shared/scores.py `badges`), so what was repaired is what a
    reviewer would have flagged."""
    return [p for p in scores.badges(clip, spec.min_motion, spec.max_flicker) if p in checks]


def rank(clip: dict[str, Any], spec: JobSpec, checks: tuple[str, ...], index: int) -> tuple:
    """Sort key, best first: fewest failed checks, then the smallest shortfall (how far past
    each threshold, relative to it), then the most displacement (motion a flicker cannot
    fool), then the earliest try."""
    short = 0.0
    if "static" in checks:
        short += max(0.0, spec.min_motion - clip["motion"]) / max(spec.min_motion, 1e-6)
    if "flicker" in checks:
        short += max(0.0, clip["flicker"] - spec.max_flicker) / max(spec.max_flicker, 1e-6)
    found = problems(clip, spec, checks)
    return (len(found), round(short, 6), -float(clip.get("displacement") or 0.0), index)


@dataclass(frozen=True)
class Plan:
    """One generation: its clip's seed and the parameters a repair may change."""

    index: int  # the try's place in `tries`
    reason: str  # first | candidate | static | flicker | static+flicker
    seed: int  # the starting latents' (engine.candidate_latents)
    motion_bucket_id: int
    noise_aug_strength: float
    decode_chunk_size: int | None  # None: the job's own (its spec's, else the rung's)
    # the conditioning image's noise: None, the seed's own (a plain call); a candidate's: the
    # job's seed, drawn once for its call (engine.generate), kept by a flicker repair of it
    noise_seed: int | None = None

    @property
    def image_seed(self) -> int:
        """The seed the conditioning image's noise comes from."""
        return self.seed if self.noise_seed is None else self.noise_seed

    def knobs(self) -> tuple[Any, ...]:
        """What makes the clip (a repeat of these makes the same clip again)."""
        return (
            self.seed,
            self.image_seed,
            self.motion_bucket_id,
            self.noise_aug_strength,
            self.decode_chunk_size,
        )


def repair_plan(
    spec: JobSpec, repair: int, index: int, found: list[str], base: Plan, used: int, carry: int
) -> Plan | None:
    """Repair number `repair` (1-based) of a clip made by `base` with decode chunk `used`
    that fails `found`; `carry`: the largest chunk the rung carries. None: nothing to change."""
    assert spec.seed is not None
    plan = dataclasses.replace(base, index=index, reason="+".join(found), decode_chunk_size=used)
    if "static" in found:
        plan = dataclasses.replace(
            plan,
            seed=derived_seed(spec.seed, "repair", repair),
            noise_seed=None,  # a new seed for both noises: the plain call of that seed
            motion_bucket_id=max(spec.motion_bucket_id, STATIC_BUCKETS[repair - 1]),
            noise_aug_strength=max(spec.noise_aug_strength, STATIC_NOISE_AUG),
        )
    if "flicker" in found and carry > used:
        plan = dataclasses.replace(plan, decode_chunk_size=carry)
    elif found == ["flicker"]:
        return None  # the chunk cannot grow on this rung: the same clip again would not help
    return plan


def describe(
    found: list[str],
    left: list[str],
    tries: list[dict[str, Any]],
    before: int,
    kept: int,
    why_not: str,
) -> str:
    """What the repair did, in one line for `svdq status` ("" when nothing was found)."""
    if not found:
        return ""
    what = " and ".join({"static": "static", "flicker": "flickering"}[p] for p in found)
    was, now = tries[before]["scores"], tries[kept]["scores"]
    change = ", ".join(f"{n} {was[n]:.4g} → {now[n]:.4g}" for n in ("motion", "flicker"))
    repairs = sum(t["reason"] not in ("first", "candidate") for t in tries)
    if not left:
        return f"{what} clip repaired: try {kept} kept of {len(tries)} ({change})"
    if repairs == 0:
        return f"{what} clip not repaired: {why_not}"
    return (
        f"{what} clip not fully repaired after {repairs} more generation(s): try {kept} kept "
        f"({change}; still {' and '.join(left)})"
    )
