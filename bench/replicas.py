"""What SVDQ_REDIS_MIN_REPLICAS costs the producer: enqueue rate with and without it.

A real master and replica (and three sentinels) on loopback (tests/fixtures/redisha.py), one
S3 server (moto). For each setting (MIN_REPLICAS 0 and 1; through the sentinels): (a) `svdq
bulk` of N jobs whose input is already in S3 (BulkSubmitter; one WAIT per chunk of
messages, one per chunk of records), (b) M single submits (Client.enqueue; one WAIT each).
Prints a table, writes bench/results/replicas.json.

    python bench/replicas.py [--jobs 5000] [--singles 300]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bulk import JOB  # noqa: E402
from bench.export import provenance  # noqa: E402
from svdq.producer.bulk import BulkSubmitter  # noqa: E402
from svdq.producer.client import Client  # noqa: E402
from svdq.producer.manifest import iter_source  # noqa: E402
from svdq.producer.services import s3_server  # noqa: E402
from svdq.shared.constants import input_key  # noqa: E402
from svdq.shared.jobid import finalize  # noqa: E402
from svdq.shared.settings import Settings  # noqa: E402
from svdq.shared.spec import JobSpec  # noqa: E402
from svdq.shared.storage import S3Store  # noqa: E402
from tests.fixtures.redisha import RedisHA  # noqa: E402
from tests.integration.helpers import png_bytes  # noqa: E402


def rates(ha: RedisHA, endpoint: str, min_replicas: int, n: int, m: int, work: Path) -> dict:
    """Jobs per second for bulk and for single submits, at `min_replicas`."""
    ha.client(ha.master()).flushdb()
    env = ha.env(
        SVDQ_REDIS_MIN_REPLICAS=str(min_replicas),
        SVDQ_S3_ENDPOINT=endpoint,
        SVDQ_S3_BUCKET=f"bench-replicas-{min_replicas}",
        SVDQ_DEFAULT_VARIANT="tiny",
    )
    settings = Settings.from_env(env)
    store = S3Store(settings.s3_bucket, endpoint)
    store.ensure_bucket()
    client = Client(settings, store)
    data = png_bytes((96, 64))
    sha = hashlib.sha256(data).hexdigest()
    key = input_key(sha, "png")
    store.put_bytes(key, data, "image/png")
    manifest = work / f"m{min_replicas}.jsonl"
    manifest.write_text(
        "".join(json.dumps({"image": store.uri(key), "seed": i}) + "\n" for i in range(n))
    )
    start = time.perf_counter()
    summary = BulkSubmitter(client.jobqueue).run(iter_source(manifest, JOB), str(manifest))
    bulk_s = time.perf_counter() - start
    assert summary.counts["submitted"] == n, summary.counts
    specs = [
        finalize(JobSpec.from_dict({"image": store.uri(key), "seed": n + i, **JOB}), sha)
        for i in range(m)
    ]
    start = time.perf_counter()
    for spec in specs:
        client.enqueue(spec)
    single_s = time.perf_counter() - start
    return {"bulk_jobs_per_s": round(n / bulk_s, 1), "single_jobs_per_s": round(m / single_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--singles", type=int, default=300)
    args = parser.parse_args()
    results = {}
    ha = RedisHA().start()
    try:
        with s3_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
            for k in (0, 1):
                results[k] = rates(ha, endpoint, k, args.jobs, args.singles, Path(tmp))
    finally:
        ha.stop()
    print(f"{'MIN_REPLICAS':<14}{'bulk jobs/s':>13}{'single jobs/s':>15}")
    for k, row in results.items():
        print(f"{k:<14}{row['bulk_jobs_per_s']:>13}{row['single_jobs_per_s']:>15}")
    cost = {
        "bulk": round(results[1]["bulk_jobs_per_s"] / results[0]["bulk_jobs_per_s"], 3),
        "single": round(results[1]["single_jobs_per_s"] / results[0]["single_jobs_per_s"], 3),
    }
    print(f"rate with MIN_REPLICAS=1 / without: bulk {cost['bulk']}, single {cost['single']}")
    out = REPO / "bench" / "results" / "replicas.json"
    payload = {**provenance(), "args": vars(args), "results": results, "ratio": cost}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
