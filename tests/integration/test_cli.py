"""The `svdq` command as a user runs it: bad input refused with exit 2 and nothing queued,
`run` writes a playable file, `submit --wait` / `status` / `results`, and the demo."""

from __future__ import annotations

import json
import os

import pytest
import redis as redis_lib

from svdq.shared.constants import job_key
from tests.conftest import next_db, run_svdq
from tests.integration.helpers import make_image, queued_messages
from tests.media import gif_info, mp4_info

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("flags", "field", "allowed"),
    [
        (["--motion-bucket-id", "300"], "motion_bucket_id=300", "0–255"),
        (["--noise-aug-strength", "1.5"], "noise_aug_strength=1.5", "0–1"),
        (["--width", "1000"], "width=1000", "multiple of 64"),
        (["--steps", "0"], "num_inference_steps=0", "1–150"),
        (["--job-id", "../../etc"], "job_id='../../etc'", "letters, digits"),
    ],
)
def test_bad_parameters_exit_2_and_queue_nothing(
    svdq_env, redis_url, tmp_path, flags, field, allowed
):
    image = make_image(tmp_path / "ok.png")
    before = queued_messages(redis_url)
    proc = run_svdq(["submit", str(image), *flags], svdq_env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr and allowed in proc.stderr
    assert queued_messages(redis_url) == before


def test_non_image_refused_exit_2_nothing_queued(svdq_env, redis_url, tmp_path):
    good = make_image(tmp_path / "good.png")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    before_jobs = set(redis_lib.Redis.from_url(redis_url).scan_iter(job_key("*")))
    proc = run_svdq(["submit", str(good), str(text)], svdq_env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "not a PNG, JPEG, WebP, GIF, BMP or TIFF image" in proc.stderr
    assert "notes.png" in proc.stderr
    # The good image before it was not queued either: one bad file queues nothing.
    assert queued_messages(redis_url) == 0 or proc.stdout == ""
    after_jobs = set(redis_lib.Redis.from_url(redis_url).scan_iter(job_key("*")))
    assert after_jobs == before_jobs


def test_run_writes_playable_mp4_and_gif(svdq_env, tmp_path):
    image = make_image(tmp_path / "photo.jpg".replace(".jpg", ".png"), (500, 260))
    out = tmp_path / "clip.mp4"
    proc = run_svdq(
        [
            "run",
            str(image),
            "-o",
            str(out),
            "--variant",
            "tiny",
            "--width",
            "128",
            "--height",
            "128",
            "--steps",
            "2",
            "--output-fps",
            "10",
        ],
        svdq_env,
    )
    assert proc.returncode == 0, proc.stderr
    info = mp4_info(out.read_bytes())
    assert (info["frames"], info["width"], info["height"]) == (14, 128, 128)
    assert info["fps"] == pytest.approx(10)
    gif = tmp_path / "clip.gif"
    proc = run_svdq(
        [
            "run",
            str(image),
            "-o",
            str(gif),
            "--variant",
            "tiny",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
            "--frames",
            "6",
        ],
        svdq_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert gif_info(gif.read_bytes())["frames"] == 6


def test_submit_wait_status_results(svdq_env, worker, tmp_path):
    image = make_image(tmp_path / "cli.png", (333, 222), color=99)
    proc = run_svdq(
        [
            "submit",
            str(image),
            "--wait",
            "--variant",
            "tiny",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
            "--json",
        ],
        svdq_env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    job_id = events[0]["job_id"]
    assert events[-1] == {"event": "done", "job_id": job_id, "outputs": events[-1]["outputs"]}

    status = run_svdq(["status", job_id, "--json"], svdq_env, timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "succeeded"
    line = run_svdq(["status", job_id], svdq_env, timeout=60).stdout
    assert line.startswith(f"{job_id}: succeeded — s3://") and " — motion 0." in line
    assert all(f" {name} " in line for name in ("displacement", "flicker", "psnr", "ssim"))
    results = run_svdq(
        ["results", job_id, "--presign", "3600", "--json", "--download", str(tmp_path / "dl")],
        svdq_env,
        timeout=60,
    )
    record = json.loads(results.stdout)
    assert set(record["presigned"]) == {"mp4", "poster"}
    assert "X-Amz-Expires=3600" in record["presigned"]["mp4"]
    assert (tmp_path / "dl" / "clip.mp4").stat().st_size == record["outputs"]["mp4"]["bytes"]


def test_demo_runs_to_completion(svdq_env, redis_url, tmp_path):
    # Its own Redis DB (the session worker must not take its jobs) and its own S3 server.
    demo_redis = next_db(redis_url)
    redis_lib.Redis.from_url(demo_redis).flushdb()
    env = {**svdq_env, "SVDQ_REDIS_URL": demo_redis}
    env.pop("SVDQ_S3_ENDPOINT")
    env.pop("SVDQ_S3_BUCKET")
    proc = run_svdq(["demo", "--output", str(tmp_path / "demo")], env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    clips = sorted(p.name for p in (tmp_path / "demo").glob("*.mp4"))
    assert clips == ["landscape.mp4", "portrait.mp4", "square.mp4"]
    for clip in clips:
        info = mp4_info((tmp_path / "demo" / clip).read_bytes())
        assert (info["frames"], info["width"], info["height"]) == (14, 256, 192)
    assert "s3://svdq/results/" in proc.stdout
    assert not os.path.exists(tmp_path / "svdq-store")
    redis_lib.Redis.from_url(demo_redis).flushdb()
