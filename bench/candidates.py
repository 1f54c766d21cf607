"""What generating a job's candidates in one batched pipeline call saves per clip, against one
call per candidate, on the tiny model (CPU).

The same N seeds both ways in the same run (engine.generate with `seeds`: one call with
`num_videos_per_prompt`=N, or N calls of one), after a warm-up call; best of `--repeats` each.
Reports seconds per clip both ways and their ratio, and the largest pixel difference between
a candidate made in the batch and the same candidate made alone (the batch must not change
the clip). Prints a table and writes bench/results/candidates.json.

    python bench/candidates.py [--n 4] [--frames 8] [--size 128x64] [--steps 4] [--repeats 2]

A CPU figure: on a GPU a batch fills the card better and the ratio is different; the rule
that decides batch or one by one there is worker/profiles.candidates_per_call.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.export import provenance, write_report  # noqa: E402
from svdq.shared.settings import Settings  # noqa: E402
from svdq.shared.spec import JobSpec  # noqa: E402
from svdq.worker import engine  # noqa: E402
from svdq.worker.models import load_model  # noqa: E402
from svdq.worker.profiles import CPU_PROFILE  # noqa: E402
from svdq.worker.tiny import ensure_tiny_model  # noqa: E402


def _timed(fn) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="128x64")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench/results/candidates.json"))
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        ensure_tiny_model(Path(tmp) / "tiny")
        settings = dataclasses.replace(Settings.from_env({}), model_dir=Path(tmp))
        model = load_model(settings, CPU_PROFILE)
    spec = JobSpec.from_dict(
        {
            "image": "bench.png",
            "variant": "tiny",
            "width": width,
            "height": height,
            "num_frames": args.frames,
            "num_inference_steps": args.steps,
            "seed": 1,
            "job_id": "bench",
        }
    )
    image = Image.new("RGB", (width, height), (200, 80, 30))
    params = engine.params_for(spec, model)
    seeds = tuple(range(100, 100 + args.n))

    def batch() -> np.ndarray:
        return engine.generate(model, spec, image, params, seeds=seeds)[0]

    def one_by_one() -> np.ndarray:
        clips = [engine.generate(model, spec, image, params, seeds=(s,))[0][0] for s in seeds]
        return np.stack(clips)

    engine.generate(model, spec, image, params, seeds=seeds[:1])  # warm-up
    batched, alone = [], []
    for _ in range(args.repeats):  # interleaved: a slow moment hits both ways alike
        seconds, batch_clips = _timed(batch)
        batched.append(seconds)
        seconds, alone_clips = _timed(one_by_one)
        alone.append(seconds)
    per_clip_batch = min(batched) / args.n
    per_clip_alone = min(alone) / args.n
    report = {
        "benchmark": "candidates",
        "what": "seconds per candidate clip, one batched call vs one call each (tiny, CPU)",
        "command": (
            f"python bench/candidates.py --n {args.n} --frames {args.frames} "
            f"--size {args.size} --steps {args.steps} --repeats {args.repeats}"
        ),
        "n": args.n,
        "frames": args.frames,
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "seconds_per_clip_batch": round(per_clip_batch, 4),
        "seconds_per_clip_one_by_one": round(per_clip_alone, 4),
        "batch_over_one_by_one": round(per_clip_batch / per_clip_alone, 3),
        "saved_per_clip_seconds": round(per_clip_alone - per_clip_batch, 4),
        "max_pixel_difference_batch_vs_alone": float(np.abs(batch_clips - alone_clips).max()),
        "runs": {
            "batch": [round(s, 4) for s in batched],
            "one_by_one": [round(s, 4) for s in alone],
        },
        **provenance(),
    }
    print(f"{'way':<12} {'s/clip':>8}")
    print(f"{'batch':<12} {per_clip_batch:>8.3f}")
    print(f"{'one by one':<12} {per_clip_alone:>8.3f}")
    print(
        f"batch/one-by-one {report['batch_over_one_by_one']}, "
        f"max |batch - alone| {report['max_pixel_difference_batch_vs_alone']:.2e}"
    )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
