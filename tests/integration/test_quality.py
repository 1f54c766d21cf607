"""Quality repair and candidates end to end: a real Celery worker (the session's), the tiny
pipeline, real Redis and S3. Thresholds are set so that the repair path is always taken
(tiny's clips are noise: they move, and they flicker), and the tries, what was kept and
what was stored are checked against the policy (worker/plans.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svdq.shared import records
from svdq.shared.constants import result_key
from svdq.shared.spec import JobSpec
from svdq.worker import plans
from tests.conftest import run_svdq
from tests.integration.helpers import FAST, make_image
from tests.media import mp4_info

pytestmark = pytest.mark.integration

FRAMES = 6


def _kept_by_rank(result: dict) -> int:
    spec = JobSpec.from_dict(result["spec"])
    checks = plans.opted(spec) or plans.CHECKS
    return min(result["tries"], key=lambda t: plans.rank(t["scores"], spec, checks, t["try"]))[
        "try"
    ]


def test_static_and_flickering_clip_is_generated_again_and_the_best_kept(
    client, store, worker, svdq_env, tmp_path
):
    image = make_image(tmp_path / "repair.png", color=91)
    handle = client.submit(
        str(image),
        num_frames=FRAMES,
        decode_chunk_size=2,
        on_static="retry",
        on_flicker="retry",
        min_motion=1.0,  # nothing moves that much: static, always
        max_flicker=0.0,  # and noise always flickers
        repair_attempts=2,
        **FAST,
    )
    result = handle.wait(timeout=300)
    seed = result["spec"]["seed"]
    tries = result["tries"]

    # The first generation, then two repairs, each fixing both problems at once.
    assert [t["try"] for t in tries] == [0, 1, 2]
    assert [t["reason"] for t in tries] == ["first", "static+flicker", "static+flicker"]
    first, one, two = (t["params"] for t in tries)
    assert first == {
        "seed": seed,
        "noise_seed": seed,  # a plain call: one seed for both noises
        "motion_bucket_id": 127,
        "noise_aug_strength": 0.02,
        "decode_chunk_size": 2,
    }
    assert one == {
        "seed": plans.derived_seed(seed, "repair", 1),
        "noise_seed": plans.derived_seed(seed, "repair", 1),
        "motion_bucket_id": 180,
        "noise_aug_strength": 0.1,
        "decode_chunk_size": FRAMES,  # the CPU rung carries every frame at once
    }
    assert two["seed"] == plans.derived_seed(seed, "repair", 2)
    assert (two["motion_bucket_id"], two["decode_chunk_size"]) == (190, FRAMES)
    for t in tries:
        assert t["problems"] == ["static", "flicker"] and t["seconds"] > 0
        assert set(t["scores"]) == {
            "motion",
            "displacement",
            "flicker",
            "chunk_jump",
            "psnr",
            "ssim",
        }

    # The best one (by the policy's rank) is the clip, and the record says so everywhere.
    kept = _kept_by_rank(result)
    assert [t["kept"] for t in tries] == [t["try"] == kept for t in tries]
    assert result["scores"] == tries[kept]["scores"]
    assert result["seed"] == tries[kept]["params"]["seed"]
    assert result["decode_chunk_size"] == tries[kept]["params"]["decode_chunk_size"]
    quality_record = result["quality"]
    assert quality_record["kept"] == kept
    assert quality_record["found"] == ["static", "flicker"]
    assert quality_record["left"] == ["static", "flicker"]
    assert quality_record["repaired"].startswith("static and flickering clip not fully repaired")
    assert quality_record["candidates"] is None
    # Every generation's step-down record, each with the try it belongs to.
    assert [(a["try"], a["outcome"]) for a in result["attempts"]] == [
        (0, "succeeded"),
        (1, "succeeded"),
        (2, "succeeded"),
    ]
    assert set(result["outputs"]) == {"mp4", "poster"}
    assert mp4_info(store.get_bytes(result["outputs"]["mp4"]["key"]))["frames"] == FRAMES
    stored = json.loads(store.get_bytes(result_key(handle.job_id)))
    assert stored == result

    status = run_svdq(["status", handle.job_id], svdq_env)
    assert status.returncode == 0, status.stderr
    assert "repaired: static and flickering clip not fully repaired" in status.stdout


def test_flicker_repair_stops_when_the_chunk_cannot_grow(client, worker, tmp_path):
    """A flicker repair widens the decode chunk to what the rung carries; once it is there,
    another try would make the same clip again: none is made, and the record says why."""
    image = make_image(tmp_path / "flicker.png", color=92)
    result = client.submit(
        str(image),
        num_frames=FRAMES,
        decode_chunk_size=3,
        on_flicker="retry",
        max_flicker=0.0,
        repair_attempts=3,
        **FAST,
    ).wait(timeout=300)
    tries = result["tries"]
    assert [t["reason"] for t in tries] == ["first", "flicker"]
    assert tries[1]["params"] == {**tries[0]["params"], "decode_chunk_size": FRAMES}
    assert result["quality"]["found"] == ["flicker"]
    assert (
        "flickering clip not fully repaired after 1 more generation(s)"
        in (result["quality"]["repaired"])
    )


def test_candidates_one_call_best_kept_others_stored(client, store, worker, svdq_env, tmp_path):
    image = make_image(tmp_path / "candidates.png", color=93)
    handle = client.submit(
        str(image), num_frames=FRAMES, candidates=3, keep_candidates=True, **FAST
    )
    result = handle.wait(timeout=300)
    spec = JobSpec.from_dict(result["spec"])
    tries = result["tries"]

    # Three seeds (the job's, then derived), one call each on a CPU rung (candidates_per_call).
    assert [t["params"]["seed"] for t in tries] == list(plans.candidate_seeds(spec))
    # One image noise per call, the job's seed's, whether batched or one by one.
    assert {t["params"]["noise_seed"] for t in tries} == {spec.seed}
    assert [(t["reason"], t["candidate"], t["call"]) for t in tries] == [
        ("candidate", 0, 0),
        ("candidate", 1, 1),
        ("candidate", 2, 2),
    ]
    kept = _kept_by_rank(result)
    assert result["quality"]["candidates"] == {
        "n": 3,
        "per_call": 1,
        "calls": 3,
        "mode": "one by one",
        "kept": kept,
    }
    assert result["scores"] == tries[kept]["scores"]
    assert result["seed"] == tries[kept]["params"]["seed"]
    assert len({t["scores"]["motion"] for t in tries}) == 3  # three different clips

    # The kept one is clip.mp4; the others candidates/<i>.mp4 under the job's folder.
    others = sorted(set(range(3)) - {kept})
    assert set(result["outputs"]) == {"mp4", "poster"} | {f"candidate-{i}" for i in others}
    for i in others:
        out = result["outputs"][f"candidate-{i}"]
        assert out["key"] == f"results/{handle.job_id}/candidates/{i}.mp4"
        assert out["content_type"] == "video/mp4"
        assert mp4_info(store.get_bytes(out["key"]))["frames"] == FRAMES
    # A record with candidate outputs is a valid commit marker: a resubmission is skipped.
    assert records.read_result(store, handle.job_id) == (result, None)
    assert client.submit(
        str(image), num_frames=FRAMES, candidates=3, keep_candidates=True, **FAST
    ).skipped

    status = run_svdq(["status", handle.job_id], svdq_env)
    assert f"candidates: 3 in 3 call(s) (one by one), #{kept} kept" in status.stdout


def test_a_candidate_is_the_same_clip_in_a_batch_or_alone(model_dir):
    """What lets the rung decide batch or one by one: candidate i's clip does not depend on
    it (its latents from its own seed, the image's noise from the job's, decoded alone)."""
    import dataclasses

    from PIL import Image

    from svdq.shared.settings import Settings
    from svdq.worker import engine
    from svdq.worker.models import load_model
    from svdq.worker.profiles import CPU_PROFILE

    settings = dataclasses.replace(Settings.from_env({}), model_dir=model_dir)
    model = load_model(settings, CPU_PROFILE)
    spec = JobSpec.from_dict({"image": "x.png", "seed": 5, "job_id": "b", **FAST, "num_frames": 4})
    image = Image.new("RGB", (128, 64), (200, 80, 30))
    params = engine.params_for(spec, model)
    batch, _ = engine.generate(model, spec, image, params, seeds=(11, 12, 13))
    alone, _ = engine.generate(model, spec, image, params, seeds=(12,))
    assert batch.shape == (3, 4, 64, 128, 3) and alone.shape == (1, 4, 64, 128, 3)
    assert np.abs(batch[1] - alone[0]).max() < 1e-4
    assert np.abs(batch[0] - batch[1]).max() > 0.1  # different seeds, different clips
