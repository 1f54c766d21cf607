"""An image goes in, a playable clip comes out of S3: real Redis, a real Celery worker, the
real diffusers pipeline (tiny weights) and a real S3 server."""

from __future__ import annotations

import json

import pytest

from svdq.shared.constants import result_key
from tests.integration.helpers import FAST, make_image
from tests.media import gif_info, mp4_info

pytestmark = pytest.mark.integration


def test_submit_produces_clip_gif_poster_and_result_last(client, store, worker, tmp_path):
    image = make_image(tmp_path / "scene.png", (400, 300))
    handle = client.submit(str(image), formats=["mp4", "gif"], fps=6, output_fps=8, **FAST)
    result = handle.wait(timeout=120)

    assert store.exists(result_key(handle.job_id))
    stored = json.loads(store.get_bytes(result_key(handle.job_id)))
    assert stored == result
    assert result["status"] == "succeeded" and result["variant"] == "tiny"
    assert result["note"].startswith("made by the tiny random-weight model")
    assert set(result["outputs"]) == {"mp4", "gif", "poster"}
    assert result["spec"]["image"].startswith("s3://svdq-test/inputs/")
    assert result["worker"].startswith("test@")
    assert {"fetch", "preprocess", "denoise", "decode", "score", "encode", "upload", "total"} <= (
        set(result["timings"])
    )
    # Every clip is scored (shared/scores.py); tiny's frames are noise: they move, and the
    # first one is far from the input.
    scores = result["scores"]
    assert set(scores) == {"motion", "displacement", "flicker", "chunk_jump", "psnr", "ssim"}
    assert scores["motion"] == result["motion"] and 0 < scores["motion"] <= 1
    assert scores["displacement"] > 0 and scores["flicker"] > 0
    assert 0 < scores["psnr"] < 30 and scores["ssim"] < 0.9

    mp4 = mp4_info(store.get_bytes(result["outputs"]["mp4"]["key"]))
    assert (mp4["frames"], mp4["width"], mp4["height"]) == (14, 128, 64)
    assert mp4["fps"] == pytest.approx(8)
    assert "h264" in mp4["codec"]
    gif = gif_info(store.get_bytes(result["outputs"]["gif"]["key"]))
    assert (gif["frames"], gif["width"], gif["height"], gif["loop"]) == (14, 128, 64, 0)


@pytest.mark.parametrize("frames", [14, 25])
def test_frame_counts(client, store, worker, tmp_path, frames):
    image = make_image(tmp_path / f"f{frames}.png", (256, 256), color=frames)
    result = client.submit(str(image), num_frames=frames, **FAST).wait(timeout=180)
    assert result["num_frames"] == frames
    assert mp4_info(store.get_bytes(result["outputs"]["mp4"]["key"]))["frames"] == frames


def test_resubmission_is_skipped_and_status_reads_result(client, worker, tmp_path):
    image = make_image(tmp_path / "again.png", (300, 300), color=7)
    first = client.submit(str(image), **FAST)
    first.wait(timeout=120)
    again = client.submit(str(image), **FAST)
    assert again.skipped and again.job_id == first.job_id
    status = client.status(first.job_id)
    assert status["state"] == "succeeded"
    urls = client.presign(first.job_id, 60)
    assert set(urls) == {"mp4", "poster"} and all(u.startswith("http") for u in urls.values())


def test_unknown_job_is_reported_as_unknown(client, worker):
    assert client.status("no-such-job")["state"] == "unknown"


def test_a_job_sent_again_is_waited_for_afresh_not_answered_from_its_last_run(
    client, store, worker, tmp_path
):
    """Job ids repeat by design. When result.json is gone (a new bucket, a cleaned store, a
    forced redo) the job goes out again, and `wait` must wait for this run, not hand back the
    previous run's record from Redis (whose outputs are gone with it)."""
    image = make_image(tmp_path / "sent-again.png", color=61)
    first = client.submit(str(image), **FAST).wait(timeout=120)
    store.delete(result_key(first["job_id"]))
    second = client.submit(str(image), **FAST).wait(timeout=120)
    assert second["job_id"] == first["job_id"]
    assert second["started_at"] > first["finished_at"]  # a new run, not the old record
    assert store.exists(result_key(second["job_id"]))
