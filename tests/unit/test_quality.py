"""The repair and candidates policy (worker/quality.py, worker/profiles.candidates_per_call)
and the JobSpec fields that ask for them: pure decisions, no model."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from svdq.producer.jobcli import repaired
from svdq.producer.manifest import csv_value
from svdq.shared import formats
from svdq.shared.constants import output_key
from svdq.shared.errors import InvalidJobError
from svdq.shared.jobid import finalize
from svdq.shared.spec import JobSpec
from svdq.worker import plans, quality
from svdq.worker.profiles import CPU_LEAN, CPU_PROFILE, GPU_TABLE, candidates_per_call

ROWS = {p.name: p for _, p in GPU_TABLE}


def spec(**kw: Any) -> JobSpec:
    return JobSpec.from_dict({"image": "in.png", "seed": 1234, "job_id": "j", **kw})


def clip(motion: float = 0.05, flicker: float = 0.001, displacement: float = 1.0) -> dict:
    return {"motion": motion, "flicker": flicker, "displacement": displacement}


# --- the fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("candidates", 0, "1–8"),
        ("candidates", 9, "1–8"),
        ("repair_attempts", 4, "1–3"),
        ("repair_attempts", 0, "1–3"),
        ("min_motion", 1.5, "0–1"),
        ("max_flicker", -0.1, "0–1"),
        ("on_static", "fix", "keep, retry"),
        ("on_flicker", True, "keep, retry"),
        ("keep_candidates", "yes", "true or false"),
        ("keep_candidates", 1, "true or false"),
    ],
)
def test_out_of_bounds_values_are_refused_naming_field_value_and_allowed(
    field: str, value: Any, allowed: str
) -> None:
    with pytest.raises(InvalidJobError) as info:
        spec(**{field: value})
    assert info.value.field == field
    assert field in str(info.value) and repr(value) in str(info.value)
    assert allowed in str(info.value)


def test_defaults_leave_the_job_id_as_it_was() -> None:
    """Ids derived before these fields existed still match: at their defaults they stay out
    of the identity; any other value changes the id."""
    plain = finalize(JobSpec.from_dict({"image": "in.png"}), "ab" * 32)
    same = finalize(JobSpec.from_dict({"image": "in.png", "candidates": 1}), "ab" * 32)
    other = finalize(JobSpec.from_dict({"image": "in.png", "candidates": 2}), "ab" * 32)
    assert plain.job_id == same.job_id != other.job_id


def test_csv_and_form_cells_for_the_switch() -> None:
    assert csv_value("keep_candidates", "TRUE") is True
    assert csv_value("keep_candidates", "0") is False
    with pytest.raises(ValueError, match="keep_candidates='maybe' is not allowed: true or false"):
        csv_value("keep_candidates", "maybe")


def test_candidate_outputs_live_under_the_jobs_prefix() -> None:
    assert output_key("j", formats.candidate_kind(3), "team") == "team/results/j/candidates/3.mp4"
    assert formats.output("candidate-7").content_type == "video/mp4"
    with pytest.raises(KeyError, match="candidate-0…7"):
        formats.output("candidate-8")


# --- seeds ----------------------------------------------------------------------------------


def test_seeds_are_derived_from_the_jobs_seed_and_index() -> None:
    seeds = plans.candidate_seeds(spec(candidates=4))
    assert seeds[0] == 1234 and len(set(seeds)) == 4
    assert seeds == plans.candidate_seeds(spec(candidates=4))  # the same job, the same seeds
    assert plans.candidate_seeds(spec(candidates=2)) == seeds[:2]
    assert plans.candidate_seeds(spec(seed=1235, candidates=4))[1:] != seeds[1:]
    assert all(0 <= s < 2**32 for s in seeds)
    # sha256("svdq:candidate:1234:1")[:8]: fixed, so a worker upgrade keeps the same tries
    assert plans.derived_seed(1234, "candidate", 1) == int(
        __import__("hashlib").sha256(b"svdq:candidate:1234:1").hexdigest()[:8], 16
    )
    assert plans.derived_seed(1234, "repair", 1) != plans.derived_seed(1234, "candidate", 1)


# --- checks and ranking ---------------------------------------------------------------------


def test_problems_only_for_the_checks_asked_for() -> None:
    job = spec(min_motion=0.01, max_flicker=0.01)
    still_flicker = clip(motion=0.001, flicker=0.05)
    assert plans.problems(still_flicker, job, ("static", "flicker")) == ["static", "flicker"]
    assert plans.problems(still_flicker, job, ("flicker",)) == ["flicker"]
    assert plans.problems(clip(motion=0.01, flicker=0.01), job, plans.CHECKS) == []
    assert plans.opted(spec(on_flicker="retry")) == ("flicker",)
    assert plans.opted(spec()) == ()


def test_rank_prefers_passing_then_closest_then_most_displacement_then_earliest() -> None:
    job = spec(min_motion=0.01, max_flicker=0.01)
    checks = plans.CHECKS

    def best(*clips: dict) -> int:
        return min(range(len(clips)), key=lambda i: plans.rank(clips[i], job, checks, i))

    assert best(clip(motion=0.001), clip(motion=0.02)) == 1  # passing beats failing
    assert best(clip(motion=0.002), clip(motion=0.008)) == 1  # closer to passing
    assert best(clip(displacement=1), clip(displacement=3)) == 1  # both pass: more real motion
    assert best(clip(), clip()) == 0  # a tie keeps the earliest (the original)


# --- repair plans ---------------------------------------------------------------------------

BASE = plans.Plan(0, "first", 1234, 127, 0.02, None)


@pytest.mark.parametrize("repair", [1, 2, 3])
def test_a_static_clip_gets_the_guides_fix_and_a_derived_seed(repair: int) -> None:
    plan = plans.repair_plan(spec(), repair, repair, ["static"], BASE, used=8, carry=25)
    assert plan is not None
    assert plan.motion_bucket_id == (180, 190, 200)[repair - 1]
    assert plan.noise_aug_strength == 0.1
    assert plan.seed == plans.derived_seed(1234, "repair", repair) != 1234
    assert plan.decode_chunk_size == 8  # the chunk is not what was wrong
    assert (plan.index, plan.reason) == (repair, "static")


def test_a_static_repair_never_lowers_what_the_job_asked_for() -> None:
    job = spec(motion_bucket_id=220, noise_aug_strength=0.3)
    plan = plans.repair_plan(job, 1, 1, ["static"], BASE, used=8, carry=25)
    assert plan is not None and (plan.motion_bucket_id, plan.noise_aug_strength) == (220, 0.3)


def test_a_flickering_clip_gets_the_largest_chunk_and_the_same_seed() -> None:
    plan = plans.repair_plan(spec(), 1, 1, ["flicker"], BASE, used=2, carry=14)
    assert plan is not None
    assert (plan.seed, plan.motion_bucket_id, plan.decode_chunk_size) == (1234, 127, 14)
    assert plan.reason == "flicker"
    # already at the largest chunk the rung carries: nothing to try
    assert plans.repair_plan(spec(), 1, 1, ["flicker"], BASE, used=14, carry=14) is None


def test_both_problems_are_fixed_in_one_try() -> None:
    plan = plans.repair_plan(spec(), 1, 1, ["static", "flicker"], BASE, used=2, carry=14)
    assert plan is not None and plan.reason == "static+flicker"
    assert (plan.motion_bucket_id, plan.decode_chunk_size) == (180, 14)
    assert plan.seed != 1234
    # the chunk cannot grow: still the static fix
    plan = plans.repair_plan(spec(), 1, 1, ["static", "flicker"], BASE, used=14, carry=14)
    assert plan is not None and (plan.motion_bucket_id, plan.decode_chunk_size) == (180, 14)


def test_plans_are_deterministic() -> None:
    args = (spec(), 2, 3, ["static", "flicker"], BASE, 4, 25)
    assert plans.repair_plan(*args) == plans.repair_plan(*args)


def test_describe_says_what_was_repaired() -> None:
    tries = [
        {"try": 0, "reason": "first", "scores": clip(motion=0.001)},
        {"try": 1, "reason": "static", "scores": clip(motion=0.02)},
    ]
    text = plans.describe(["static"], [], tries, 0, 1, "")
    assert (
        text.startswith("static clip repaired: try 1 kept of 2") and "motion 0.001 → 0.02" in text
    )
    why = "the decode chunk (14) is already the largest this worker's profile carries"
    assert plans.describe(["flicker"], ["flicker"], tries[:1], 0, 0, why).endswith(why)
    assert plans.describe([], [], tries, 0, 0, "") == ""


# --- batch or one by one --------------------------------------------------------------------


def test_candidates_per_call_from_the_rung() -> None:
    # One clip asked: one call whatever the rung.
    assert candidates_per_call(ROWS["xt-40g"], 1, 1024, 576, 25) == 1
    # A rung that offloads or chunks the forward is short of memory: one by one.
    for name in ("xt-16g", "xt-10g", "xt-8g", "svd-low"):
        assert candidates_per_call(ROWS[name], 8, 512, 288, 14) == 1
    assert candidates_per_call(CPU_LEAN, 4, 64, 64, 8) == 1
    # A CPU: one by one (measured slower batched: bench/results/candidates.json).
    assert candidates_per_call(CPU_PROFILE, 8, 64, 64, 8) == 1
    # 40 GB, the reference shape: (40 - 6) // 12 = 2 per call; 24 GB: 1.
    assert candidates_per_call(ROWS["xt-40g"], 4, 1024, 576, 25) == 2
    assert candidates_per_call(ROWS["xt-24g"], 4, 1024, 576, 25) == 1
    # A quarter of the pixels: four times as many, never more than asked.
    assert candidates_per_call(ROWS["xt-40g"], 8, 512, 288, 25) == 8
    assert candidates_per_call(ROWS["xt-24g"], 8, 512, 288, 25) == 6
    # An operator-changed top rung keeps its row's floor.
    starred = dataclasses.replace(ROWS["xt-40g"], name="xt-40g*")
    assert candidates_per_call(starred, 4, 1024, 576, 25) == 2


@pytest.mark.parametrize(
    ("result", "line"),
    [
        ({}, ""),
        ({"quality": None}, ""),
        ({"quality": "junk"}, ""),
        ({"quality": {"repaired": 5, "candidates": {"n": 3}}}, ""),
        ({"quality": {"repaired": "static clip repaired"}}, "repaired: static clip repaired"),
        (
            {"quality": {"candidates": {"n": 3, "calls": 1, "mode": "batch", "kept": "x"}}},
            "candidates: 3 in 1 call(s) (batch), a repair of the best kept",
        ),
        ("not a record", ""),
    ],
)
def test_the_status_line_shows_what_has_its_shape_and_never_raises(result: Any, line: str) -> None:
    assert repaired(result) == line


# --- which noise a try draws, and the job's progress (adversary review, issue 14) -------------


def test_a_repair_keeps_or_replaces_both_noises_as_one() -> None:
    """A candidate's image noise is its call's (the job's seed); a flicker repair of it keeps
    both seeds (the same denoise), a static one draws both from its own new seed (the clip a
    plain job with that seed makes, in a candidates job or not)."""
    cand = plans.Plan(2, "candidate", 999, 127, 0.02, None, noise_seed=1234)
    flick = plans.repair_plan(spec(), 1, 3, ["flicker"], cand, used=2, carry=14)
    assert flick is not None and (flick.seed, flick.image_seed) == (999, 1234)
    static = plans.repair_plan(spec(), 1, 3, ["static"], cand, used=2, carry=14)
    assert static is not None and static.image_seed == static.seed != 999
    assert BASE.image_seed == BASE.seed == 1234  # a plain try: one seed for both
    assert cand.knobs() != dataclasses.replace(cand, noise_seed=None).knobs()


def _fake_generate(calls: list[tuple[int | None, Any]], moving: bool) -> Any:
    """stepdown.generate's stand-in: records (the call's seed, its seeds), reports every
    step, and returns (moving or still) float frames shaped as engine.generate's."""
    import numpy as np

    from svdq.worker import engine

    def fake(model: Any, settings: Any, job: JobSpec, image: Any, progress: Any, _s: Any, seeds):
        calls.append((job.seed, seeds))
        steps = job.num_inference_steps
        for i in range(1, steps + 1):
            if progress:
                progress("denoise", i, steps)
        rng = np.random.default_rng(job.seed)
        one = (
            rng.random((4, 64, 64, 3), dtype=np.float32)
            if moving
            else np.full((4, 64, 64, 3), 0.5, np.float32)
        )
        frames = np.stack([one] * len(seeds)) if seeds is not None else one
        params = engine.RunParams("tiny", 4, 7, 4, job.seed or 0)
        return frames, {}, params, [{"outcome": "succeeded"}]

    return fake


