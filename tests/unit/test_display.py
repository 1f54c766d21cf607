"""What `svdq submit --wait` / `svdq wait` print while a job moves (not on a terminal)."""

from __future__ import annotations

import io

from svdq.producer.progress import JobProgress


def printed(*statuses: dict) -> list[str]:
    out = io.StringIO()
    show = JobProgress(stream=out, labels={"j1": "photo.jpg"})
    for status in statuses:
        show(status)
    return out.getvalue().splitlines()


def test_a_job_nothing_consumes_says_why_instead_of_waiting_mute() -> None:
    waiting = "no running worker consumes svdq.auto: start one whose GPU can run it"
    lines = printed(
        {"job_id": "j1", "state": "queued"},
        {"job_id": "j1", "state": "queued", "waiting_for": waiting},
        {"job_id": "j1", "state": "queued", "waiting_for": waiting},  # unchanged: not again
    )
    assert lines == ["photo.jpg: queued", f"photo.jpg: queued · {waiting}"]


def test_progress_steps_and_the_tiny_label_on_success() -> None:
    note = "made by the tiny random-weight model: noise, for testing the pipeline only"
    lines = printed(
        {"job_id": "j1", "state": "running", "phase": "denoise", "step": 3, "steps": 25},
        {"job_id": "j1", "state": "succeeded", "result": {"variant": "tiny", "note": note}},
    )
    assert lines == ["photo.jpg: running · denoise 3/25", f"photo.jpg: succeeded · {note}"]


def test_a_failure_shows_its_reason() -> None:
    lines = printed({"job_id": "j1", "state": "failed", "error": "InvalidJobError: image=..."})
    assert lines == ["photo.jpg: failed · InvalidJobError: image=..."]
