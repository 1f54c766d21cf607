"""Which generations a job makes and which clip it keeps: candidates and quality repair (run
here, on the model; what each try is and which clip wins: worker/plans.py, pure).

SVD's known failure modes (shared/SVD-NOTES.md) are measured on every clip (shared/scores.py);
a job may ask the worker to act on them (JobSpec fields, all off by default):

- `candidates` N (1-8): N clips from one image, seeds `candidate_seeds` (candidate 0 the
  job's seed, candidate i `derived_seed(seed, "candidate", i)`), generated in as few pipeline
  calls as the rung allows (`profiles.candidates_per_call`: a batch of N through diffusers'
  `num_videos_per_prompt`, or one by one), all scored; the best is kept (`rank`). A batch
  that runs out of memory is recorded and run one by one instead (stepdown.BatchTooLarge).
  A call draws one conditioning-image noise, from the job's seed, and each candidate's
  starting latents as a plain call with its own seed would (engine.candidate_latents), so
  candidate 0 is the plain job's clip, and a candidate gets the same noise batched or one by
  one (the same clip up to the rounding of batch-size-dependent float16 GPU kernels).
- `on_static=retry`: a clip whose motion is below `min_motion` is generated again with the
  guide's fix: motion_bucket_id 180, 190, 200 on repair 1, 2, 3 (never below the job's own),
  noise_aug_strength 0.1 (never below the job's own) and seed `derived_seed(seed, "repair", r)`
  for both noises: the clip a plain job with that seed and those knobs makes, whether the job
  has candidates or not.
- `on_flicker=retry`: a clip whose flicker is above `max_flicker` is generated again with the
  largest decode chunk the worker's rung carries (its profile's `decode_chunk_size`, all
  frames when it has none) and the same seeds (a candidate's image noise stays the job's):
  the same denoise, a wider decode. When the chunk already is that large, there is nothing
  to change and no try is made.

Repairs: at most `repair_attempts` (1-3) more generations; each fixes what the best clip so
far still fails (both fixes at once when it fails both), and stops when the best passes or a
try would repeat an earlier one. Every generation goes through the step-down
(stepdown.generate), inside `gpu()`, with the job's progress (and so its cancellation); the
scores and encodes stay outside `gpu()`. Everything is a function of the job's spec and the
scores, so the same job on the same rung makes the same tries and keeps the same clip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from svdq.shared import scores
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, export, profiles, stepdown
from svdq.worker.models import LoadedModel
from svdq.worker.plans import (
    CHECKS,
    Plan,
    candidate_seeds,
    describe,
    opted,
    problems,
    rank,
    repair_plan,
)


@dataclass
class Kept:
    """What the generations made: the clip kept and everything recorded about the others."""

    frames: np.ndarray  # uint8 (F, H, W, 3), the kept clip
    params: engine.RunParams  # its parameters (seed: the clip's own)
    scores: dict[str, Any]
    attempts: list[dict[str, Any]]
    timings: dict[str, float]
    ran: dict[str, Any] = field(default_factory=dict)  # profile, model and note that made it
    tries: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, Any] | None = None
    others: dict[int, np.ndarray] = field(default_factory=dict)  # candidate index -> frames


def ran_record(model: LoadedModel, spec: JobSpec, params: engine.RunParams) -> dict[str, Any]:
    """What made a clip, for its result.json: the profile (with the chunk used and, when it
    compiles, how this shape ran), the model and its note (tiny's clips say they are noise)."""
    profile = {**model.profile.to_dict(), "decode_chunk_size": params.decode_chunk_size}
    if (run := engine.shape_run(model, spec, params)) is not None:
        profile["shape_run"] = run
    return {
        "profile": profile,
        "model": f"{model.info.model_id} @ {model.source}",
        "note": model.info.note,
    }


@dataclass
class _Job:
    """One job's generations in progress (the shell around the pure policy above)."""

    model: LoadedModel
    settings: Settings
    spec: JobSpec
    fitted: Image.Image
    progress: engine.Progress | None
    on_step_down: Callable[[str, str], None]
    gpu: Callable[[], contextlib.AbstractContextManager[None]]
    calls: int  # pipeline calls planned, a guess (a batch may fall back, repairs may stop)
    done_calls: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tries: list[dict[str, Any]] = field(default_factory=list)
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # try index -> uint8 frames
    params: dict[int, engine.RunParams] = field(default_factory=dict)
    plans: dict[int, Plan] = field(default_factory=dict)
    ran: dict[int, dict[str, Any]] = field(default_factory=dict)  # try -> what ran it
    done: float = 0.0  # the fraction of the job's generation reported so far (0-1)

    def _scale(self) -> int:
        """The denominator progress is reported over: the planned calls' steps at the start
        (a plain job: its own steps, so its reports are the pipeline's)."""
        return max(1, self.calls) * self.spec.num_inference_steps

    def _report(self, phase: str, fraction: float) -> None:
        """Report `fraction` of the generation done, never less than reported before."""
        self.done = max(self.done, min(1.0, fraction))
        if self.progress is not None:
            scale = self._scale()
            self.progress(phase, round(self.done * scale), scale)

    def _progress(self) -> engine.Progress | None:
        """The progress of the next call: it takes an equal share of what is left over the
        calls still planned, so a call that fell back (BatchTooLarge, after some of its steps
        were reported) or a rung that restarts its steps never moves the job back, and the
        last planned call ends at 100 %. `finish` reports 100 % when fewer calls ran."""
        if self.progress is None:
            return None
        start = self.done
        share = (1.0 - start) / max(1, self.calls - self.done_calls)

        def progress(phase: str, step: int, steps: int) -> None:
            self._report(phase, start + share * step / max(1, steps))

        return progress

    def finish(self) -> None:
        """Every generation ran: 100 %, also when fewer calls ran than were planned."""
        if self.done < 1.0:
            self._report("decode", 1.0)

    def run(self, plans: list[Plan]) -> None:
        """One pipeline call making `plans`, scored. Candidates go through diffusers'
        `num_videos_per_prompt` (engine.generate's `seeds`), as does a plan whose image noise
        comes from another seed than its latents (a repair of candidate i > 0); a plan whose
        two seeds are one is a plain call with that seed, the clip it makes either way."""
        spec, first = self.spec, plans[0]
        assert len({p.image_seed for p in plans}) == 1, "one call draws one image noise"
        batched = len(plans) > 1 or first.reason == "candidate" or first.image_seed != first.seed
        seeds = tuple(p.seed for p in plans) if batched else None
        run_spec = spec.replace(
            seed=first.image_seed,
            motion_bucket_id=first.motion_bucket_id,
            noise_aug_strength=first.noise_aug_strength,
            decode_chunk_size=first.decode_chunk_size or spec.decode_chunk_size,
        )
        start = time.perf_counter()
        try:
            with self.gpu():
                frames, timings, params, attempts = stepdown.generate(
                    self.model,
                    self.settings,
                    run_spec,
                    self.fitted,
                    self._progress(),
                    self.on_step_down,
                    seeds,
                )
                # What ran, read while gpu() still holds the model: with overlap the next
                # job may switch its variant or step it down as soon as this block ends.
                ran = ran_record(self.model, spec, params)
        except stepdown.BatchTooLarge as exc:
            self.attempts.extend({**a, "try": first.index} for a in exc.attempts)
            raise
        self.done_calls += 1
        seconds = time.perf_counter() - start
        self.attempts.extend({**a, "try": first.index} for a in attempts)
        for phase, value in timings.items():
            self.timings[phase] = self.timings.get(phase, 0.0) + value
        t = time.perf_counter()
        clips = frames if seeds is not None else frames[None]
        for plan, clip in zip(plans, clips, strict=True):
            u8 = export.to_uint8(clip)
            found = scores.score_clip(u8, np.asarray(self.fitted), params.decode_chunk_size)
            self.frames[plan.index] = u8
            self.params[plan.index] = dataclasses.replace(params, seed=plan.seed)
            self.plans[plan.index] = plan
            self.ran[plan.index] = ran
            record: dict[str, Any] = {"try": plan.index, "reason": plan.reason}
            if plan.reason == "candidate":
                record.update(candidate=plan.index, call=self.done_calls - 1)
            record.update(
                params={
                    "seed": plan.seed,
                    "noise_seed": plan.image_seed,
                    "motion_bucket_id": plan.motion_bucket_id,
                    "noise_aug_strength": plan.noise_aug_strength,
                    "decode_chunk_size": params.decode_chunk_size,
                },
                scores=found,
                problems=problems(found, spec, opted(spec) or CHECKS),
                seconds=round(seconds / len(plans), 4),
            )
            self.tries.append(record)
        self.timings["score"] = self.timings.get("score", 0.0) + time.perf_counter() - t

    def best(self) -> int:
        checks = opted(self.spec) or CHECKS
        return min((rank(t["scores"], self.spec, checks, t["try"]), t["try"]) for t in self.tries)[
            1
        ]


def generate(
    model: LoadedModel,
    settings: Settings,
    spec: JobSpec,
    fitted: Image.Image,
    progress: engine.Progress | None = None,
    on_step_down: Callable[[str, str], None] = lambda before, after: None,
    gpu: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> Kept:
    """Make the job's clip, its candidates and repairs (module docstring); return the kept
    one with every try recorded. A job that asks for neither makes one plain generation."""
    assert spec.seed is not None
    checks = opted(spec)
    seeds = candidate_seeds(spec)
    frames = spec.num_frames or model.info.frames
    per_call = profiles.candidates_per_call(
        model.profile, spec.candidates, spec.width, spec.height, frames
    )
    calls = -(-spec.candidates // per_call) + (spec.repair_attempts if checks else 0)
    job = _Job(model, settings, spec, fitted, progress, on_step_down, gpu, calls)
    mode = _candidates(job, seeds, per_call) if spec.candidates > 1 else None
    if mode is None:
        base = Plan(0, "first", spec.seed, spec.motion_bucket_id, spec.noise_aug_strength, None)
        job.run([base])
    first_best = job.best()
    found = problems(job.tries[first_best]["scores"], spec, checks)
    unrepairable = _repair(job, checks)
    job.finish()
    kept = job.best()
    for t in job.tries:
        t["kept"] = t["try"] == kept
    result = Kept(
        frames=job.frames[kept],
        params=job.params[kept],
        ran=job.ran[kept],
        scores=job.tries[kept]["scores"],
        attempts=job.attempts,
        timings=job.timings,
    )
    if spec.candidates == 1 and not checks:  # a plain job's record is as it always was
        result.attempts = [{k: v for k, v in a.items() if k != "try"} for a in job.attempts]
        result.tries = []
        return result
    left = problems(result.scores, spec, checks)
    result.tries = job.tries
    result.quality = {
        "checks": {
            "static": spec.on_static,
            "flicker": spec.on_flicker,
            "min_motion": spec.min_motion,
            "max_flicker": spec.max_flicker,
        },
        "kept": kept,
        "found": found,
        "left": left,
        "repaired": describe(found, left, job.tries, first_best, kept, unrepairable),
        "candidates": (
            None if mode is None else {**mode, "kept": kept if kept < len(seeds) else None}
        ),
    }
    if spec.keep_candidates and spec.candidates > 1:
        result.others = {i: job.frames[i] for i in range(len(seeds)) if i != kept}
    return result


def _candidates(job: _Job, seeds: tuple[int, ...], per_call: int) -> dict[str, Any]:
    """Generate every candidate, `per_call` to a pipeline call; one by one after a batch
    that did not fit. Returns how they ran (result.json's quality.candidates)."""
    spec = job.spec
    plans = [
        Plan(i, "candidate", s, spec.motion_bucket_id, spec.noise_aug_strength, None, seeds[0])
        for i, s in enumerate(seeds)
    ]
    mode: dict[str, Any] = {"n": len(seeds), "per_call": per_call}
    todo = list(plans)
    while todo:
        group, rest = todo[:per_call], todo[per_call:]
        try:
            job.run(group)
        except stepdown.BatchTooLarge:
            mode["fallback"] = f"a batch of {len(group)} ran out of memory: one by one after it"
            per_call = 1
            job.calls += len(todo) - 1
            continue
        todo = rest
    calls = len({t["call"] for t in job.tries})
    mode["calls"] = calls
    mode["mode"] = "batch" if calls == 1 else "one by one" if calls == len(seeds) else "batches"
    return mode


def _repair(job: _Job, checks: tuple[str, ...]) -> str:
    """Up to `repair_attempts` more generations while the best clip fails a check; returns why
    a failing clip could not be tried again ("" when it was, or did not need to be)."""
    spec = job.spec
    for repair in range(1, spec.repair_attempts + 1):
        best = job.best()
        found = problems(job.tries[best]["scores"], spec, checks)
        if not found:
            return ""
        used = job.params[best].decode_chunk_size
        frames = job.params[best].num_frames
        carry = min(frames, job.model.profile.decode_chunk_size or frames)
        plan = repair_plan(spec, repair, len(job.tries), found, job.plans[best], used, carry)
        if plan is None:
            return f"the decode chunk ({used}) is already the largest this worker's profile carries"
        if any(plan.knobs() == p.knobs() for p in job.plans.values()):
            return "no repair left that was not tried"
        job.run([plan])
    return ""