def _run(monkeypatch: Any, job: JobSpec, moving: bool) -> tuple[list[Any], list[float]]:
    from types import SimpleNamespace

    from PIL import Image

    from svdq.shared.settings import Settings
    from svdq.worker import stepdown

    calls: list[Any] = []
    monkeypatch.setattr(stepdown, "generate", _fake_generate(calls, moving))
    model = SimpleNamespace(
        profile=CPU_PROFILE,
        info=SimpleNamespace(frames=4, model_id="fake", note=None),
        source="test",
    )
    seen: list[float] = []
    quality.generate(
        model,  # type: ignore[arg-type]
        Settings.from_env({}),
        job,
        Image.new("RGB", (64, 64)),
        lambda phase, step, steps: seen.append(step / steps),
    )
    return calls, seen


SMALL = {"width": 64, "height": 64, "num_frames": 4, "num_inference_steps": 4}


def test_progress_ends_at_100_percent_when_fewer_calls_run_than_were_planned(
    monkeypatch: Any,
) -> None:
    """Three repairs planned, none needed (the first clip moves): 1 call of 4, and still 100 %."""
    job = spec(on_static="retry", repair_attempts=3, **SMALL)
    calls, seen = _run(monkeypatch, job, moving=True)
    assert len(calls) == 1
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert seen[3] == pytest.approx(0.25)  # the first call's last step: a quarter of the plan


def test_candidate_calls_draw_the_image_noise_from_the_jobs_seed_repairs_from_their_own(
    monkeypatch: Any,
) -> None:
    """A candidates job on a rung that makes them one by one (CPU_PROFILE): each candidate's
    call draws the job's image noise and its own latents; the static repairs are plain calls
    with their derived seeds (seeds None), as they would be in a job without candidates."""
    job = spec(candidates=3, on_static="retry", repair_attempts=2, **SMALL)
    calls, seen = _run(monkeypatch, job, moving=False)
    seeds = plans.candidate_seeds(job)
    assert calls[:3] == [(1234, (s,)) for s in seeds]
    repairs = [plans.derived_seed(1234, "repair", r) for r in (1, 2)]
    assert calls[3:] == [(r, None) for r in repairs]
    assert seen == sorted(seen) and seen[-1] == 1.0
