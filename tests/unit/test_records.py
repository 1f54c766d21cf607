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
        # Review finding 5: outputs that name other objects.
        (
            good(outputs={"mp4": {"key": "inputs/abc.png", "uri": "s3://b/r", "bytes": 10}}),
            "outputs['mp4'].key='inputs/abc.png' is not this job's 'results/j1/clip.mp4'",
        ),
        (
            good(outputs={"mp4": {"key": "results/j2/clip.mp4", "uri": "s3://b/r", "bytes": 1}}),
            "is not this job's 'results/j1/clip.mp4'",
        ),
        (
            good(outputs={"exe": {"key": "results/j1/x.exe", "uri": "s3://b/r", "bytes": 1}}),
            "outputs has 'exe', which is no output svdq writes",
        ),
    ],
)
def test_what_makes_a_record_invalid_is_named(record: Any, said: str) -> None:
    problem = result_problem(record, "j1")
    assert problem is not None and said in problem


@pytest.mark.parametrize("limit", [500_000, 0])  # from the folder's listing; one HEAD per job
def test_bulk_counts_a_job_done_only_for_a_valid_marker(tmp_path: Any, limit: int) -> None:
    """Issue 10: `svdq bulk` took any result.json as done, so a damaged or foreign marker
    left its job undone for good. DoneIndex believes a marker as the worker does."""
    import json

    from svdq.producer.doneindex import DoneIndex
    from svdq.shared.constants import output_key, result_key
    from svdq.shared.spec import JobSpec
    from svdq.shared.storage import LocalStore

    store = LocalStore(tmp_path)

    def job(
        job_id: str, marker: Any, clip: bytes | None = b"0123456789", prefix: str | None = None
    ) -> JobSpec:
        if clip is not None:
            store.put_bytes(output_key(job_id, "mp4", prefix), clip, "video/mp4")
        if marker is not None:
            data = marker if isinstance(marker, bytes) else json.dumps(marker).encode()
            store.put_bytes(result_key(job_id, prefix), data, "application/json")
        spec = {"image": "s3://b/inputs/x.png", "job_id": job_id, "output_prefix": prefix}
        return JobSpec.from_dict(spec)

    def whole(job_id: str, prefix: str | None = None) -> dict[str, Any]:
        key = output_key(job_id, "mp4", prefix)
        mp4 = {"key": key, "uri": store.uri(key), "bytes": 10}
        return good(job_id=job_id, outputs={"mp4": mp4})

    jobs = {
        "valid": (job("valid", whole("valid")), True),
        "prefixed": (job("prefixed", whole("prefixed", "team/a"), prefix="team/a"), True),
        "none": (job("none", None), False),
        "empty": (job("empty", {}), False),
        "not-json": (job("not-json", b'{"job_id": "not-js'), False),
        "foreign": (job("foreign", whole("valid")), False),  # another job's record
        "no-clip": (job("no-clip", whole("no-clip"), clip=None), False),
        "short-clip": (job("short-clip", whole("short-clip"), clip=b"0123"), False),
    }
    index = DoneIndex(store, limit=limit)
    assert {name: index.done(spec) for name, (spec, _) in jobs.items()} == {
        name: done for name, (_, done) in jobs.items()
    }


def test_a_record_whose_outputs_are_not_its_objects_is_not_believed(tmp_path: Any) -> None:
    """Review finding 5: the record's uri must name its key, and the stored object must have
    the recorded sha256 as well as the recorded size."""
    import hashlib
    import json

    from svdq.shared.constants import output_key, result_key
    from svdq.shared.records import read_result
    from svdq.shared.storage import LocalStore

    store = LocalStore(tmp_path)
    key = output_key("j1", "mp4")
    store.put_bytes(key, b"0123456789", "video/mp4")
    sha = hashlib.sha256(b"0123456789").hexdigest()

    def problem(**mp4: Any) -> str | None:
        output = {"key": key, "uri": store.uri(key), "bytes": 10, "sha256": sha, **mp4}
        store.put_bytes(result_key("j1"), json.dumps(good(outputs={"mp4": output})).encode(), "a")
        return read_result(store, "j1")[1]

    assert problem() is None
    assert "uri='s3://elsewhere/x.mp4' does not name its key" in (
        problem(uri="s3://elsewhere/x.mp4") or ""
    )
    said = problem(sha256="0" * 64) or ""
    assert f"has sha256 {sha}, the record says {'0' * 64}" in said


