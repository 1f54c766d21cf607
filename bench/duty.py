"""How busy a worker keeps its GPU: the scheduling, not the CPU (issue 15).

One real worker (Celery, prefork, real Redis, real S3 uploads to a moto server, the real
encoders) whose pipeline is a stand-in GPU (bench/duty_gpu.py): it sleeps for the job's GPU
seconds, holding no CPU, and returns a clip of the job's size. For each case (GPU seconds per
job x output formats) all its jobs are queued at once, and the stand-in's own record of when it
ran gives the duty cycle:

    duty = seconds the stand-in ran / (end of its last run - start of its first run)

that is, the share of the time the GPU is busy while there is always a next job waiting (the
steady state of a full queue; the last job's encode and upload after the GPU's last run are
outside the window in both designs). The worker's own `svdq_gpu_busy_seconds_total` over the
same window is printed beside it (the production metric, measured around the pipeline call).

Each case runs twice in the same run, on two workers started one after the other: "overlap
off" (SVDQ_OVERLAP=1, prefork: encode, upload and the next job's fetch run after the GPU phase,
one after the other) and "overlap on" (SVDQ_OVERLAP=2, threads pool: the next job is fetched,
fitted and on the GPU while the last one encodes and uploads, worker/overlap.py).

    python bench/duty.py [--short-jobs 6] [--long-jobs 3] [--size 1024x576] [--frames 25]

Goal (issue 15): >= 0.99 with overlap on for 2 s jobs. Writes bench/results/duty.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.duty_gpu import SECONDS_KEY  # noqa: E402
from bench.export import provenance, write_report  # noqa: E402
from svdq.producer.client import Client  # noqa: E402
from svdq.producer.services import free_port, redis_server, s3_server  # noqa: E402
from svdq.shared.settings import Settings  # noqa: E402
from svdq.shared.storage import S3Store  # noqa: E402
from tests.integration.helpers import make_image  # noqa: E402

MODES = {"overlap_off": "1", "overlap_on": "2"}  # column -> SVDQ_OVERLAP
GOAL = 0.99
PHASES = ("fetch", "preprocess", "encode", "upload")


def scrape_busy(port: int) -> float:
    """The worker's svdq_gpu_busy_seconds_total."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "svdq_gpu_busy_seconds_total":
                return float(s.value)
    raise RuntimeError("the worker does not export svdq_gpu_busy_seconds_total")


def runs(log: Path, job_ids: set[str]) -> list[tuple[float, float]]:
    """(start, end) of the stand-in GPU's runs for these jobs, from its log."""
    entries = [json.loads(line) for line in log.read_text().splitlines() if line]
    return sorted((e["start"], e["end"]) for e in entries if e["job_id"] in job_ids)


class Worker:
    """`svdq worker --gpus none --variant tiny` with the stand-in GPU (bench.duty_gpu)."""

    def __init__(self, env: dict[str, str], log: Path, metrics_port: int) -> None:
        self.log = log
        argv = [sys.executable, "-m", "bench.duty_gpu", "worker", "--gpus", "none"]
        argv += ["--variant", "tiny", "--name", "duty@%h"]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,  # with overlap a supervisor runs it: stop the group
            )
        deadline = time.monotonic() + 120
        while b"ready." not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        # "ready." is the parent's; the pool child serves /metrics once its runtime is up.
        while True:
            try:
                scrape_busy(metrics_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"no worker metrics:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def run_case(
    client: Client,
    images: Path,
    gpu_log: Path,
    metrics_port: int,
    case: dict[str, Any],
    job: dict[str, Any],
) -> dict[str, Any]:
    """Queue the case's jobs at once, wait for all, and measure the stand-in's duty cycle."""
    gpu_s, formats, count = case["gpu_seconds"], case["formats"], case["jobs"]
    tag = f"{case.get('name', 'case')}-{round(gpu_s * 1000)}ms-{'-'.join(formats)}"
    tag += f"-{case.get('mode', '')}"
    busy_before = scrape_busy(metrics_port)
    submitted = datetime.now(UTC)
    handles = [
        client.submit(
            str(make_image(images / f"{tag}-{i}.png", (1280, 720), color=7 * i)),
            seed=i,
            job_id=f"{tag}-{i}",  # each case's own jobs: none is already done
            formats=list(formats),
            metadata={SECONDS_KEY: gpu_s},
            **job,
        )
        for i in range(count)
    ]
    ids = [h.job_id for h in handles]
    # Poll slowly: every status read is CPU the worker's encoders would use.
    records = client.wait(ids, timeout=count * (gpu_s + 60) + 120, poll=2.0)
    busy_after = scrape_busy(metrics_port)
    spans = runs(gpu_log, set(ids))
    if len(spans) != count:
        raise RuntimeError(f"{tag}: the stand-in GPU ran {len(spans)} times for {count} jobs")
    window = spans[-1][1] - spans[0][0]
    busy = sum(end - start for start, end in spans)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    finished = max(datetime.fromisoformat(r["finished_at"]) for r in records.values())
    phases = {
        p: round(statistics.median(r["timings"][p] for r in records.values()), 3) for p in PHASES
    }
    return {
        **case,
        "duty": round(busy / window, 4),
        "worker_busy_metric_over_window": round((busy_after - busy_before) / window, 4),
        "gpu_busy_s": round(busy, 3),
        "window_s": round(window, 3),
        "idle_between_runs_median_s": round(statistics.median(gaps), 3) if gaps else 0.0,
        "end_to_end_s": round((finished - submitted).total_seconds(), 3),
        "median_phase_s": phases,
    }


