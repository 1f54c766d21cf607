"""A job's identity: its id and derived seed, from the input's content and the parameters
that change what it outputs (shared/spec.py checks the parameters; this decides which count).
The same image with the same parameters gives the same seed, the same id and the same clip,
so a resubmission finds the results stored before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets

from svdq.shared.fields import (
    MAX_FLICKER,
    MAX_GUIDANCE_SCALE,
    MIN_GUIDANCE_SCALE,
    MIN_MOTION,
    SEED_MAX,
)
from svdq.shared.spec import JobSpec

# Fields that do not change the clip and so stay out of the job id and derived seed.
_NOT_IDENTITY = {"priority", "callback_url", "metadata", "job_id", "image"}
# Fields added after job ids were first derived, with the value every job had before they
# existed: at that value they stay out of the identity, so a resubmission still finds the
# results stored before (tests/unit/test_spec.py's golden id); any other value changes it.
_IDENTITY_UNLESS = {
    "min_guidance_scale": MIN_GUIDANCE_SCALE,
    "max_guidance_scale": MAX_GUIDANCE_SCALE,
    "on_static": "keep",
    "on_flicker": "keep",
    "min_motion": MIN_MOTION,
    "max_flicker": MAX_FLICKER,
    "repair_attempts": 2,
    "candidates": 1,
    "keep_candidates": False,
}
# The quality fields (worker/quality.py) choose which of several clips is kept, and
# keep_candidates what is stored, but none of them shapes the first clip: they stay out of
# the derived seed, so `--on-static retry` first makes the plain job's clip (then repairs it)
# and candidate 0 of `--candidates N` is the plain job's clip. They are in the job id when
# they change what a job outputs, and only then (`_quality_counts`).
_QUALITY = (
    "on_static",
    "on_flicker",
    "min_motion",
    "max_flicker",
    "repair_attempts",
    "candidates",
    "keep_candidates",
)


def _quality_counts(spec: JobSpec) -> set[str]:
    """The quality fields that change what the job outputs, so its id.

    A threshold counts when something acts on it: min_motion with on_static=retry (the
    repair) or with candidates > 1 (the pick ranks every check, worker/quality.py `rank`);
    max_flicker likewise with on_flicker. repair_attempts counts when a check is retried.
    keep_candidates counts with candidates > 1: it changes the stored outputs
    (candidates/<i>.mp4), and a resubmission asking for them must not be answered by a job
    that did not keep them; with one candidate it stores nothing more and does not count.
    """
    many = spec.candidates > 1
    retry_static, retry_flicker = spec.on_static == "retry", spec.on_flicker == "retry"
    counts = {"on_static", "on_flicker", "candidates"}
    if retry_static or many:
        counts.add("min_motion")
    if retry_flicker or many:
        counts.add("max_flicker")
    if retry_static or retry_flicker:
        counts.add("repair_attempts")
    if many:
        counts.add("keep_candidates")
    return counts


def identity(spec: JobSpec, input_sha256: str, *, first_clip: bool = False) -> str:
    """sha256 of the input's content and every parameter that changes the job's output.

    `first_clip`: only the parameters that shape the first clip (no quality field): what the
    derived seed comes from, so a job with repair or candidates has the plain job's seed.
    """
    counted = set() if first_clip else _quality_counts(spec)
    params = {
        k: v
        for k, v in spec.to_dict().items()
        if k not in _NOT_IDENTITY
        and (k not in _QUALITY or k in counted)
        and not (k in _IDENTITY_UNLESS and v == _IDENTITY_UNLESS[k])
    }
    blob = json.dumps({"input": input_sha256, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def finalize(
    spec: JobSpec, input_sha256: str, *, random_seed: bool = False, id_prefix: str = ""
) -> JobSpec:
    """Fill in the seed and the job id, deterministically unless asked for a random seed.

    The derived seed comes from the input and the parameters that shape the first clip, so
    resubmitting the same image with the same parameters gives the same seed, the same job id
    and the same clip, and asking for repair or candidates keeps the plain job's seed (its
    clip is the first try, candidate 0). The job id also counts the quality fields that change
    the output (`_quality_counts`). `id_prefix` goes before a derived id (never a chosen one):
    the HTTP API scopes ids to a token with it.
    """
    seed = spec.seed
    if random_seed:
        seed = secrets.randbelow(SEED_MAX + 1)
    elif seed is None:
        seed = int(identity(spec, input_sha256, first_clip=True)[:8], 16)
    spec = dataclasses.replace(spec, seed=seed)
    job_id = spec.job_id or id_prefix + identity(spec, input_sha256)[:24]
    return dataclasses.replace(spec, job_id=job_id)
