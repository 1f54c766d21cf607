"""Attacks on the contact sheet (`svdq report`) with a real Redis and a real S3 server (moto)
but no worker: the batch's jobs are queued by a real bulk submission, then their Celery
states and objects are forged the way someone with write access to Redis or the bucket could.
Each was either a defect found by review and since fixed, or an attack that failed: all are
regression tests now."""

from __future__ import annotations

import base64
import io
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from svdq.producer.bulk import BulkSubmitter
from svdq.producer.manifest import iter_source
from svdq.producer.sheet import write_sheet
from svdq.shared.constants import batch_key, output_key
from tests.conftest import run_svdq
from tests.integration.helpers import FAST, make_image

pytestmark = [pytest.mark.integration]


def _png(size: tuple[int, int] = (64, 48), color: int = 90) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (color, 30, 200)).save(out, format="PNG")
    return out.getvalue()


def _seed() -> int:
    return secrets.randbelow(2**31)


def _batch(client: Any, tmp_path: Path, n: int = 2, color: int = 20) -> tuple[Any, list[str]]:
    """A real bulk batch of `n` queued jobs (nobody runs them), its inputs of `color` on."""
    folder = tmp_path / "folder"
    for i in range(n):
        make_image(folder / f"img{i}.png", color=color + 40 * i)
    summary = BulkSubmitter(client.jobqueue).run(
        # A fresh seed: job ids derive from the inputs, and each test forges its own jobs.
        iter_source(folder, {**FAST, "num_frames": 3, "formats": ["mp4"], "seed": _seed()}),
        str(folder),
    )
    batch = client.batch(summary.batch_id)
    ids = [e["job_id"] for e in batch.states()]
    assert len(ids) == n
    return batch, ids


def _forge_success(client: Any, job_id: str, poster: bytes | None = b"", **extra: Any) -> None:
    """Store a SUCCESS for `job_id` whose record passes result_problem (its poster key is this
    job's own), with `poster` as the poster object's bytes and `extra` fields."""
    spec = client.jobqueue.job_spec(job_id)
    key = output_key(job_id, "poster", spec.output_prefix)
    data = _png() if poster == b"" else poster
    if data is not None:
        client.store.put_bytes(key, data, "image/png")
    record = {
        "job_id": job_id,
        "status": "succeeded",
        "spec": spec.to_dict(),
        "variant": "tiny",
        "num_frames": 3,
        "width": 64,
        "height": 48,
        "output_fps": 7,
        "seed": 1,
        "worker": "forged",
        "outputs": {"poster": {"key": key, "uri": client.store.uri(key), "bytes": 1}},
        "timings": {},
        **extra,
    }
    _store(client, job_id, record)


def _store(client: Any, job_id: str, record: dict[str, Any]) -> None:
    """Write a SUCCESS state as Celery's Redis backend would (its store_result calls a
    deprecated redis-py method, an error under this suite's warning filters)."""
    meta = {"status": "SUCCESS", "result": record, "traceback": None, "children": [],
            "date_done": "2024-01-01T00:00:00", "task_id": job_id}  # fmt: skip
    client.jobqueue.redis.set(client.jobqueue.state_key(job_id), client.app.backend.encode(meta))


def test_hostile_posters_leave_notes_not_a_failed_sheet(client: Any, tmp_path: Path) -> None:
    """A decompression bomb, a file that is no image, a truncated PNG and a poster that is
    gone: each card says why, the sheet is written (attack failed)."""
    batch, ids = _batch(client, tmp_path, 4)
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # ~50 kB, 400 Mpx
    _forge_success(client, ids[0], bomb.getvalue())
    _forge_success(client, ids[1], b"<html><script>alert(1)</script></html>")
    _forge_success(client, ids[2], _png((400, 300))[:200])
    _forge_success(client, ids[3], None)  # never stored
    out = tmp_path / "s.html"
    counts = write_sheet(out, batch, size=64)
    assert counts == {"succeeded": 4}
    html = out.read_text()
    assert html.count('<p class="note">') == 4, html
    assert "<script>alert" not in html
    assert "no longer in the store" in html


