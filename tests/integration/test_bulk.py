"""`svdq bulk` as a user runs it, against real Redis, the S3 server and a real worker: a folder
of mixed images, re-runs that submit nothing, a manifest with bad rows, picking a batch up
again from another process, and the Python API's submit_many / as_completed / batch."""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib
from PIL import Image

from svdq.producer.client import JobFailedError
from svdq.shared.constants import batch_jobs_key, job_key, result_key
from tests.conftest import run_svdq
from tests.integration.helpers import make_image, queued_messages

pytestmark = pytest.mark.integration

# The smallest clip the tiny model makes: bulk tests are about the plumbing, not the video.
QUICK = ["--variant", "tiny", "--frames", "2", "--steps", "1", "--width", "64", "--height", "64"]
QUICK_SPEC = {
    "variant": "tiny",
    "num_frames": 2,
    "num_inference_steps": 1,
    "width": 64,
    "height": 64,
}

# Every input format a folder of photos may hold (shared/images.py), each through the worker.
FOLDER_FORMATS = ("png", "jpg", "webp", "gif", "bmp", "tif")


def photo_folder(root: Path) -> Path:
    """30 different images (every input format, in sub-folders) and 3 files that are not images."""
    for i in range(30):
        ext = FOLDER_FORMATS[i % len(FOLDER_FORMATS)]
        sub = root / ("" if i < 10 else f"set{i // 10}")
        path = make_image(sub / f"img{i:02d}.png", (96 + i, 80), color=i * 7)
        if ext != "png":
            Image.open(path).convert("RGB").save(path.with_suffix(f".{ext}"))
            path.unlink()
    (root / "notes.txt").write_text("not an image")
    (root / "set1" / "README").write_text("nor this")
    (root / "set2" / "data.json").write_text("{}")
    return root


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_folder_bulk_waits_reports_and_a_rerun_submits_nothing(
    svdq_env, store, worker, redis_url, tmp_path
):
    folder = photo_folder(tmp_path / "photos")
    report = tmp_path / "out.jsonl"
    args = ["bulk", str(folder), *QUICK, "--json"]
    proc = run_svdq([*args, "--wait", "--report", str(report), "--presign", "600"], svdq_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = events(proc.stdout)
    submitted = next(e for e in out if e["event"] == "submitted")
    assert (submitted["submitted"], submitted["skipped"], submitted["already_done"]) == (30, 3, 0)

    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(rows) == 33
    done = [r for r in rows if r["status"] == "succeeded"]
    assert len(done) == 30
    assert {Path(r["source"]).suffix for r in done} == {f".{x}" for x in FOLDER_FORMATS}
    for r in done:
        assert set(r["outputs"]) == {"mp4", "poster"}
        assert store.exists(result_key(r["job_id"]))
        assert r["presigned"]["mp4"].startswith("http") and r["seconds"] > 0
        assert 0 < r["motion"] <= 1 and r["psnr"] > 0 and -1 <= r["ssim"] <= 1
    skipped = {Path(r["source"]).name: r["reason"] for r in rows if r["status"] == "skipped"}
    assert set(skipped) == {"notes.txt", "README", "data.json"}
    assert skipped["data.json"].startswith("not an image file: extension '.json'")

    # The same command again: everything is done, nothing is queued.
    before = queued_messages(redis_url)
    again = run_svdq(args, svdq_env)
    assert again.returncode == 0, again.stderr
    summary = next(e for e in events(again.stdout) if e["event"] == "submitted")
    assert (summary["submitted"], summary["already_done"], summary["resubmitted"]) == (
        30 * 0,
        30,
        0,
    )
    assert queued_messages(redis_url) == before

    # Another process picks the first batch up again and writes the same rows as CSV.
    batch_id = submitted["batch_id"]
    csv_report = tmp_path / "out.csv"
    wait = run_svdq(["wait", "--batch", batch_id, "--report", str(csv_report)], svdq_env)
    assert wait.returncode == 0, wait.stderr
    with csv_report.open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["status"] for r in table].count("succeeded") == 30
    assert [r["status"] for r in table].count("skipped") == 3
    first = next(r for r in table if r["status"] == "succeeded")
    assert "mp4=s3://svdq-test/results/" in first["outputs"]
    assert float(first["displacement"]) >= 0 and float(first["flicker"]) >= 0

    status = run_svdq(["status", "--batch", batch_id, "--json"], svdq_env)
    record = json.loads(status.stdout)
    assert record["states"] == {"succeeded": 30}
    assert (record["jobs"], record["skipped"], record["complete"]) == (30, 3, True)


