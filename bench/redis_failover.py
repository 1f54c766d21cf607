"""How long the fleet stalls when the Redis master dies, and whether any queued job is lost.

A real master, replica and three sentinels on loopback (tests/fixtures/redisha.py), one real
worker (`svdq worker --gpus none`, tiny model), and a producer submitting two jobs at a time
with SVDQ_REDIS_MIN_REPLICAS=1. After `--before` seconds the master is SIGKILLed; the
sentinels promote the replica; once they agree the killed server is started again on its port
(a repaired host: the sentinels make it the new master's replica, so MIN_REPLICAS=1 can be met
again). The producer and the worker are left to reconnect on their own.

Measured, from the kill: the sentinels' failover; the producer's stall (first submit
acknowledged again); the fleet's stall (first job finished again); and every job the producer
was told is queued must end succeeded. Prints a table, writes bench/results/redis_failover.json.

    python bench/redis_failover.py [--before 4] [--after-jobs 6]

Goal (issue 11): the fleet's stall on a Redis failover ≤ 30 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.export import provenance  # noqa: E402
from tests.fixtures.redisha import RedisHA  # noqa: E402

JOB = {"variant": "tiny", "num_frames": 2, "num_inference_steps": 1, "width": 64, "height": 64}

# Short limits, so a job cut off by the master's death comes back in seconds, not hours.
FAILOVER_ENV = {
    "SVDQ_REDIS_MIN_REPLICAS": "1",
    "SVDQ_REDIS_WAIT_TIMEOUT": "1",
    "SVDQ_VISIBILITY_TIMEOUT": "20",
    "SVDQ_TASK_TIME_LIMIT": "15",
    "SVDQ_RESTORE_INTERVAL": "1",
    "SVDQ_LEASE_TTL": "3",
    "SVDQ_RETRY_BACKOFF": "1",
    "SVDQ_RETRY_BACKOFF_MAX": "2",
}


class Producer(threading.Thread):
    """Submits two jobs at a time until stopped; keeps the ids it was told are queued, the
    time of each acknowledged submit, and the errors of the ones that failed."""

    def __init__(self, client: Any, image: str, pause_s: float) -> None:
        super().__init__(daemon=True)
        self.client, self.image, self.pause_s = client, image, pause_s
        self.queued: list[str] = []
        self.acked_at: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        seed = 0
        while not self.stop.is_set():
            seed += 2
            specs = [{"image": self.image, "seed": seed + i, **JOB} for i in range(2)]
            try:
                handles = self.client.submit_many(specs)
            except Exception as exc:  # the failover: the next call reconnects on its own
                self.errors.append((time.time(), f"{type(exc).__name__}: {exc}"[:200]))
                time.sleep(0.2)
                continue
            self.queued += [h.job_id for h in handles if not h.skipped]
            self.acked_at.append(time.time())
            time.sleep(self.pause_s)


def measure_failover(
    ha: RedisHA, client: Any, image: str, before_s: float = 4.0, after_jobs: int = 6,
    timeout_s: float = 150.0, pause_s: float = 0.3,
) -> dict[str, Any]:  # fmt: skip
    """Run the scenario against `ha` (started) with a worker consuming, submitting through
    `client` (a Client on ha's URL with SVDQ_REDIS_MIN_REPLICAS=1), two jobs every `pause_s`
    seconds; return the figures."""
    producer = Producer(client, image, pause_s)
    producer.start()
    time.sleep(before_s)
    killed = ha.kill_master()
    killed_at = time.time()
    failover_s = ha.wait_new_master(killed)
    ha.restart(killed)  # the repaired host comes back as a replica
    deadline = time.monotonic() + timeout_s
    while sum(t > killed_at for t in producer.acked_at) < after_jobs // 2:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    producer.stop.set()
    producer.join(30)
    states = _final(client, producer.queued, deadline)
    ended = sorted(_epoch(s["result"]["finished_at"]) for s in states.values() if s.get("result"))
    after = [t for t in ended if t > killed_at]
    acked_after = [t for t in producer.acked_at if t > killed_at]
    lost = {j: s["state"] for j, s in states.items() if s["state"] != "succeeded"}
    return {
        "failover_s": round(failover_s, 2),
        "producer_stall_s": round(acked_after[0] - killed_at, 2) if acked_after else None,
        "fleet_stall_s": round(after[0] - killed_at, 2) if after else None,
        "jobs_queued": len(producer.queued),
        "jobs_queued_before_kill": sum(t <= killed_at for t in producer.acked_at) * 2,
        "submits_failed": len(producer.errors),
        "submit_errors": sorted({e for _, e in producer.errors})[:5],
        "not_succeeded": lost,
    }


def _final(client: Any, job_ids: list[str], deadline: float) -> dict[str, dict[str, Any]]:
    while True:
        states = {j: client.status(j) for j in job_ids}
        done = all(s["state"] in ("succeeded", "failed") for s in states.values())
        if done or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def _epoch(iso: str) -> float:
    moment = datetime.fromisoformat(iso)
    return moment.timestamp()


def run(before: float = 4.0, after_jobs: int = 6) -> dict[str, Any]:
    """The whole scenario on its own HA set, worker and S3 server; the figures as a dict."""
    from svdq.producer.client import Client
    from svdq.producer.services import s3_server
    from svdq.shared.settings import Settings
    from svdq.shared.storage import S3Store
    from tests.integration.helpers import make_image

    folder = Path(tempfile.mkdtemp(prefix="svdq-bench-failover-"))
    image = str(make_image(folder / "in.png", (128, 64)))
    ha = RedisHA().start()
    worker = None
    try:
        with s3_server() as endpoint:
            env = {
                **ha.env(**FAILOVER_ENV),
                "SVDQ_S3_ENDPOINT": endpoint,
                "SVDQ_S3_BUCKET": "svdq-bench",
                "SVDQ_MODEL_DIR": str(folder / "models"),
            }
            settings = Settings.from_env(env)
            S3Store(settings.s3_bucket, endpoint).ensure_bucket()
            worker = _start_worker(env, folder / "worker.log")
            client = Client(settings)
            return measure_failover(ha, client, image, before, after_jobs)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        ha.stop()


def table(row: dict[str, Any]) -> str:
    """The figures as the two-line table both bench scripts print."""
    head = f"{'failover':>10}{'producer stall':>16}{'fleet stall':>13}{'queued':>8}{'lost':>6}"
    line = (
        f"{row['failover_s']:>9}s{row['producer_stall_s']:>15}s{row['fleet_stall_s']:>12}s"
        f"{row['jobs_queued']:>8}{len(row['not_succeeded']):>6}"
    )
    return f"{head}\n{line}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=float, default=4.0, help="seconds before the kill")
    parser.add_argument("--after-jobs", type=int, default=6, help="jobs to queue after it")
    args = parser.parse_args()
    row = run(args.before, args.after_jobs)
    print(table(row))
    out = REPO / "bench" / "results" / "redis_failover.json"
    out.write_text(json.dumps({**provenance(), "args": vars(args), **row}, indent=2) + "\n")
    print(f"wrote {out}")


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    import os

    cmd = [sys.executable, "-m", "svdq.producer.cli", "worker", "--gpus", "none"]
    cmd += ["--variant", "tiny", "--name", "failover@%h"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    deadline = time.monotonic() + 120
    while "ready." not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.3)
    return proc


if __name__ == "__main__":
    main()