def test_scores_that_are_not_an_object_do_not_break_the_sheet(client: Any, tmp_path: Path) -> None:
    batch, ids = _batch(client, tmp_path, 2)
    _forge_success(client, ids[0], scores=[1, 2, 3])
    _forge_success(client, ids[1], scores={"motion": 0.5})
    counts = write_sheet(tmp_path / "s.html", batch, size=64)
    assert sum(counts.values()) == 2


def test_a_tampered_reject_does_not_break_the_sheet(client: Any, tmp_path: Path) -> None:
    batch, _ = _batch(client, tmp_path, 1)
    pipe = client.jobqueue.redis.pipeline()
    batch.record.add_rejects(pipe, [{"source": "x.png", "status": ["invalid"], "reason": 3}])
    pipe.execute()
    counts = write_sheet(tmp_path / "s.html", batch, size=64)
    assert sum(counts.values()) == 2


def test_a_forged_spec_cannot_embed_another_jobs_input(client: Any, tmp_path: Path) -> None:
    batch, ids = _batch(client, tmp_path, 1)
    # Another input (its own content address): the forged spec points at that object.
    _other, other_ids = _batch(client, tmp_path / "other", 1, color=130)
    # The other job's input is a distinctive picture: 3:1, so its thumbnail is 96×32.
    other_spec = client.jobqueue.job_spec(other_ids[0])
    secret_key = client.store.key_from_uri(other_spec.image)
    client.store.put_bytes(secret_key, _png((300, 100), 250), "image/png")
    spec = client.jobqueue.job_spec(ids[0]).to_dict()
    _forge_success(client, ids[0])
    record = client.jobqueue.states([ids[0]])[0]["result"]
    record["spec"] = {**spec, "image": other_spec.image}
    _store(client, ids[0], record)
    out = tmp_path / "s.html"
    write_sheet(out, batch, size=96)
    html = out.read_text()
    # The submitted input of ids[0] is make_image's 320×200, never 3:1.
    for uri in re.findall(r'class="thumb" src="data:image/jpeg;base64,([^"]+)"', html):
        size = Image.open(io.BytesIO(base64.b64decode(uri))).size
        assert size != (96, 32), "the other job's input was embedded"
    assert html.count('class="thumb" src="data:image/jpeg') == 1, "its own source is shown"


def test_a_replaced_input_object_is_not_shown_as_the_source(client: Any, tmp_path: Path) -> None:
    """Someone with write access to the bucket overwrites a job's input (inputs/<sha256>.png):
    its bytes no longer hash to its name, so the card shows a note, not that picture."""
    batch, ids = _batch(client, tmp_path, 1)
    key = client.store.key_from_uri(client.jobqueue.job_spec(ids[0]).image)
    client.store.put_bytes(key, _png((300, 100), 250), "image/png")
    out = tmp_path / "s.html"
    write_sheet(out, batch, size=96)
    html = out.read_text()
    assert 'class="thumb" src=' not in html
    assert "is not the image submitted" in html


def test_cli_errors_for_a_bad_and_an_unknown_batch(
    svdq_env: dict[str, str], tmp_path: Path
) -> None:
    """Wrong id, unknown id: exit 2 and a sentence naming the field (attack failed)."""
    bad = run_svdq(["report", "--batch", "../x", "-o", "s.html"], svdq_env, cwd=tmp_path)
    assert bad.returncode == 2 and "batch_id" in bad.stderr and "Traceback" not in bad.stderr
    unknown = run_svdq(["report", "--batch", "b-nope", "-o", "s.html"], svdq_env, cwd=tmp_path)
    assert unknown.returncode in (1, 2) and "Traceback" not in unknown.stderr, unknown.stderr
    assert "b-nope" in unknown.stderr
    assert not (tmp_path / "s.html").exists()