def run_mode(
    client: Client,
    env: dict[str, str],
    tmp: Path,
    mode: str,
    cases: list[dict[str, Any]],
    job: dict[str, Any],
) -> list[dict[str, Any]]:
    """Every case on a fresh worker with this mode's SVDQ_OVERLAP, after one warm-up job."""
    metrics_port, gpu_log = int(env["SVDQ_METRICS_PORT"]), Path(env["DUTY_GPU_LOG"])
    worker = Worker(env, tmp / f"worker-{mode}.log", metrics_port)
    try:
        # Not measured: the stand-in makes its clip, the encoders and S3 client warm up.
        warm = {"name": "warm", "mode": mode, "gpu_seconds": 0.5, "formats": ("mp4", "gif")}
        run_case(client, tmp, gpu_log, metrics_port, {**warm, "jobs": 1}, job)
        return [
            run_case(client, tmp, gpu_log, metrics_port, {**c, "mode": mode}, job) for c in cases
        ]
    except Exception:
        print(worker.log.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        worker.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", type=float, default=2.0, help="GPU seconds of a short job")
    parser.add_argument("--long", type=float, default=20.0, help="GPU seconds of a long job")
    parser.add_argument("--short-jobs", type=int, default=6)
    parser.add_argument("--long-jobs", type=int, default=3)
    parser.add_argument("--size", default="1024x576", help="WxH, multiples of 64")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--steps", type=int, default=25, help="step callbacks per run")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "duty.json"))
    args = parser.parse_args()
    if min(args.short_jobs, args.long_jobs) < 2:
        parser.error("--short-jobs and --long-jobs must be at least 2: a duty cycle needs a gap")
    width, height = (int(v) for v in args.size.split("x"))
    job = {
        "variant": "tiny",
        "width": width,
        "height": height,
        "num_frames": args.frames,
        "num_inference_steps": args.steps,
    }
    cases = [
        {"gpu_seconds": seconds, "formats": formats, "jobs": jobs}
        for seconds, jobs in ((args.short, args.short_jobs), (args.long, args.long_jobs))
        for formats in (("mp4",), ("mp4", "gif"))
    ]
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server(f"redis://127.0.0.1:{free_port()}/0") as redis_url,
        s3_server() as endpoint,
    ):
        metrics_port = free_port()
        gpu_log = Path(tmp) / "gpu.jsonl"
        env = {
            **os.environ,
            "SVDQ_REDIS_URL": redis_url,
            "SVDQ_STORE": "s3",
            "SVDQ_S3_ENDPOINT": endpoint,
            "SVDQ_S3_BUCKET": "svdq-duty",
            "SVDQ_MODEL_DIR": str(Path(tmp) / "models"),
            "SVDQ_DEFAULT_VARIANT": "tiny",
            "SVDQ_METRICS_PORT": str(metrics_port),
            "SVDQ_GPU_INDEX": "0",  # metrics on SVDQ_METRICS_PORT + 0
            "DUTY_GPU_LOG": str(gpu_log),
        }
        settings = Settings.from_env(env)
        store = S3Store(settings.s3_bucket, endpoint)
        store.ensure_bucket()
        client = Client(settings, store)
        measured: dict[str, list[dict[str, Any]]] = {}
        for mode, overlap in MODES.items():
            measured[mode] = run_mode(
                client, {**env, "SVDQ_OVERLAP": overlap}, Path(tmp), mode, cases, job
            )
    rows = [
        {
            **{k: v for k, v in off.items() if k not in ("mode", "duty")},
            "duty_overlap_off": off["duty"],
            "duty_overlap_on": on["duty"],
            "overlap_off": off,
            "overlap_on": on,
        }
        for off, on in zip(measured["overlap_off"], measured["overlap_on"], strict=True)
    ]
    report = {
        "benchmark": "duty",
        "what": "share of wall time the stand-in GPU is busy while jobs are always waiting",
        "job": job,
        "goal_overlap_on_short_jobs": GOAL,
        "cases": rows,
        "run_s": round(time.monotonic() - started, 1),
        # Other work on the host slows the CPU side (encode, upload) and so the duty cycle.
        "load_average_1_5_15m": [round(v, 2) for v in os.getloadavg()],
        **provenance(),
    }
    print(
        f"{'GPU s/job':>9}  {'formats':<9}{'jobs':>5}{'overlap off':>13}{'overlap on':>12}"
        f"{'metric off/on':>15}{'idle/job off/on':>18}   median encode / upload / fetch+fit"
    )
    for r in rows:
        off, on, p = r["overlap_off"], r["overlap_on"], r["overlap_off"]["median_phase_s"]
        print(
            f"{r['gpu_seconds']:>9g}  {'+'.join(r['formats']):<9}{r['jobs']:>5}"
            f"{r['duty_overlap_off']:>13.3f}{r['duty_overlap_on']:>12.3f}"
            f"{off['worker_busy_metric_over_window']:>8.3f}/{on['worker_busy_metric_over_window']:.3f}"
            f"{off['idle_between_runs_median_s']:>10.2f}/{on['idle_between_runs_median_s']:.2f}s"
            f"   {p['encode']:.2f} / {p['upload']:.2f} / {p['fetch'] + p['preprocess']:.2f} s"
        )
    short = [r["duty_overlap_on"] for r in rows if r["gpu_seconds"] == args.short]
    met = "met" if short and min(short) >= GOAL else "NOT met"
    print(f"goal: overlap on >= {GOAL} for {args.short:g} s jobs: {met}")
    print(f"run took {report['run_s']} s")
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
