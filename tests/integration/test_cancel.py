"""`svdq cancel` against a real worker: a running job stops at its next denoising step and
uploads nothing; a queued job is cancelled at once and never runs; the worker goes on."""

from __future__ import annotations

import time

import pytest

from svdq.shared.constants import output_key, result_key
from tests.conftest import run_svdq
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration

# Slow enough on the tiny model to be caught mid-denoise (many steps), still small.
LONG = {"variant": "tiny", "num_frames": 4, "num_inference_steps": 150, "width": 64, "height": 64}
QUICK = {"variant": "tiny", "num_frames": 2, "num_inference_steps": 1, "width": 64, "height": 64}


def wait_for(check, seconds: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_cancel_running_and_queued_jobs(client, store, worker, svdq_env, tmp_path):
    running = client.submit(str(make_image(tmp_path / "run.png", color=41)), **LONG)
    queued = client.submit(str(make_image(tmp_path / "queued.png", color=42)), **QUICK)

    def denoising():  # type: ignore[no-untyped-def]
        st = running.status()
        return st if st["state"] == "running" and st.get("step", 0) >= 2 else None

    seen = wait_for(denoising, 60, "the long job to be denoising")
    assert seen["phase"] == "denoise" and seen["steps"] == 150

    # The queued job first: its state says cancelled at once, before any worker sees it.
    proc = run_svdq(["cancel", queued.job_id, "--json"], svdq_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"outcome": "cancelled"' in proc.stdout
    assert client.status(queued.job_id)["state"] == "cancelled"

    assert running.cancel() == "cancelling"
    stopped = wait_for(
        lambda: running.status()["state"] == "cancelled" and running.status(), 30, "the stop"
    )
    assert stopped["state"] == "cancelled"
    for key in (
        result_key(running.job_id),
        output_key(running.job_id, "mp4"),
        output_key(running.job_id, "poster"),
    ):
        assert not store.exists(key), key

    # The worker goes on: a job queued after both runs, and the cancelled one never did.
    after = client.submit(str(make_image(tmp_path / "after.png", color=43)), **QUICK)
    assert after.wait(timeout=60)["status"] == "succeeded"
    assert client.status(queued.job_id)["state"] == "cancelled"
    assert not store.exists(result_key(queued.job_id))
    assert client.cancel([after.job_id, "no-such-job"]) == {
        after.job_id: "already succeeded",
        "no-such-job": "unknown",
    }
