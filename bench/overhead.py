"""What svdq costs over a bare loop, and how fast the GIF encoder is.

(a) bare loop: the tiny pipeline loaded once; for each image call it, export MP4, upload to
    the S3 server. (b) svdq: the same images submitted through Redis to one real worker
    (which also writes the poster and result.json). Both run against the same Redis and the
    same S3 server in one run, alternating in rounds (--rounds) so that the shared machine's
    drifting load falls on both. Prints a table, writes bench/results/overhead.json, with
    where the worker's time went (seconds per phase, the median idle gap between jobs).

    python bench/overhead.py [--images 20] [--size 128x64] [--steps 4] [--rounds 5]

Target: (a)/(b) >= 0.97. GIF: ours vs Pillow's default save of the same frames, target >= 5x.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from svdq.producer.client import Client  # noqa: E402
from svdq.producer.services import redis_server, s3_server  # noqa: E402
from svdq.shared.images import fit, to_rgb  # noqa: E402
from svdq.shared.settings import Settings  # noqa: E402
from svdq.shared.spec import JobSpec  # noqa: E402
from svdq.shared.storage import S3Store  # noqa: E402
from tests.integration.helpers import make_image  # noqa: E402


class BareLoop:
    """(a): the tiny pipeline loaded once (not timed); per image: call, export MP4, upload."""

    def __init__(self, settings: Settings, store: S3Store, job: dict) -> None:
        from svdq.worker.models import load_model
        from svdq.worker.profiles import choose_profile

        self.store, self.job = store, job
        self.model = load_model(settings, choose_profile(None, "tiny"))
        self.generate_s = 0.0  # seconds inside the pipeline call (denoise + decode)

    def one(self, i: int, path: Path) -> None:
        from PIL import Image

        from svdq.worker import engine, export

        spec = JobSpec.from_dict({"image": str(path), "seed": i, "job_id": f"b{i}", **self.job})
        image = fit(to_rgb(Image.open(path)), spec.width, spec.height, spec.resize)
        frames, timings = engine.generate(
            self.model, spec, image, engine.params_for(spec, self.model)
        )
        self.generate_s += timings["denoise"] + timings["decode"]
        blob = export.encode_mp4(export.to_uint8(frames), spec.fps)
        self.store.put_bytes(f"bench/bare/{i}.mp4", blob, "video/mp4")

    def run(self, items: list[tuple[int, Path]]) -> float:
        start = time.perf_counter()
        for i, path in items:
            self.one(i, path)
        return time.perf_counter() - start


class Svdq:
    """(b): one real worker (`svdq worker --gpus none`), fed through Redis by a Client."""

    def __init__(self, env: dict[str, str], settings: Settings, store: S3Store, job: dict):
        self.log = open(Path(tempfile.mkdtemp()) / "worker.log", "wb")  # noqa: SIM115
        argv = [sys.executable, "-m", "svdq.producer.cli", "worker", "--gpus", "none"]
        argv += ["--variant", "tiny", "--name", "bench@%h"]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO
        )
        self.client, self.job = Client(settings, store), job
        self.records: list[dict] = []

    def run(self, items: list[tuple[int, Path]]) -> float:
        """Submit every image, wait for all: first submit to the last result.json written."""
        start = datetime.now(UTC)
        handles = [self.client.submit(str(p), seed=i, **self.job) for i, p in items]
        # Poll slowly and take the end time from the records (the moment the last result.json
        # was written), so polling never adds to (b). On 2 cores every status poll steals CPU
        # from the worker's torch threads, and a producer would not run on a GPU host anyway.
        results = self.client.wait([h.job_id for h in handles], timeout=1800, poll=3.0)
        self.records += results.values()
        end = max(datetime.fromisoformat(r["finished_at"]) for r in results.values())
        return (end - start).total_seconds()

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def where_svdq_time_goes(records: list[dict]) -> dict[str, float]:
    """Seconds per phase summed over the worker's records, and the idle gaps between jobs."""
    phases: dict[str, float] = {}
    for record in records:
        for name, seconds in record["timings"].items():
            phases[name] = round(phases.get(name, 0.0) + seconds, 3)
    ordered = sorted(records, key=lambda r: r["started_at"])
    gaps = [
        (datetime.fromisoformat(b["started_at"]) - datetime.fromisoformat(a["finished_at"]))
        for a, b in itertools.pairwise(ordered)
    ]
    small = [g.total_seconds() for g in gaps if g.total_seconds() < 1.0]  # within a round
    phases["between_jobs_median"] = round(sorted(small)[len(small) // 2], 4) if small else 0.0
    return phases


def gif_comparison(job: dict) -> dict:
    from bench.export import bench_gif

    rng = np.random.default_rng(0)
    out = {}
    for frames, w, h in ((25, 1024, 576), (14, 256, 256)):
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, None, :, None]
        shift = np.arange(frames, dtype=np.float32)[:, None, None, None] * 6
        video = (ramp + shift + rng.normal(0, 8, (frames, h, w, 3))) % 256
        out[f"{frames}x{w}x{h}"] = bench_gif(video.astype(np.uint8), 7)
    return out


def main() -> int:
    from bench.export import provenance, write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", default="128x64", help="WxH, multiples of 64")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternate (a) and (b) this many times"
    )
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    job = {
        "variant": "tiny",
        "width": width,
        "height": height,
        "num_inference_steps": args.steps,
        "formats": ["mp4"],
    }

    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server("redis://127.0.0.1:6379/12") as redis_url,
        s3_server() as endpoint,
    ):
        model_dir = Path(tmp) / "models"
        env = {
            **os.environ,
            "SVDQ_REDIS_URL": redis_url,
            "SVDQ_S3_ENDPOINT": endpoint,
            "SVDQ_S3_BUCKET": "svdq-bench",
            "SVDQ_MODEL_DIR": str(model_dir),
            "SVDQ_DEFAULT_VARIANT": "tiny",
        }
        settings = Settings.from_env(env)
        store = S3Store(settings.s3_bucket, endpoint)
        store.ensure_bucket()
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        paths = [
            make_image(Path(tmp) / f"img{i}.png", (320 + 8 * i, 200), color=i)
            for i in range(args.images)
        ]
        bare = BareLoop(dataclasses.replace(settings, model_dir=model_dir), store, job)
        queue = Svdq(env, settings, store, job)
        try:
            # Warm-up (not timed): both sides start with a loaded, once-run model.
            warm = make_image(Path(tmp) / "warm.png", (200, 150), color=255)
            bare.run([(10_000, warm)])
            queue.run([(10_000, warm)])
            queue.records.clear()
            bare.generate_s = 0.0
            # Interleaved rounds: the machine's load drifts, and both sides should see it.
            rounds: list[tuple[float, float]] = []
            items = list(enumerate(paths))
            per_round = max(1, len(items) // args.rounds)
            for start in range(0, len(items), per_round):
                chunk = items[start : start + per_round]
                rounds.append((bare.run(chunk), queue.run(chunk)))
            phases = where_svdq_time_goes(queue.records)
        finally:
            queue.close()
        redis.Redis.from_url(redis_url).flushdb()
    gif = gif_comparison(job)

    bare_s, queued_s = sum(r[0] for r in rounds), sum(r[1] for r in rounds)
    ratio = bare_s / queued_s
    # A burst of someone else's load lands on one side of one round; the median round
    # ratio shrugs it off where the totals cannot.
    median_ratio = statistics.median(b / q for b, q in rounds)
    report = {
        "benchmark": "overhead",
        "images": args.images,
        "rounds": args.rounds,
        "job": job,
        "bare_loop_s": round(bare_s, 3),
        "svdq_s": round(queued_s, 3),
        "ratio_bare_over_svdq": round(ratio, 4),
        "median_round_ratio": round(median_ratio, 4),
        "round_seconds": [[round(b, 3), round(q, 3)] for b, q in rounds],
        "target_ratio": 0.97,
        "overhead_ms_per_job": round(1000 * (queued_s - bare_s) / args.images, 1),
        "svdq_worker_seconds_by_phase": phases,
        # The pipeline call alone on each side: what the two processes' compute cost, so the
        # queue's own cost can be told apart from a slower or faster process.
        "generate_s": {
            "bare": round(bare.generate_s, 3),
            "svdq_worker": round(phases["denoise"] + phases["decode"], 3),
        },
        "overhead_ms_per_job_outside_generation": round(
            1000
            * ((queued_s - phases["denoise"] - phases["decode"]) - (bare_s - bare.generate_s))
            / args.images,
            1,
        ),
        "gif": gif,
        **provenance(),
    }
    print(f"{'path':<28}{'seconds':>10}")
    print(f"{'(a) bare loop':<28}{bare_s:>10.2f}")
    print(f"{'(b) svdq, one worker':<28}{queued_s:>10.2f}")
    print(f"{'ratio (a)/(b), totals':<28}{ratio:>10.3f}   target >= 0.97")
    print(f"{'ratio, median of rounds':<28}{median_ratio:>10.3f}   ({len(rounds)} rounds)")
    print(f"{'svdq cost per job (ms)':<28}{report['overhead_ms_per_job']:>10.1f}")
    print(
        f"{'  outside the pipeline call':<28}"
        f"{report['overhead_ms_per_job_outside_generation']:>10.1f}"
        f"   (pipeline call: bare {bare.generate_s:.2f}s, worker "
        f"{report['generate_s']['svdq_worker']:.2f}s)"
    )
    print("svdq worker, seconds by phase: " + ", ".join(f"{k} {v}" for k, v in phases.items()))
    for name, g in gif.items():
        print(
            f"gif {name:<24}{g['ours_s']:>10.3f}  vs Pillow default {g['pillow_default_s']:.3f}"
            f"  = {g['ratio']:.1f}x   target >= 5x"
        )
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
