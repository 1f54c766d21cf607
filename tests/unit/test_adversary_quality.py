"""Adversary review of quality repair and candidates (issue 14 items 2-3, branch `repair`).

Each test here states what the feature should do and fails on the code as reviewed: a strict
xfail, so that fixing the defect turns it into a pass that the suite reports (and the marker
is then removed). Pure tests: no Redis, no model, no worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from svdq.producer.jobcli import repaired
from svdq.shared.celery_app import send_job
from svdq.shared.jobid import finalize
from svdq.shared.records import result_problem
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, metrics, plans, quality, stepdown
from svdq.worker.profiles import GPU_TABLE
from tests.unit.test_records import good

INPUT = "ab" * 32


# --- 1. determinism: what only picks or stores a clip must not change the clip ---------------


@pytest.mark.parametrize(
    "extra",
    [
        {"keep_candidates": True, "candidates": 3},  # vs candidates=3 alone: storage only
        {"on_static": "retry"},  # repair: its first try should be the plain job's clip
        {"min_motion": 0.02, "on_static": "retry"},  # a threshold: same first try
        {"repair_attempts": 3, "on_flicker": "retry"},  # a budget: same first try
    ],
)
def test_quality_fields_do_not_change_the_jobs_derived_seed(extra: dict[str, Any]) -> None:
    """`svdq submit cat.png` makes a static clip; `svdq submit cat.png --on-static retry`
    should make that same clip first and repair it (README: "a static clip is generated again
    with the guide's fix"). Today the seed is int(identity(spec)[:8], 16) and identity()
    includes on_static/min_motion/repair_attempts/keep_candidates (shared/spec.py
    _IDENTITY_UNLESS), so the first try is an unrelated clip; `--keep-candidates` alone gives
    four other candidates and may keep another one."""
    base = {"image": "in.png", **({"candidates": 3} if "keep_candidates" in extra else {})}
    plain = finalize(JobSpec.from_dict(base), INPUT)
    asked = finalize(JobSpec.from_dict({**base, **extra}), INPUT)
    assert asked.seed == plain.seed


# --- 2. candidate noise (the batched GPU path, read against diffusers) ------------------------


def _fake_pipe_model(in_channels: int = 8) -> Any:
    import torch

    unet = SimpleNamespace(config=SimpleNamespace(in_channels=in_channels), dtype=torch.float32)
    return SimpleNamespace(pipe=SimpleNamespace(unet=unet, vae_scale_factor=8))


def _diffusers_draws(seed: int, spec: JobSpec, frames: int) -> tuple[Any, Any]:
    """What StableVideoDiffusionPipeline.__call__ draws from `generator` for a plain job, in
    its order (diffusers 0.42, pipeline_stable_video_diffusion.py): step 4, "noise =
    randn_tensor(image.shape, generator=generator, ...)" (image.shape (1, 3, H, W)), then
    step 7, prepare_latents: "latents = randn_tensor(shape, generator=generator, ...)" with
    shape (batch_size, num_frames, num_channels_latents // 2, H // 8, W // 8). With a CPU
    generator randn_tensor is "torch.randn(shape, generator=generator, device=rand_device,
    dtype=dtype, layout=layout)" (utils/torch_utils.py)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    image_noise = torch.randn((1, 3, spec.height, spec.width), generator=g)
    latents = torch.randn((1, frames, 4, spec.height // 8, spec.width // 8), generator=g)
    return image_noise, latents


def test_candidate_zero_starts_from_the_plain_jobs_latents() -> None:
    """README: "candidate 0 has the job's seed". A plain job's starting latents are the
    generator's draws *after* the conditioning image's noise; engine.candidate_latents draws
    them from `torch.Generator().manual_seed(seed)` afresh, so candidate 0 (and a repair of a
    candidates job, run batched) is not the clip the same seed makes without candidates."""
    spec = JobSpec.from_dict({"image": "x.png", "width": 128, "height": 64, "seed": 7})
    _, plain = _diffusers_draws(7, spec, 4)
    drawn = engine.candidate_latents(_fake_pipe_model(), spec, 4, (7,))
    assert np.allclose(drawn.numpy(), plain.numpy())


def test_candidate_latents_are_not_the_image_noise_again() -> None:
    """In a batch, the image noise comes from generator(params.seed) = generator(job seed)
    (engine.generate) and candidate 0's latents from a fresh generator(job seed): the same
    stream, so the latent noise is a reshaped copy of the pixel noise added to the image (the
    two noises SVD assumes independent). Elementwise equal over the shared prefix."""
    spec = JobSpec.from_dict({"image": "x.png", "width": 128, "height": 64, "seed": 7})
    image_noise, _ = _diffusers_draws(7, spec, 4)
    drawn = engine.candidate_latents(_fake_pipe_model(), spec, 4, (7,)).numpy().ravel()
    shared = image_noise.numpy().ravel()[: drawn.size - 16]  # randn's last block may differ
    assert not np.allclose(drawn[: shared.size], shared)


# --- 3. the record: a result.json that lies about its tries and candidates --------------------


def _record(**changes: Any) -> dict[str, Any]:
    return good(**changes)  # a valid result.json (tests/unit/test_records.py), changed


@pytest.mark.parametrize(
    "changes",
    [
        {"quality": "repaired everything"},
        {"quality": {"candidates": {"n": 3}}},  # no calls/mode: repaired() KeyError
        {"tries": 5},
    ],
)
def test_a_record_with_malformed_quality_is_refused_or_shown(changes: dict[str, Any]) -> None:
    record = _record(**changes)
    if result_problem(record, "j1") is None:  # believed: then every reader must cope
        repaired(record)
        assert isinstance(record.get("tries", []), list)


def test_a_record_cannot_list_candidates_its_spec_never_made() -> None:
    out = {"key": "results/j1/candidates/7.mp4", "uri": "s3://b/c7", "bytes": 10}
    record = _record()
    record["outputs"]["candidate-7"] = out  # spec: candidates=1 (the default)
    assert result_problem(record, "j1") is not None


# --- 4. accounting ------------------------------------------------------------------------------


class _App:
    """Just enough of a Celery app for send_job: what it sends, nothing connects."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def producer_or_acquire(self) -> Any:
        batch = SimpleNamespace(batch=lambda max_size: contextlib.nullcontext())
        return contextlib.nullcontext(batch)

    def send_task(self, name: str, **kwargs: Any) -> None:
        self.sent.append(kwargs)


def test_the_time_limit_grows_with_the_generations_a_job_asks_for() -> None:
    settings = Settings.from_env({})
    plain = JobSpec.from_dict({"image": "s3://b/x.png", "variant": "tiny", "job_id": "a"})
    many = plain.replace(candidates=8, on_static="retry", repair_attempts=3, job_id="b")
    app = _App()
    send_job(app, plain, settings)  # type: ignore[arg-type]
    send_job(app, many, settings)  # type: ignore[arg-type]
    assert app.sent[1]["soft_time_limit"] > app.sent[0]["soft_time_limit"]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_frames_generated_counts_every_generation() -> None:
    before = _sample("svdq_frames_generated_total", variant="adv-q")
    tries = [{"try": i, "reason": "candidate", "scores": {}} for i in range(4)]
    result = {
        "variant": "adv-q",
        "num_frames": 25,
        "timings": {},
        "finished_at": datetime.now(UTC).isoformat(),
        "tries": tries,
        "quality": {"found": [], "left": []},
    }
    metrics.WorkerMetrics().succeeded(result)
    assert _sample("svdq_frames_generated_total", variant="adv-q") == before + 4 * 25


def test_progress_never_goes_back_when_a_batch_falls_back(monkeypatch: Any) -> None:
    """quality._Job._progress maps call k's step i to k*steps+i over calls*steps; a batch
    that fails (BatchTooLarge) leaves done_calls at k and raises `calls`, so the next report
    is a smaller fraction than the last one the batch made."""
    spec = JobSpec.from_dict(
        {
            "image": "x.png",
            "seed": 3,
            "job_id": "p",
            "width": 64,
            "height": 64,
            "num_frames": 4,
            "num_inference_steps": 4,
            "candidates": 4,
        }
    )
    profile = next(
        p for _, p in GPU_TABLE if quality.profiles.candidates_per_call(p, 4, 64, 64, 4) == 4
    )
    info = SimpleNamespace(frames=4, model_id="fake", note=None)
    model = SimpleNamespace(profile=profile, info=info, source="test", warmed=())

    def fake(
        model: Any, settings: Any, spec: JobSpec, image: Any, progress: Any, _s: Any, seeds: Any
    ):
        steps = spec.num_inference_steps
        if seeds is not None and len(seeds) > 1:
            progress("denoise", 3, steps)  # most of the batch's denoise, then out of memory
            raise stepdown.BatchTooLarge("too big", [{"outcome": "oom", "phase": "batch"}])
        for i in range(1, steps + 1):
            progress("denoise", i, steps)
        rng = np.random.default_rng(seeds[0] if seeds else spec.seed)
        frames = rng.random((1, 4, 64, 64, 3), dtype=np.float32)
        params = engine.RunParams("tiny", 4, 7, 4, spec.seed or 0)
        return frames, {}, params, [{"outcome": "succeeded"}]

    monkeypatch.setattr(stepdown, "generate", fake)
    seen: list[float] = []
    quality.generate(
        model,  # type: ignore[arg-type]
        Settings.from_env({}),
        spec,
        __import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 64)),
        lambda phase, step, steps: seen.append(step / steps),
    )
    assert seen == sorted(seen), f"progress went back: {seen}"


def test_rank_is_unaffected_by_keep_candidates() -> None:
    """Attack that failed (kept as a guard): keep_candidates only stores; it takes no part in
    the pick (plans.rank, quality.generate)."""
    s = JobSpec.from_dict({"image": "x", "seed": 1, "job_id": "j", "candidates": 2})
    t = dataclasses.replace(s, keep_candidates=True)
    clip = {"motion": 0.001, "flicker": 0.2, "displacement": 0.5}
    checks = plans.opted(s) or plans.CHECKS
    assert plans.rank(clip, s, checks, 0) == plans.rank(clip, t, checks, 0)
