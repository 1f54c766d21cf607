"""How fast `svdq bulk` gets jobs into the queue. No generation: no worker runs.

(a) enqueue only: N jobs whose input is already in S3 (an s3:// manifest of inputs/<sha>.png
    rows with distinct seeds), `svdq bulk` (BulkSubmitter) vs a naive loop of one
    `send_task` per job, and bulk without Celery's task-sent event per job. Target >= 5x.
(b) upload-bound: M small local images, `svdq bulk` on the folder vs the naive loop (upload
    one, send one: Client.submit) vs the S3 server's own ceiling (the same PUTs from 8 threads,
    nothing else). Target >= 90 % of the ceiling.

One Redis (a redis-server started here) and one S3 server (moto) for the whole run; each
measurement gets an empty Redis DB and its own bucket. Prints a table, writes
bench/results/bulk.json.

    python bench/bulk.py [--jobs 10000] [--images 2000] [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from svdq.producer.bulk import BulkSubmitter  # noqa: E402
from svdq.producer.client import Client  # noqa: E402
from svdq.producer.manifest import iter_source  # noqa: E402
from svdq.producer.services import free_port, redis_server, s3_server  # noqa: E402
from svdq.shared.celery_app import celery_priority  # noqa: E402
from svdq.shared.constants import TASK_GENERATE, input_key, queue_for  # noqa: E402
from svdq.shared.jobid import finalize  # noqa: E402
from svdq.shared.settings import Settings  # noqa: E402
from svdq.shared.spec import JobSpec  # noqa: E402
from svdq.shared.storage import S3Store  # noqa: E402
from tests.integration.helpers import png_bytes  # noqa: E402

JOB = {"variant": "tiny", "width": 128, "height": 64, "num_inference_steps": 3}


def setup(endpoint: str, redis_url: str, db: int, bucket: str) -> Client:
    """A client on an empty Redis DB and a fresh bucket."""
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    env = {
        **os.environ,
        "SVDQ_REDIS_URL": url,
        "SVDQ_STORE": "s3",
        "SVDQ_S3_ENDPOINT": endpoint,
        "SVDQ_S3_BUCKET": bucket,
        "SVDQ_DEFAULT_VARIANT": "tiny",
    }
    store = S3Store(bucket, endpoint)
    store.ensure_bucket()
    return Client(Settings.from_env(env), store)


def queued(client: Client) -> int:
    r = client.app.backend.client
    return sum(int(r.llen(k)) for k in r.scan_iter("svdq.tiny*") if r.type(k) == b"list")


def enqueue_only(endpoint: str, redis_url: str, n: int, workdir: Path) -> dict[str, float]:
    """(a): bulk vs one send_task per job, same s3:// rows."""
    import hashlib

    data = png_bytes((96, 64))
    sha = hashlib.sha256(data).hexdigest()
    results: dict[str, float] = {}
    manifest = workdir / "s3.jsonl"
    for name, db in (("naive", 1), ("bulk", 2), ("bulk_no_sent_events", 6)):
        client = setup(endpoint, redis_url, db, f"bench-enq-{name.replace('_', '-')}")
        key = input_key(sha, "png")
        client.store.put_bytes(key, data, "image/png")
        uri = client.store.uri(key)
        with manifest.open("w") as fh:
            for i in range(n):
                fh.write(json.dumps({"image": uri, "seed": i}) + "\n")
        start = time.perf_counter()
        if name == "naive":
            for row in iter_source(manifest, JOB):
                assert row.data
                spec = finalize(JobSpec.from_dict(row.data), sha)
                client.app.send_task(
                    TASK_GENERATE,
                    args=[spec.to_dict()],
                    task_id=spec.job_id,
                    queue=queue_for("tiny"),
                    priority=celery_priority(spec.priority),
                )
        else:
            bulk = BulkSubmitter(client.jobqueue, sent_events=False if name != "bulk" else None)
            summary = bulk.run(iter_source(manifest, JOB), str(manifest))
            assert summary.counts["submitted"] == n, summary.counts
        seconds = time.perf_counter() - start
        assert queued(client) == n, (name, queued(client))
        results[name] = n / seconds
    return results