def test_cli_output_path_that_cannot_be_written(
    client: Any, svdq_env: dict[str, str], tmp_path: Path
) -> None:
    batch, _ = _batch(client, tmp_path, 1)
    out = tmp_path / "no" / "such" / "s.html"
    done = run_svdq(["report", "--batch", batch.batch_id, "-o", str(out)], svdq_env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(out) in done.stderr, done.stderr


def test_bulk_refuses_a_sheet_presign_before_queuing(
    client: Any, svdq_env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "f"
    make_image(folder / "a.png")
    before = set(client.jobqueue.redis.scan_iter(match=batch_key("*")))
    done = run_svdq(
        ["bulk", str(folder), "--wait", "--timeout", "3", "--report", "x.html",
         "--presign", "99999999", "--frames", "3"],
        svdq_env,
        cwd=tmp_path,
    )  # fmt: skip
    after = set(client.jobqueue.redis.scan_iter(match=batch_key("*")))
    assert done.returncode == 2 and "presign" in done.stderr, done.stderr
    assert after == before, "a batch was queued for a request that was refused"


def test_presign_zero_with_a_sheet_is_refused_by_bulk_and_wait(
    client: Any, svdq_env: dict[str, str], tmp_path: Path
) -> None:
    """Finding 11: `--presign 0` with an .html report was read as "the default" (7 days) by
    bulk and wait while `svdq report` refuses it: all three refuse it now, before queuing or
    waiting; so is a report into a folder that does not exist."""
    folder = tmp_path / "f"
    make_image(folder / "a.png")
    before = set(client.jobqueue.redis.scan_iter(match=batch_key("*")))
    for extra in (["--presign", "0"], ["--presign", "-5"]):
        done = run_svdq(
            ["bulk", str(folder), "--wait", "--timeout", "3", "--report", "x.html", *extra],
            svdq_env,
            cwd=tmp_path,
        )
        assert done.returncode == 2 and f"--presign={extra[1]}" in done.stderr, done.stderr
    missing = tmp_path / "gone" / "x.html"
    done = run_svdq(
        ["bulk", str(folder), "--wait", "--timeout", "3", "--report", str(missing)],
        svdq_env,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and str(missing) in done.stderr, done.stderr
    assert set(client.jobqueue.redis.scan_iter(match=batch_key("*"))) == before
    batch, _ = _batch(client, tmp_path, 1)
    waited = run_svdq(
        ["wait", "--batch", batch.batch_id, "--timeout", "60", "--report", "x.html",
         "--presign", "0"],
        svdq_env,
        cwd=tmp_path,
    )  # fmt: skip
    assert waited.returncode == 2 and "--presign=0" in waited.stderr, waited.stderr
    assert "Traceback" not in waited.stderr and not (tmp_path / "x.html").exists()
    report = ["report", "--batch", batch.batch_id, "-o", "x.html", "--presign", "0"]
    refused = run_svdq(report, svdq_env, cwd=tmp_path)
    assert refused.returncode == 2 and "--presign=0" in refused.stderr, refused.stderr


@pytest.mark.slow  # 2,000 rows through Redis and the sheet: ~20 s
def test_thousands_of_rows_stream(client: Any, tmp_path: Path) -> None:
    """2,000 forged jobs whose records are gone: the sheet is written in bounded time
    (prints the time; the cards go to a temporary file, not memory)."""
    batch, _ = _batch(client, tmp_path, 1)
    redis = client.jobqueue.redis
    pipe = redis.pipeline()
    batch.record.add_jobs(pipe, [(f"syn-{i:05d}", f"<b>{i}</b>.png") for i in range(2000)])
    pipe.execute()
    started = time.monotonic()
    out = tmp_path / "big.html"
    counts = write_sheet(out, batch, size=32)
    took = time.monotonic() - started
    print(f"2001-row sheet: {took:.1f}s, {out.stat().st_size:,} bytes, {counts}")
    assert sum(counts.values()) == 2001
    assert out.read_text().count('<article class="card"') == 2001
    assert took < 120


def test_tampered_batch_record_is_a_sentence(
    client: Any, svdq_env: dict[str, str], tmp_path: Path
) -> None:
    """A batch hash whose created_at is not a number: no traceback."""
    batch, _ = _batch(client, tmp_path, 1)
    client.jobqueue.redis.hset(batch_key(batch.batch_id), "created_at", "yesterday")
    done = run_svdq(["report", "--batch", batch.batch_id, "-o", "s.html"], svdq_env, cwd=tmp_path)
    assert "Traceback" not in done.stderr and "created_at" in done.stderr, done.stderr
