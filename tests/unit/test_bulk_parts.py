"""The small decisions of bulk work, with no services: callback signing and retry rules,
progress output off a terminal and as JSON, report files, batch ids, sorting a chunk's rows."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from pathlib import Path

import pytest

from svdq.producer.batch import COUNTERS, check_batch_id, new_batch_id
from svdq.producer.bulk import Summary
from svdq.producer.bulkrows import Prepared, sort_rows
from svdq.producer.manifest import Row
from svdq.producer.progress import BulkProgress
from svdq.producer.report import write_report
from svdq.shared.errors import InvalidJobError
from svdq.shared.spec import JobSpec
from svdq.shared.states import JobState
from svdq.worker.callbacks import encode, should_retry, signature


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = encode({"job_id": "j1", "status": "succeeded", "b": [1, 2]})
    assert body == b'{"b":[1,2],"job_id":"j1","status":"succeeded"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature("s3cret", body) == f"sha256={expected}"


@pytest.mark.parametrize(
    ("status", "retry"),
    [(500, True), (503, True), (429, True), (408, True), (404, False), (400, False)],
)
def test_which_answers_are_retried(status: int, retry: bool) -> None:
    assert should_retry(status) is retry


def test_progress_off_a_terminal_is_plain_lines() -> None:
    out = io.StringIO()
    show = BulkProgress(stream=out, every=0)
    show.event({"event": "row", "source": "a.txt", "outcome": "skipped", "reason": "not an image"})
    show.event({"event": "row", "source": "b.png", "outcome": "submitted", "job_id": "j"})
    show.event({"event": "chunk", "batch_id": "b1", "submitted": 1, "skipped": 1, "invalid": 0})
    show.counts({"queued": 1, "succeeded": 3})
    assert out.getvalue().splitlines() == [
        "a.txt: skipped: not an image",
        "submit: 2  1 submitted, 1 skipped",
        "done: 3/4  1 queued, 3 succeeded",
    ]
    assert "\r" not in out.getvalue()


def test_progress_json_is_one_object_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    show = BulkProgress(stream=io.StringIO(), as_json=True)
    show.event({"event": "row", "source": "b.png", "outcome": "submitted", "job_id": "j"})
    show.counts({"succeeded": 2})
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"event": "row", "source": "b.png", "outcome": "submitted", "job_id": "j"},
        {"event": "counts", "succeeded": 2},
    ]


ROWS = [
    {
        "source": "a.png",
        "job_id": "j1",
        "status": "succeeded",
        "reason": "",
        "outputs": {"mp4": "s3://b/results/j1/clip.mp4"},
        "presigned": {"mp4": "https://x"},
        "seconds": 1.5,
        "motion": 0.012,
        "flicker": 0.0004,
        "psnr": 31.5,
    },
    {
        "source": "m.csv:3",
        "job_id": "",
        "status": "invalid",
        "reason": "line 3: seed='x'",
        "outputs": {},
        "presigned": {},
        "seconds": None,
    },
]


def test_report_csv_and_jsonl(tmp_path: Path) -> None:
    assert write_report(tmp_path / "r.csv", iter(ROWS)) == {"succeeded": 1, "invalid": 1}
    with (tmp_path / "r.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert table[0]["outputs"] == "mp4=s3://b/results/j1/clip.mp4"
    assert table[0]["presigned"] == "mp4=https://x" and table[0]["seconds"] == "1.5"
    assert (table[1]["status"], table[1]["seconds"]) == ("invalid", "")
    # One column per score, to sort a batch by: empty where a job has none.
    assert (table[0]["motion"], table[0]["psnr"], table[0]["ssim"]) == ("0.012", "31.5", "")
    assert table[1]["motion"] == ""
    write_report(tmp_path / "r.jsonl", iter(ROWS))
    assert [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()] == ROWS


def test_batch_ids_and_summary_line() -> None:
    assert check_batch_id(new_batch_id()).startswith("b")
    with pytest.raises(InvalidJobError, match=r"batch_id='\.\./x' is not allowed"):
        check_batch_id("../x")
    s = Summary("b1")
    s.counts.update(already_done=1998, resubmitted=2)
    assert s.line() == "1,998 already done, 2 resubmitted"


def test_rows_are_sorted_by_what_redis_knows_of_their_jobs() -> None:
    def row(n: int, job_id: str | None) -> Prepared:
        r = Row(f"m.jsonl:{n}", n, data={"image": "x.png"} if job_id else None, error="bad")
        spec = JobSpec.from_dict({"image": "x.png", "job_id": job_id}) if job_id else None
        return Prepared(r, spec=spec, error=None if job_id else "bad", field="image")

    rows = [row(1, None), row(2, "new"), row(3, "new"), row(4, "busy"), row(5, "done")]
    rows += [row(6, "running"), row(7, "failed")]
    states = {
        "new": JobState.UNKNOWN,
        "busy": JobState.QUEUED,
        "done": JobState.SUCCEEDED,
        "running": JobState.RUNNING,
        "failed": JobState.FAILED,
    }
    events: list[tuple[int, str]] = []
    out = sort_rows(
        rows,
        states,
        {"busy"},
        False,
        dict.fromkeys(COUNTERS, 0),
        lambda p, outcome, _reason: events.append((p.row.line, outcome)),
    )
    assert events == [
        (1, "invalid"),
        (3, "duplicate"),
        (4, "duplicate"),
        (5, "already_done"),
        (6, "already_queued"),
    ]
    assert [(p.row.line, kind) for p, kind in out.candidates] == [(2, "check"), (7, "resubmitted")]
    assert out.members == [
        ("new", "m.jsonl:2"),
        ("done", "m.jsonl:5"),
        ("running", "m.jsonl:6"),
        ("failed", "m.jsonl:7"),
    ]
    assert {k: n for k, n in out.counts.items() if n} == {
        "invalid": 1,
        "already_queued": 3,
        "already_done": 1,
    }
    assert out.rejects[1] == {
        "source": "m.jsonl:3",
        "status": "duplicate",
        "reason": "same content and parameters as job new",
        "job_id": "new",
    }
    forced = sort_rows(rows, states, set(), True, dict.fromkeys(COUNTERS, 0), lambda *_: None)
    assert [kind for _, kind in forced.candidates] == ["submitted"] + ["resubmitted"] * 4