# --- tries, quality and candidate outputs (adversary review of repair, issue 14) -------------

QUALITY = {
    "checks": {"static": "retry", "flicker": "keep", "min_motion": 0.01, "max_flicker": 0.1},
    "kept": 1,
    "found": ["static"],
    "left": [],
    "repaired": "static clip repaired: try 1 kept of 2",
    "candidates": {"n": 3, "per_call": 3, "calls": 1, "mode": "batch", "kept": 1},
}
TRIES = [
    {"try": 0, "reason": "candidate", "params": {"seed": 3}, "scores": {"motion": 0.001}},
    {"try": 1, "reason": "static", "params": {"seed": 4}, "scores": {"motion": 0.05}},
]


def _candidate(index: int) -> dict[str, Any]:
    key = f"results/j1/candidates/{index}.mp4"
    return {"key": key, "uri": f"s3://b/{key}", "bytes": 10}


def test_a_record_with_tries_quality_and_kept_candidates_is_valid() -> None:
    record = good(
        spec={"image": "s3://b/x.png", "candidates": 3, "keep_candidates": True},
        tries=TRIES,
        quality=QUALITY,
    )
    record["outputs"].update({"candidate-0": _candidate(0), "candidate-2": _candidate(2)})
    assert result_problem(record, "j1") is None
    assert result_problem(good(tries=[], quality=None), "j1") is None  # a plain job's


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"tries": {"0": {}}}, "field 'tries' is {'0': {}}, not list"),
        ({"tries": [5]}, "tries[0] is 5, not an object"),
        ({"tries": [{"reason": "first"}]}, "tries[0].try is missing"),
        ({"tries": [{"try": True, "reason": "first"}]}, "tries[0].try is True, not int"),
        ({"tries": [{"try": 0, "reason": "first", "scores": [1]}]}, "tries[0].scores is [1]"),
        ({"quality": "repaired everything"}, "field 'quality' is 'repaired everything'"),
        ({"quality": {**QUALITY, "found": "static"}}, "quality.found is 'static', not list"),
        ({"quality": {**QUALITY, "left": [3]}}, "quality.found and quality.left must be"),
        ({"quality": {**QUALITY, "candidates": {"n": 3}}}, "quality.candidates.calls is miss"),
        ({"quality": {**QUALITY, "candidates": [1]}}, "quality.candidates is [1], not dict"),
    ],
)
def test_malformed_tries_or_quality_are_refused(changes: dict[str, Any], said: str) -> None:
    problem = result_problem(good(**changes), "j1")
    assert problem is not None and said in problem, problem


@pytest.mark.parametrize(
    ("spec", "index", "said"),
    [
        ({}, 0, "its spec kept no candidates (candidates=1, keep_candidates=None)"),
        ({"candidates": 3}, 1, "kept no candidates (candidates=3, keep_candidates=None)"),
        ({"candidates": 1, "keep_candidates": True}, 0, "kept no candidates (candidates=1"),
        ({"candidates": 3, "keep_candidates": True}, 3, "made candidates 0…2 only"),
        ({"candidates": "8", "keep_candidates": True}, 2, "kept no candidates"),
    ],
)
def test_candidate_outputs_its_spec_never_made_are_refused(
    spec: dict[str, Any], index: int, said: str
) -> None:
    record = good(spec={"image": "s3://b/x.png", **spec})
    record["outputs"][f"candidate-{index}"] = _candidate(index)
    problem = result_problem(record, "j1")
    assert problem is not None and said in problem, problem
