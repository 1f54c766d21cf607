"""shared.records.result_problem: which result records may be believed (issue 10, defect 5)."""

from __future__ import annotations

from typing import Any

import pytest

from svdq.shared.records import result_problem


def good(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "job_id": "j1",
        "status": "succeeded",
        "spec": {"image": "s3://b/inputs/x.png"},
        "variant": "tiny",
        "num_frames": 4,
        "width": 128,
        "height": 64,
        "output_fps": 7,
        "seed": 3,
        "worker": "w@h",
        "outputs": {"mp4": {"key": "results/j1/clip.mp4", "uri": "s3://b/r", "bytes": 10}},
        "timings": {"total": 1.0},
    }
    record.update(changes)
    return record


def test_a_whole_record_of_this_job_is_valid() -> None:
    assert result_problem(good(), "j1") is None
    assert result_problem(good(seed=None, extra="newer writer"), "j1") is None


@pytest.mark.parametrize(
    ("record", "said"),
    [
        ({}, "field 'job_id' is missing"),
        ([1, 2], "must be a JSON object, not list"),
        (None, "not NoneType"),
        (good(job_id="j2"), "names another job"),
        (good(status="failed"), "only 'succeeded'"),
        (good(num_frames="4"), "field 'num_frames' is '4', not int"),
        (good(width=True), "field 'width' is True, not int"),
        (good(outputs={}), "outputs is empty"),
        (good(outputs={"mp4": "x"}), "outputs['mp4'] is 'x', not an object"),
        (good(outputs={"mp4": {"key": "k", "uri": "u"}}), "outputs['mp4'].bytes is None"),
    ],
)
def test_what_makes_a_record_invalid_is_named(record: Any, said: str) -> None:
    problem = result_problem(record, "j1")
    assert problem is not None and said in problem