def test_manifest_with_two_bad_rows_runs_the_rest(svdq_env, worker, tmp_path):
    images = [make_image(tmp_path / f"m{i}.png", (90, 70), color=100 + i) for i in range(4)]
    manifest = tmp_path / "jobs.jsonl"
    lines = [
        {"image": images[0].name, "seed": 1},
        {"image": images[1].name, "motion_bucket_id": 300},
        {"image": images[2].name, "formats": ["gif"]},
        {"image": "missing.png"},
        {"image": images[3].name, "priority": 9},
    ]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report = tmp_path / "r.jsonl"
    proc = run_svdq(["bulk", str(manifest), *QUICK, "--wait", "--report", str(report)], svdq_env)
    assert proc.returncode == 1, proc.stderr  # bad rows make the run fail, after the good ones
    assert "3 submitted, 2 invalid" in proc.stderr
    rows = {
        r["source"].rsplit(":", 1)[1]: r for r in map(json.loads, report.read_text().splitlines())
    }
    assert {k: r["status"] for k, r in rows.items()} == {
        "1": "succeeded",
        "2": "invalid",
        "3": "succeeded",
        "4": "invalid",
        "5": "succeeded",
    }
    assert rows["2"]["reason"] == "motion_bucket_id=300 is out of range: an integer 0–255"
    assert "missing.png" in rows["4"]["reason"] and "no such file" in rows["4"]["reason"]
    assert set(rows["3"]["outputs"]) == {"gif", "poster"}

    strict = run_svdq(["bulk", str(manifest), *QUICK, "--strict"], svdq_env)
    assert strict.returncode == 2
    assert "jobs.jsonl:2: motion_bucket_id=300" in strict.stderr
    assert "1 bad row(s), --strict: nothing queued" in strict.stderr  # missing file: found later


def test_submit_many_as_completed_and_batch(client, store, worker, tmp_path, redis_url):
    slow, quick = (make_image(tmp_path / f"s{i}.png", (90, 90), color=200 + i) for i in range(2))
    # `slow` is queued first, so the one worker finishes it first whatever order we ask in.
    handles = client.submit_many(
        [
            {"image": str(slow), **QUICK_SPEC, "num_inference_steps": 4, "num_frames": 6},
            {"image": str(quick), **QUICK_SPEC},
        ],
        batch_id="api-batch-1",
    )
    assert [h.skipped for h in handles] == [False, False]
    assert all(h.batch_id == "api-batch-1" for h in handles)
    order = [h.job_id for h in client.as_completed(list(reversed(handles)), timeout=120)]
    assert order == [handles[0].job_id, handles[1].job_id]
    assert handles[1].result()["outputs"]["mp4"]["uri"].startswith("s3://")

    batch = client.batch("api-batch-1")
    assert list(batch.job_ids()) == [h.job_id for h in handles]
    assert batch.counts() == {"succeeded": 2}
    assert batch.info()["submitted"] == 2

    # Submitting the same specs again gives the same ids and queues nothing.
    again = client.submit_many(
        [{"image": str(slow), **QUICK_SPEC, "num_inference_steps": 4, "num_frames": 6}]
    )
    assert again[0].job_id == handles[0].job_id and again[0].skipped
    # Results stay readable from result.json once Redis has forgotten the job.
    import redis as redis_lib

    r = redis_lib.Redis.from_url(redis_url)
    r.delete(job_key(handles[1].job_id), client.app.backend.get_key_for_task(handles[1].job_id))
    assert handles[1].result()["job_id"] == handles[1].job_id
    assert [h.job_id for h in client.as_completed([handles[1]], timeout=5)] == [handles[1].job_id]
    assert r.llen(batch_jobs_key("api-batch-1")) == 2
    # A job nobody knows comes out at once, and its result() says why.
    ghost = dataclasses.replace(handles[0], job_id="no-such-job-x")
    assert [h.job_id for h in client.as_completed([ghost], timeout=5)] == ["no-such-job-x"]
    with pytest.raises(JobFailedError, match="job no-such-job-x is unknown"):
        ghost.result()

    # --force regenerates: result.json is removed first, so the worker runs the job again.
    before = json.loads(store.get_bytes(result_key(handles[1].job_id)))["finished_at"]
    redo = client.submit_many([{"image": str(quick), **QUICK_SPEC}], force=True)
    assert redo[0].job_id == handles[1].job_id and not redo[0].skipped
    assert redo[0].wait(timeout=60)["finished_at"] > before


