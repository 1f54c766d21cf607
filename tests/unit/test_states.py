"""JobState: the one table of job states, the strings users see, and Celery's names for them."""

from __future__ import annotations

import json

import pytest

from svdq.shared.states import JobState


def test_the_states_are_the_strings_users_see() -> None:
    assert [s.value for s in JobState] == [
        "queued",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "cancelled",
        "unknown",
    ]
    # `svdq status --json` and the progress lines print the member itself.
    assert json.dumps({"state": JobState.RUNNING}) == '{"state": "running"}'
    assert f"{JobState.CANCELLED}" == "cancelled"
    assert JobState("succeeded") is JobState.SUCCEEDED


def test_final_open_and_unknown() -> None:
    assert {s for s in JobState if s.is_final} == {"succeeded", "failed", "cancelled"}
    assert {s for s in JobState if s.is_open} == {"queued", "running", "retrying"}
    # Nothing is coming for an unknown job, but it did not end either.
    assert not JobState.UNKNOWN.is_final and not JobState.UNKNOWN.is_open


@pytest.mark.parametrize(
    ("celery", "state"),
    [
        ("PENDING", "queued"),
        ("RECEIVED", "queued"),
        ("STARTED", "running"),
        ("PROGRESS", "running"),
        ("RETRY", "retrying"),
        ("SUCCESS", "succeeded"),
        ("FAILURE", "failed"),
        ("REVOKED", "cancelled"),
        ("SOMETHING-ELSE", "unknown"),
    ],
)
def test_from_celery(celery: str, state: str) -> None:
    assert JobState.from_celery(celery) == state
