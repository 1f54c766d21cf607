"""Time per clip and peak memory for every memory profile this machine can run.

On a GPU: every rung of the card's profile ladder for the variant (default: what `auto` means
on the card; `--variant tiny` needs no weights), each loaded fresh, one warm-up clip, then
`--clips` timed clips; peak VRAM from torch.cuda.max_memory_allocated. On a CPU (no CUDA) it
says so and runs the tiny pipeline with each profile a CPU can run — the numbers then show
what the profile levers cost, not what a GPU does.

    python bench/gpu.py [--variant auto|svd|svd-xt|svd-xt-1-1|tiny] [--clips 2]
                        [--size 1024x576] [--steps 25] [--frames N] [--all-rungs]

Prints a table next to the seed's figures and writes bench/results/gpu-<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from svdq.shared.settings import Settings  # noqa: E402
from svdq.shared.spec import JobSpec  # noqa: E402
from svdq.worker.devices import device_plan, ladder_for, this_device  # noqa: E402
from svdq.worker.gpuinfo import read_devices  # noqa: E402
from svdq.worker.profiles import CPU_LADDER, GPU_TABLE, Profile, carries  # noqa: E402

# What the seed's guide says each row is for (ARCHITECTURE.md, SVD-NOTES.md).
SEED = {
    "xt-40g": "≥ 40 GB; compile: 20–25 % faster after the first call",
    "xt-24g": "24–40 GB; no offload",
    "xt-16g": "16–24 GB; model offload ~40 % less VRAM, moderate slowdown",
    "xt-10g": "10–16 GB; + forward chunking ~15 % less, decode 2 ~20 % less",
    "xt-8g": "8–10 GB; all levers: under 8 GB, 2–3× slower overall",
    "svd-low": "< 8 GB; svd fp16 with offloading ~6 GB",
    "cpu": "no CUDA: tiny only, fp32",
    "cpu-lean": "no CUDA: tiny, forward chunking, decode 2",
    "cpu-offload": "no CUDA: tiny with model offload on device=cpu (hooks only)",
}


def rungs_to_run(cuda: bool, variant: str, all_rungs: bool) -> tuple[str, list[Profile]]:
    """The device description and the profiles to time on it."""
    if not cuda:
        offload = dataclasses.replace(CPU_LADDER[0], name="cpu-offload", offload="model")
        return "CPU (no CUDA): tiny pipeline, not GPU figures", [*CPU_LADDER, offload]
    settings = Settings.from_env()
    device = this_device(settings, read_devices())
    plan = device_plan(device, settings, "auto" if variant == "tiny" else variant)
    rungs = list(ladder_for(plan, variant, settings)) if variant != "auto" else list(plan.ladder)
    if all_rungs:  # every table row that carries the variant, also those above the card's
        wanted = rungs[0].variant
        rungs = [dataclasses.replace(p, variant=wanted) for _, p in GPU_TABLE if carries(p, wanted)]
    name = device.name if device else "GPU"
    return f"{name} ({device.total_bytes / 1e9:.1f} GB)" if device else name, rungs


def time_profile(
    settings: Settings, profile: Profile, job: dict[str, Any], clips: int
) -> dict[str, Any]:
    """Load with `profile`, one warm-up clip, then `clips` timed ones."""
    import torch
    from PIL import Image

    from svdq.worker import engine
    from svdq.worker.models import evict, load_model

    cuda = profile.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    row: dict[str, Any] = {"profile": profile.to_dict()}
    try:
        model = load_model(settings, profile)
        row["load_s"] = round(model.load_seconds, 2)
        row["warmup_s"] = round(model.warmup_seconds, 2)
        spec = JobSpec.from_dict({"image": "bench.png", "seed": 1, "job_id": "bench", **job})
        image = Image.new("RGB", (spec.width, spec.height), (120, 90, 60))
        plan = engine.params_for(spec, model)
        engine.generate(model, spec, image, plan)  # first call: not timed
        start = time.perf_counter()
        for _ in range(clips):
            engine.generate(model, spec, image, plan)
        row["s_per_clip"] = round((time.perf_counter() - start) / clips, 3)
        row["decode_chunk_size"] = plan.decode_chunk_size
        row["num_frames"] = plan.num_frames
        evict(model)
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc)[:120]}"
    if cuda:
        row["peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="auto")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--size", help="WxH (default 1024x576 on a GPU, 128x64 on a CPU)")
    parser.add_argument("--steps", type=int, help="default 25 on a GPU, 3 on a CPU")
    parser.add_argument("--frames", type=int, help="default: the variant's")
    parser.add_argument("--all-rungs", action="store_true", help="also the rows above the card's")
    parser.add_argument("--output", help="JSON path (default bench/results/gpu-<device>.json)")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    variant = args.variant if cuda else "tiny"
    width, height = (int(v) for v in (args.size or ("1024x576" if cuda else "128x64")).split("x"))
    job: dict[str, Any] = {
        "variant": variant,
        "width": width,
        "height": height,
        "num_inference_steps": args.steps or (25 if cuda else 3),
    }
    if args.frames:
        job["num_frames"] = args.frames
    device, rungs = rungs_to_run(cuda, variant, args.all_rungs)
    if not cuda:
        print("no CUDA here: timing the tiny pipeline on the CPU with each CPU profile")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if variant == "tiny":
            env.setdefault("SVDQ_MODEL_DIR", str(Path(tmp) / "models"))
        settings = Settings.from_env(env)
        rows = []
        for profile in rungs:
            row = time_profile(
                settings, dataclasses.replace(profile, variant=variant), job, args.clips
            )
            rows.append(row)

    print(f"\n{device}; {job}")
    print(
        f"{'profile':<12}{'s/clip':>9}{'peak GB':>9}{'load s':>8}{'warm-up s':>10}  seed's figures"
    )
    for row in rows:
        name = row["profile"]["name"]
        took = f"{row['s_per_clip']:.2f}" if "s_per_clip" in row else "OOM"
        peak = f"{row['peak_vram_gb']:.2f}" if "peak_vram_gb" in row else "-"
        print(
            f"{name:<12}{took:>9}{peak:>9}{row.get('load_s', 0):>8.1f}"
            f"{row.get('warmup_s', 0):>10.1f}  {SEED.get(name, '')}"
        )
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")[:40] if cuda else "cpu"
    out = Path(args.output or REPO / "bench" / "results" / f"gpu-{slug}.json")
    report = {
        "benchmark": "gpu",
        "device": device,
        "cuda": cuda,
        "torch": torch.__version__,
        "job": job,
        "clips": args.clips,
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