def upload_bound(
    endpoint: str, redis_url: str, m: int, threads: int, workdir: Path
) -> dict[str, float]:
    """(b): bulk on a folder vs upload-one-send-one vs bare PUTs from a thread pool."""
    from PIL import Image

    results: dict[str, float] = {}
    for name, db in (("ceiling", 3), ("naive", 4), ("bulk", 5)):
        folder = workdir / name
        folder.mkdir()
        for i in range(m):  # distinct small images per run, so nothing is skipped
            Image.new("RGB", (64, 64), (i % 256, (i // 256) % 256, hash(name) % 256)).save(
                folder / f"{i:05d}.png"
            )
        paths = sorted(folder.iterdir())
        client = setup(endpoint, redis_url, db, f"bench-up-{name}")
        start = time.perf_counter()
        if name == "ceiling":
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda p, s=client.store: put(s, p), paths))
        elif name == "naive":
            for path in paths:
                client.submit(str(path), **JOB)
        else:
            bulk = BulkSubmitter(client.jobqueue, threads=threads)
            summary = bulk.run(iter_source(folder, JOB), str(folder))
            assert summary.counts["submitted"] == m, summary.counts
        results[name] = m / (time.perf_counter() - start)
        if name != "ceiling":
            assert queued(client) == m
    return results


def put(store: S3Store, path: Path) -> None:
    """One bare PUT: what the S3 server's ceiling is made of."""
    store.put_bytes(f"ceiling/{path.name}", path.read_bytes(), "image/png")


def main() -> int:
    """Run both measurements, print the table, write bench/results/bulk.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs for (a) enqueue only")
    ap.add_argument("--images", type=int, default=2_000, help="images for (b) upload-bound")
    ap.add_argument("--threads", type=int, default=8, help="upload threads (bulk and ceiling)")
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "svdq-local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "svdq-local")
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server(f"redis://127.0.0.1:{free_port()}/0") as redis_url,
        s3_server() as endpoint,
    ):
        a = enqueue_only(endpoint, redis_url, args.jobs, Path(tmp))
        b = upload_bound(endpoint, redis_url, args.images, args.threads, Path(tmp))
    rows = [
        ("(a) enqueue only", f"{args.jobs:,} jobs", "naive send_task loop", a["naive"]),
        ("", "", "svdq bulk", a["bulk"]),
        ("", "", "svdq bulk --no-sent-events", a["bulk_no_sent_events"]),
        ("(b) upload-bound", f"{args.images:,} images", "naive upload+send loop", b["naive"]),
        ("", "", f"S3 ceiling ({args.threads} threads, PUT only)", b["ceiling"]),
        ("", "", "svdq bulk", b["bulk"]),
    ]
    print(f"{'case':18} {'size':14} {'method':36} {'jobs/s':>9}")
    for case, size, method, rate in rows:
        print(f"{case:18} {size:14} {method:36} {rate:9.1f}")
    speedup = a["bulk"] / a["naive"]
    of_ceiling = b["bulk"] / b["ceiling"]
    quiet = a["bulk_no_sent_events"] / a["naive"]
    print(
        f"\n(a) bulk / naive = {speedup:.1f}x (target >= 5x); without task-sent events {quiet:.1f}x"
    )
    print(
        f"(b) bulk / S3 ceiling = {of_ceiling:.0%} (target >= 90 %); bulk / naive = "
        f"{b['bulk'] / b['naive']:.1f}x"
    )
    out = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "args": vars(args),
        "enqueue_only_jobs_per_s": a,
        "upload_bound_jobs_per_s": b,
        "enqueue_speedup": round(speedup, 2),
        "enqueue_speedup_no_sent_events": round(quiet, 2),
        "upload_fraction_of_ceiling": round(of_ceiling, 3),
    }
    target = REPO / "bench" / "results" / "bulk.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