def test_ctrl_c_keeps_queued_jobs_and_a_rerun_submits_the_rest(svdq_env, redis_url, tmp_path):
    # svd jobs: no test worker takes them, so what was queued stays visible in the queue. An
    # earlier test of this session may have left svd jobs there too: count from what was.
    already = queued_in(redis_lib.Redis.from_url(redis_url), "svdq.svd")
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(900):
        Image.new("RGB", (64, 64), (i % 256, i // 256, 7)).save(folder / f"{i:04d}.png")
    args = [sys.executable, "-m", "svdq.producer.cli", "bulk", str(folder), "--variant", "svd"]
    proc = subprocess.Popen(
        [*args, "--json"], env=svdq_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # interrupt as soon as the first chunk is in
        if '"event": "chunk"' in line:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    batch_id = err.split("in batch ", 1)[1].split(".", 1)[0]
    assert f"svdq wait --batch {batch_id}" in err

    r = redis_lib.Redis.from_url(redis_url)
    try:
        queued = r.llen(batch_jobs_key(batch_id))
        assert 0 < queued < 900
        # every recorded job is really in the queue
        assert queued_in(r, "svdq.svd") - already == queued
        again = run_svdq([*args[3:], "--json"], svdq_env)
        summary = next(e for e in events(again.stdout) if e["event"] == "submitted")
        assert (summary["already_queued"], summary["submitted"]) == (queued, 900 - queued)
        assert queued_in(r, "svdq.svd") - already == 900
    finally:
        for key in r.scan_iter("svdq.svd*"):
            if key.startswith(b"svdq.svd") and not key.startswith(b"svdq.svd-"):
                r.delete(key)


def queued_in(r: redis_lib.Redis, queue: str) -> int:
    """Messages in `queue` across its priority lists (svdq.svd, svdq.svd:1, ...)."""
    return sum(int(r.llen(k)) for k in [queue, *(f"{queue}:{p}" for p in range(1, 10))])


def test_bulk_sends_celery_task_sent_events(client, tmp_path, redis_url):
    """Monitors (Flower) see a bulk-submitted job from the moment it is queued: a Celery
    task-sent event per job, as published on the broker's event channel."""
    import base64

    r = redis_lib.Redis.from_url(redis_url)
    listener = r.pubsub()
    listener.psubscribe("*celeryev*")  # kombu's fanout exchange is a Redis PUBLISH channel
    assert listener.get_message(timeout=5)["type"] == "psubscribe"  # subscribed before sending
    images = [make_image(tmp_path / f"ev{i}.png", (96, 96), color=70 + i) for i in range(3)]
    # svd: no test worker consumes that queue, so the jobs stay queued until removed below.
    handles = client.submit_many(
        [{"image": str(p), **QUICK_SPEC, "variant": "svd"} for p in images]
    )
    sent: dict[str, dict] = {}
    deadline = time.monotonic() + 10
    while len(sent) < len(handles) and time.monotonic() < deadline:
        message = listener.get_message(timeout=1)
        if not message or message["type"] != "pmessage":
            continue
        envelope = json.loads(message["data"])
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        event = json.loads(body)
        if event.get("type") == "task-sent":
            sent[event["uuid"]] = event
    listener.close()
    for key in [*r.scan_iter("svdq.svd:*"), "svdq.svd", *(job_key(h.job_id) for h in handles)]:
        r.delete(key)
    assert set(sent) == {h.job_id for h in handles}
    for h in handles:
        assert sent[h.job_id]["name"] == "svdq.generate"
        assert sent[h.job_id]["queue"] == "svdq.svd"


def test_an_input_that_cannot_be_stored_fails_its_row_and_the_rest_go_on(tmp_path, redis_url):
    """A real storage failure (the input's key is taken by a folder in a local store): that
    row is reported with the reason, the other rows are queued, and the batch holds only them."""
    import hashlib

    from svdq.producer.bulk import BulkSubmitter
    from svdq.producer.client import Client
    from svdq.producer.manifest import iter_source
    from svdq.shared.constants import input_key
    from svdq.shared.settings import Settings
    from svdq.shared.storage import open_store

    folder = tmp_path / "photos"
    paths = [make_image(folder / f"p{i}.png", (96, 96), color=120 + i) for i in range(3)]
    settings = Settings.from_env(
        {"SVDQ_REDIS_URL": redis_url, "SVDQ_STORE": "local", "SVDQ_LOCAL_DIR": str(tmp_path / "s")}
    )
    blocked = input_key(hashlib.sha256(paths[1].read_bytes()).hexdigest(), "png")
    (tmp_path / "s" / blocked).mkdir(parents=True)
    client = Client(settings, open_store(settings))
    events: list[dict] = []
    # svd: no test worker consumes that queue; the queued jobs are removed below.
    bulk = BulkSubmitter(client.jobqueue, on_event=events.append)
    summary = bulk.run(iter_source(folder, {**QUICK_SPEC, "variant": "svd"}), str(folder))
    r = redis_lib.Redis.from_url(redis_url)
    members = [m.decode() for m in r.lrange(batch_jobs_key(summary.batch_id), 0, -1)]
    for key in [*r.scan_iter("svdq.svd:*"), "svdq.svd"]:
        r.delete(key)
    assert summary.counts["submitted"] == 2 and summary.counts["upload_failed"] == 1
    [failed] = [e for e in events if e.get("outcome") == "upload_failed"]
    assert failed["source"].endswith("p1.png") and "upload failed" in failed["reason"]
    assert len(members) == 2  # `svdq wait --batch` waits only for what was queued
    assert not list((tmp_path / "s" / blocked).parent.glob(".tmp-*"))  # nothing half-written
    assert "1 upload failed" in summary.line()


def test_a_row_repeating_another_gets_its_own_report_row(client, tmp_path, redis_url):
    """Every source has a report row: a duplicate points at the job that serves it."""
    from svdq.producer.bulk import BulkSubmitter
    from svdq.producer.manifest import iter_source
    from svdq.producer.report import report_rows

    image = make_image(tmp_path / "same.png", (96, 96), color=11)
    manifest = tmp_path / "twice.jsonl"
    row = {"image": str(image), **QUICK_SPEC, "variant": "svd"}  # svd: nothing consumes it
    manifest.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    summary = BulkSubmitter(client.jobqueue).run(iter_source(manifest), str(manifest))
    rows = list(report_rows(client.batch(summary.batch_id)))
    r = redis_lib.Redis.from_url(redis_url)
    for key in [*r.scan_iter("svdq.svd:*"), "svdq.svd"]:
        r.delete(key)
    assert [(x["source"], x["status"]) for x in rows] == [
        (f"{manifest}:1", "queued"),
        (f"{manifest}:2", "duplicate"),
    ]
    assert rows[1]["job_id"] == rows[0]["job_id"]
    assert rows[1]["reason"] == f"same content and parameters as job {rows[0]['job_id']}"
