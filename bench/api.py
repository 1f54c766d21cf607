"""What the HTTP API costs a producer, and what its event streams cost Redis.

A Redis server of its own (loopback, a free port), one S3 server (moto) and one `svdq api`
process. (a) Enqueue rate: N jobs whose input is already in S3 (`s3://…/inputs/<sha>.png`),
through POST /v1/jobs (JSON, one keep-alive session) against Client.submit in this process, one
at a time and from T threads each. (b) W concurrent SSE watchers (raw HTTP/1.1 on asyncio)
spread over K queued jobs while this process stores a running step for those jobs at a fixed
rate through Celery's own result backend (as a worker does): Redis commands per second (INFO
commandstats, summed) over a fixed window, at 0 and each W; the API's RSS; the events the
watchers received. One PSUBSCRIBE fans out, so commands/s must not grow with W.
Prints a table, writes bench/results/api.json.

    python bench/api.py [--jobs 300] [--threads 8] [--watchers 100 1000] [--window 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis as redis_lib
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.export import provenance  # noqa: E402
from svdq.producer.api.tokens import TokenStore  # noqa: E402
from svdq.producer.client import Client  # noqa: E402
from svdq.producer.services import s3_server  # noqa: E402
from svdq.shared.constants import STATE_PROGRESS, input_key  # noqa: E402
from svdq.shared.settings import Settings  # noqa: E402
from svdq.shared.storage import S3Store  # noqa: E402
from tests.integration.helpers import png_bytes  # noqa: E402

JOB = {"variant": "tiny", "width": 128, "height": 64, "num_frames": 3, "num_inference_steps": 3}
KEYS = 10  # jobs the watchers are spread over
RATE = 20.0  # running steps stored per second, over all KEYS jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commands(r: redis_lib.Redis) -> int:
    """Every command Redis has run since its start (INFO commandstats, summed)."""
    return sum(
        int(v["calls"]) for k, v in r.info("commandstats").items() if k.startswith("cmdstat_")
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def enqueue_rates(
    client: Client, url: str, token: str, image: str, n: int, threads: int
) -> dict[str, float]:
    """Jobs/s through the API and through Client.submit, serial and from `threads` threads."""
    seed = iter(range(10**9))
    out: dict[str, float] = {}

    def through_api(session: requests.Session) -> None:
        body = {**JOB, "image": image, "seed": next(seed)}
        r = session.post(f"{url}/v1/jobs", json=body, timeout=60)
        assert r.status_code == 202, r.text

    def direct() -> None:
        client.submit(image, seed=next(seed), **JOB)

    def timed(fn: Any, workers: int) -> float:
        sessions = [requests.Session() for _ in range(workers)]
        for s in sessions:
            s.headers["Authorization"] = f"Bearer {token}"
        start = time.perf_counter()
        if workers == 1:
            for _ in range(n):
                fn(sessions[0]) if fn is through_api else fn()
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda i: fn(sessions[i % workers]) if fn is through_api else fn(),
                              range(n)))  # fmt: skip
        return round(n / (time.perf_counter() - start), 1)

    timed(through_api, 1)  # warm both paths (connections, imports, scripts)
    timed(direct, 1)
    for workers in (1, threads):
        out[f"api_jobs_per_s_{workers}"] = timed(through_api, workers)
        out[f"client_jobs_per_s_{workers}"] = timed(direct, workers)
        out[f"ratio_{workers}"] = round(
            out[f"api_jobs_per_s_{workers}"] / out[f"client_jobs_per_s_{workers}"], 3
        )
    return out


async def watch(port: int, token: str, job_id: str, got: list[int], opened: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    try:
        while line := await reader.readline():
            if line.startswith(b"data: "):
                got[0] += 1
                opened.set()
    finally:
        writer.close()


async def watched_window(
    r: redis_lib.Redis,
    client: Client,
    port: int,
    token: str,
    jobs: list[str],
    watchers: int,
    window: float,
    api_pid: int,
) -> dict[str, Any]:
    """Open `watchers` streams, then measure Redis commands/s over `window` seconds while
    running steps are stored at RATE a second."""
    got = [0]
    events = [asyncio.Event() for _ in range(watchers)]
    tasks = [
        asyncio.create_task(watch(port, token, jobs[i % len(jobs)], got, events[i]))
        for i in range(watchers)
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
    await asyncio.sleep(1.0)  # every stream open and settled
    backend = client.app.backend
    step = 0
    before, received = commands(r), got[0]
    start = time.perf_counter()
    next_at = start
    while time.perf_counter() - start < window:
        step += 1
        job_id = jobs[step % len(jobs)]
        meta = {"phase": "denoise", "step": step, "steps": 10**6}
        await asyncio.to_thread(backend.store_result, job_id, meta, STATE_PROGRESS)
        next_at += 1 / RATE
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await asyncio.sleep(0.5)  # let the last events arrive
    seconds = time.perf_counter() - start
    row = {
        "watchers": watchers,
        "redis_commands_per_s": round((commands(r) - before) / seconds, 1),
        "steps_stored_per_s": round(step / seconds, 1),
        "events_received_per_s": round((got[0] - received) / seconds, 1),
        "api_rss_mb": round(rss_mb(api_pid), 1),
    }
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--watchers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--window", type=float, default=5.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1000 sockets, both ends
    rport, aport = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp, s3_server() as endpoint:
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        api_proc = None
        try:
            env = {
                **os.environ,
                "SVDQ_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
                "SVDQ_S3_ENDPOINT": endpoint,
                "SVDQ_S3_BUCKET": "bench-api",
                "SVDQ_DEFAULT_VARIANT": "tiny",
                "SVDQ_API_PORT": str(aport),
                "SVDQ_API_RATE_LIMIT": str(10**7),
                "SVDQ_API_MAX_QUEUED": str(10**7),
            }
            settings = Settings.from_env(env)
            store = S3Store(settings.s3_bucket, endpoint)
            store.ensure_bucket()
            client = Client(settings, store)
            r = redis_lib.Redis(port=rport)
            for _ in range(100):
                try:
                    r.ping()
                    break
                except redis_lib.ConnectionError:
                    time.sleep(0.05)
            token, _ = TokenStore(r).create("bench")
            data = png_bytes((96, 64))
            key = input_key(hashlib.sha256(data).hexdigest(), "png")
            store.put_bytes(key, data, "image/png")
            log = open(Path(tmp) / "api.log", "wb")  # noqa: SIM115
            api_proc = subprocess.Popen(
                [sys.executable, "-m", "svdq.producer.cli", "api"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{aport}"
            for _ in range(300):
                try:
                    if requests.get(f"{url}/healthz", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    time.sleep(0.1)
            rates = enqueue_rates(client, url, token, store.uri(key), args.jobs, args.threads)
            head = {"Authorization": f"Bearer {token}"}
            jobs = []
            for i in range(KEYS):
                body = {**JOB, "image": store.uri(key), "seed": 10**8 + i}
                got = requests.put(f"{url}/v1/jobs/watch-{i}", json=body, headers=head, timeout=30)
                assert got.status_code == 202, got.text
                jobs.append(f"watch-{i}")
            streams = [
                asyncio.run(
                    watched_window(r, client, aport, token, jobs, w, args.window, api_proc.pid)
                )
                for w in [0, *args.watchers]
            ]
        finally:
            if api_proc is not None:
                api_proc.terminate()
                api_proc.wait(20)
            redis_proc.terminate()
            redis_proc.wait(10)
    base = streams[0]["redis_commands_per_s"]
    print(f"enqueue ({args.jobs} jobs, s3:// input already stored)")
    print(f"{'':<14}{'API jobs/s':>12}{'Client jobs/s':>15}{'ratio':>8}")
    for workers in (1, args.threads):
        print(
            f"{f'{workers} thread(s)':<14}{rates[f'api_jobs_per_s_{workers}']:>12}"
            f"{rates[f'client_jobs_per_s_{workers}']:>15}{rates[f'ratio_{workers}']:>8}"
        )
    print(f"\nSSE watchers over {KEYS} jobs, {RATE:.0f} running steps stored/s")
    print(f"{'watchers':>9}{'redis cmd/s':>13}{'vs 0':>7}{'events/s':>10}{'API RSS MB':>12}")
    for row in streams:
        growth = row["redis_commands_per_s"] / base if base else 0
        row["commands_vs_no_watchers"] = round(growth, 3)
        print(
            f"{row['watchers']:>9}{row['redis_commands_per_s']:>13}{growth:>7.2f}"
            f"{row['events_received_per_s']:>10}{row['api_rss_mb']:>12}"
        )
    out = REPO / "bench" / "results" / "api.json"
    payload = {
        **provenance(),
        "args": vars(args),
        "enqueue": rates,
        "watchers": streams,
        "goals": {
            "api_vs_client_serial": ">= 0.8",
            "redis_commands_per_s": "flat in the number of watchers",
            "api_rss_mb": "< 200",
        },
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
