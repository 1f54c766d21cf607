"""`svdq cancel` against a real worker: a running job stops at its next denoising step and
uploads nothing; a queued job is cancelled at once and never runs; the worker goes on. Both
ends are announced with Celery's task-revoked event (Flower, `celery events`), and a revoke
sent through Celery (Flower's Terminate) is a cancel too, never a lost connection."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery

from svdq.shared.constants import FINISHED_STREAM, cancel_key, output_key, result_key
from tests.conftest import run_svdq
from tests.integration.helpers import make_image, queued_messages

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


class Events:
    """Celery's events as Flower and `celery events` get them: a real EventReceiver on the
    test Redis, in a thread, feeding a celery.events.State (Flower's own task table)."""

    def __init__(self, app: Celery) -> None:
        self.seen: list[dict[str, Any]] = []
        self.state = app.events.State()

    def on_event(self, event: dict[str, Any]) -> None:
        self.seen.append(event)
        self.state.event(event)

    def task_state(self, job_id: str) -> str | None:
        task = self.state.tasks.get(job_id)
        return task.state if task is not None else None

    def of(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.seen) if e.get("uuid") == job_id and e["type"] == kind]


@contextlib.contextmanager
def celery_events(app: Celery) -> Iterator[Events]:
    events = Events(app)
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": events.on_event})
        thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        thread.start()
        try:
            yield events
        finally:
            receiver.should_stop = True
            thread.join(10)


def finished_entries(redis_url: str, job_id: str) -> list[dict[str, str]]:
    """The job's entries on the finished-jobs stream (svdq stats, the exporter)."""
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    return [e for _, e in client.xrange(FINISHED_STREAM) if e.get("job_id") == job_id]


def test_cancel_running_and_queued_jobs(client, store, worker, svdq_env, tmp_path):
    with celery_events(client.app) as events:
        _cancel_running_and_queued_jobs(client, store, svdq_env, tmp_path, events)


def _cancel_running_and_queued_jobs(client, store, svdq_env, tmp_path, events):  # type: ignore[no-untyped-def]
    running = client.submit(str(make_image(tmp_path / "run.png", color=41)), **LONG)
    queued = client.submit(str(make_image(tmp_path / "queued.png", color=42)), **QUICK)

    def denoising():  # type: ignore[no-untyped-def]
        st = running.status()
        return st if st["state"] == "running" and st.get("step", 0) >= 2 else None

    seen = wait_for(denoising, 60, "the long job to be denoising")
    assert seen["phase"] == "denoise" and seen["steps"] == 150
    # What Flower shows while it runs (and, before the fix, forever after it was cancelled).
    wait_for(lambda: events.task_state(running.job_id) == "STARTED", 20, "task-started")

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

    # Announced as Celery announces a revoke: Flower's state says REVOKED, not STARTED; the
    # finished-jobs stream (svdq stats, the exporter) counts it cancelled.
    wait_for(lambda: events.of(running.job_id, "task-revoked"), 20, "the task-revoked event")
    [revoked] = events.of(running.job_id, "task-revoked")
    assert (revoked["terminated"], revoked["signum"], revoked["expired"]) == (False, None, False)
    assert events.task_state(running.job_id) == "REVOKED"
    entries = finished_entries(svdq_env["SVDQ_REDIS_URL"], running.job_id)
    assert [e["status"] for e in entries] == ["cancelled"]

    # The worker goes on: a job queued after both runs, and the cancelled one never did.
    after = client.submit(str(make_image(tmp_path / "after.png", color=43)), **QUICK)
    assert after.wait(timeout=60)["status"] == "succeeded"
    assert client.status(queued.job_id)["state"] == "cancelled"
    assert not store.exists(result_key(queued.job_id))
    assert client.cancel([after.job_id, "no-such-job"]) == {
        after.job_id: "already succeeded",
        "no-such-job": "unknown",
    }


def test_a_revoke_through_celery_is_a_cancel_not_a_lost_connection(
    client, store, worker, svdq_env, tmp_path
):
    """Defect 7 (issue 10): Flower's Terminate (app.control.revoke(id, terminate=True): a
    revoke control command, then SIGTERM to the pool child) was taken for a broker
    connection loss: "queued again", and the job ran a second time. It is a person's cancel:
    recorded as `svdq cancel` records one, never queued again, nothing uploaded."""
    url = svdq_env["SVDQ_REDIS_URL"]
    with celery_events(client.app) as events:
        job = client.submit(str(make_image(tmp_path / "term.png", color=44)), **LONG)
        wait_for(
            lambda: job.status()["state"] == "running" and job.status().get("step", 0) >= 2,
            60,
            "the long job to be denoising",
        )
        wait_for(lambda: events.task_state(job.job_id) == "STARTED", 20, "task-started")
        client.app.control.revoke(job.job_id, terminate=True)  # what Flower's Terminate sends
        wait_for(lambda: events.of(job.job_id, "task-revoked"), 30, "the task-revoked event")
        [revoked] = events.of(job.job_id, "task-revoked")
        assert (revoked["terminated"], revoked["signum"]) == (True, 15)  # SIGTERM
        assert events.task_state(job.job_id) == "REVOKED"

    # Recorded as `svdq cancel` would: cancelled, its flag set, counted cancelled.
    status = job.status()
    assert status["state"] == "cancelled", status
    assert redis_lib.Redis.from_url(url).exists(cancel_key(job.job_id))
    assert [e["status"] for e in finished_entries(url, job.job_id)] == ["cancelled"]
    # Not queued again (before the fix the parent sent it again in the same signal handler
    # that saw the revoke, so by now it would be on the queue), nothing uploaded.
    assert queued_messages(url) == 0
    assert not store.exists(result_key(job.job_id))
    log = Path(worker).read_text(errors="replace")
    assert f"job {job.job_id} was terminated by a broker connection loss" not in log
    assert f"job {job.job_id} was cancelled through Celery's revoke" in log
