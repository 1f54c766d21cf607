"""Time per clip and the VRAM a card really needs, for every memory profile it can run.

On a GPU: every rung of the card's profile ladder for the variant (default `auto`, resolved
to the card's default variant exactly as a worker resolves it; `--variant tiny` needs no
weights), each loaded fresh, one warm-up clip, then `--clips` timed clips. Per rung it reports
peak *reserved* memory (torch's caching allocator: tensors + cache + fragmentation) and the
peak memory NVML sees used on the card (that also counts the CUDA context and anything else on
it), and judges that figure against the README's profile table. A rung that compiles is also
timed eagerly, for the compile speed-up after warm-up, and started twice more in new processes
on one empty SVDQ_COMPILE_CACHE (cold, then warm: what the cache saves a restart; JSON
"compile_cache", `--no-cold-start` skips it). Everything a rung held is freed before
the next rung's peak counters are reset, an out-of-memory rung included.

On a host without CUDA it says "no CUDA here" and exits 0; `--cpu` times the tiny pipeline on
the CPU profiles instead (what the profile levers cost, not what a GPU does).

    python bench/gpu.py [--variant auto|svd|svd-xt|svd-xt-1-1|tiny] [--clips 2]
                        [--size 1024x576] [--steps 25] [--frames N] [--all-rungs] [--cpu]

Prints a table and writes bench/results/gpu-<device>.json (or --output).
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import coldstart  # noqa: E402
from bench.gpumem import NvmlPeak, budget_gb, verdict  # noqa: E402
from svdq.shared.settings import Settings  # noqa: E402
from svdq.shared.spec import JobSpec  # noqa: E402
from svdq.worker.devices import device_plan, this_device  # noqa: E402
from svdq.worker.gpuinfo import Device, pin_device, read_devices, use_pci_bus_order  # noqa: E402
from svdq.worker.profiles import CPU_LADDER, GPU_TABLE, Profile, carries  # noqa: E402

NO_CUDA = "no CUDA here"


def gpu_rungs(
    device: Device | None, settings: Settings, variant: str, all_rungs: bool = False
) -> tuple[str, list[Profile]]:
    """The variant `variant` means on `device` (auto: the card's default, as the worker's
    `device_plan` resolves it, never the literal 'auto') and the rungs to time, each set to
    that variant. `all_rungs`: every table row that carries it, also those above the card's."""
    plan = device_plan(device, settings, variant)
    wanted = plan.default_variant
    rungs = list(plan.ladder)
    if all_rungs:
        rungs = [p for _, p in GPU_TABLE if carries(p, wanted)]
    return wanted, [dataclasses.replace(p, variant=wanted) for p in rungs]


def cpu_rungs() -> list[Profile]:
    """`--cpu`: the CPU ladder plus model offload on device=cpu (hooks only)."""
    offload = dataclasses.replace(CPU_LADDER[0], name="cpu-offload", offload="model")
    return [*CPU_LADDER, offload]


def _describe_error(exc: BaseException) -> str:
    import torch

    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {text}"
    return f"{type(exc).__name__}: {text}"


def time_profile(
    settings: Settings,
    profile: Profile,
    job: dict[str, Any],
    clips: int,
    nvml_device: Device | None,
) -> dict[str, Any]:
    """Load with `profile`, one untimed clip, then `clips` timed ones; free it all after.
    `nvml_device`: the card whose NVML memory is sampled (None: not sampled)."""
    import torch
    from PIL import Image

    from svdq.worker import engine, models
    from svdq.worker.compiled import forget_compiled

    cuda = profile.device == "cuda"
    row: dict[str, Any] = {"profile": profile.to_dict()}
    sampler = NvmlPeak(nvml_device if cuda else None)
    if cuda:  # the previous rung was freed (below) before these counters start again
        torch.cuda.reset_peak_memory_stats()
        row["reserved_before_gb"] = round(torch.cuda.memory_reserved() / 1e9, 2)
    model = None
    sampler.start()
    try:
        model = models.load_model(settings, profile)
        row["load_s"] = round(model.load_seconds, 2)
        row["warmup_s"] = round(model.warmup_seconds, 2)
        spec = JobSpec.from_dict({"image": "bench.png", "seed": 1, "job_id": "bench", **job})
        image = Image.new("RGB", (spec.width, spec.height), (120, 90, 60))
        params = engine.params_for(spec, model)
        engine.generate(model, spec, image, params)  # first call: not timed
        start = time.perf_counter()
        for _ in range(clips):
            engine.generate(model, spec, image, params)
        row["s_per_clip"] = round((time.perf_counter() - start) / clips, 3)
        row["decode_chunk_size"] = params.decode_chunk_size
        row["num_frames"] = params.num_frames
        if (run := engine.shape_run(model, spec, params)) is not None:
            row["shape_run"] = run  # "compiled": the timed clips ran the warmed graph
    except Exception as exc:  # an OOM or a failed compile ends this rung, not the benchmark
        row["error"] = _describe_error(exc)
    # Outside the except block: the traceback (and the tensors its frames hold) is gone now.
    nvml = sampler.stop()
    if cuda:
        row["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
        row["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    if nvml is not None:
        row["nvml_before_gb"], row["nvml_peak_used_gb"] = (round(v / 1e9, 2) for v in nvml)
    if model is not None:
        models.evict(model)
    del model
    if profile.compile:
        # A compiled rung that failed (no model to evict) may have recorded CUDA graphs in
        # its warm-up: torch/_dynamo/__init__.py `reset()` frees them ("Reset cudagraph trees
        # unconditionally"), `empty_cache` cannot, and the next rung's peak would count them.
        forget_compiled()
    models.free_memory()
    if cuda:
        row["reserved_after_gb"] = round(torch.cuda.memory_reserved() / 1e9, 2)
    row["budget_gb"] = budget_gb(profile)
    row["verdict"] = verdict(row)
    return row


def with_eager_twins(rungs: list[Profile]) -> list[Profile]:
    """Each compiling rung followed by the same rung eager, for the compile speed-up."""
    out: list[Profile] = []
    for p in rungs:
        out.append(p)
        if p.compile:
            out.append(dataclasses.replace(p, name=f"{p.name} eager", compile=False))
    return out


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """compile_speedup on a compiled row: eager s/clip over compiled s/clip (same rung)."""
    by_name = {r["profile"]["name"]: r for r in rows}
    for row in rows:
        eager = by_name.get(f"{row['profile']['name']} eager")
        if eager and "s_per_clip" in row and "s_per_clip" in eager:
            row["compile_speedup"] = round(eager["s_per_clip"] / row["s_per_clip"], 2)


def compile_cache_figure(
    rungs: list[Profile], env: dict[str, str], root: Path
) -> dict[str, Any] | None:
    """The first compiling rung started twice in new processes on one empty SVDQ_COMPILE_CACHE
    under `root` (bench/coldstart.py): cold and warm load_s / warmup_s and what the cache
    held. None when no rung compiles (nothing for the cache to keep)."""
    compiling = [p for p in rungs if p.compile]
    if not compiling:
        return None
    return coldstart.cold_vs_warm(compiling[0], env, root)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as people read them."""

    def num(row: dict[str, Any], key: str, fmt: str = ".2f") -> str:
        return format(row[key], fmt) if row.get(key) is not None else "-"

    lines = [
        f"{'profile':<16}{'s/clip':>8}{'compile×':>9}{'reserved GB':>12}{'NVML GB':>9}"
        f"{'budget GB':>10}  verdict"
    ]
    for row in rows:
        took = num(row, "s_per_clip") if "error" not in row else "ERROR"
        lines.append(
            f"{row['profile']['name']:<16}{took:>8}{num(row, 'compile_speedup'):>9}"
            f"{num(row, 'peak_reserved_gb'):>12}{num(row, 'nvml_peak_used_gb'):>9}"
            f"{num(row, 'budget_gb', '.1f'):>10}  {row['verdict']}"
            + (f" ({row['error']})" if "error" in row else "")
        )
    return "\n".join(lines)


def slug(text: str) -> str:
    """A file-name-safe form of a card name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "gpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--variant", default="auto")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--size", help="WxH (default 1024x576 on a GPU, 128x64 on a CPU)")
    parser.add_argument("--steps", type=int, help="default 25 on a GPU, 3 on a CPU")
    parser.add_argument("--frames", type=int, help="default: the variant's")
    parser.add_argument("--all-rungs", action="store_true", help="also the rows above the card's")
    parser.add_argument("--cpu", action="store_true", help="no CUDA: time the CPU profiles")
    parser.add_argument("--output", help="JSON path (default bench/results/gpu-<device>.json)")
    parser.add_argument(
        "--no-cold-start",
        action="store_true",
        help="skip the compiled rung's cold vs warm start with SVDQ_COMPILE_CACHE (GPU only)",
    )
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    device = this_device(settings, read_devices())  # NVML or nvidia-smi: never torch
    use_pci_bus_order(os.environ)  # before torch first asks CUDA: NVML's numbering
    if device is not None:
        # "cuda" (device 0) is the card benched and sampled (SVDQ_GPU_INDEX, else the first
        # visible one), not whichever CUDA would number 0.
        pin_device(os.environ, device)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu:
        print(f"{NO_CUDA}: torch {torch.__version__} sees no CUDA device; nothing to measure")
        print("(GPU host: make gpu-check; to time the CPU profiles: python bench/gpu.py --cpu)")
        return 0
    if cuda:
        variant, rungs = gpu_rungs(device, settings, args.variant, args.all_rungs)
        rungs = with_eager_twins(rungs)
        label = f"{device.name} ({device.total_bytes / 1e9:.1f} GB)" if device else "GPU"
    else:
        print(f"{NO_CUDA}: timing the tiny pipeline on the CPU with each CPU profile")
        variant, rungs, device = "tiny", cpu_rungs(), None
        label = "CPU (no CUDA): tiny pipeline, not GPU figures"
    width, height = (int(v) for v in (args.size or ("1024x576" if cuda else "128x64")).split("x"))
    job: dict[str, Any] = {
        "variant": variant,
        "width": width,
        "height": height,
        "num_inference_steps": args.steps or (25 if cuda else 3),
    }
    if args.frames:
        job["num_frames"] = args.frames
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if variant == "tiny":
            env.setdefault("SVDQ_MODEL_DIR", str(Path(tmp) / "models"))
        # A compiled rung warms the benchmark's own shape: any other one runs eagerly.
        env["SVDQ_WARM_SHAPES"] = "x".join(str(v) for v in (width, height, args.frames) if v)
        settings = Settings.from_env(env)
        rows = [time_profile(settings, p, job, args.clips, device) for p in rungs]
        # A restart's cost with the compile cache, cold then warm (minutes of compiling on a
        # GPU; on a CPU: `python -m bench.coldstart`).
        cache = None
        if cuda and not args.no_cold_start:
            cache = compile_cache_figure(rungs, env, Path(tmp) / "compile-cache")
    add_speedups(rows)

    print(f"\n{label}; {job}")
    print(table(rows))
    if cache is not None:
        print(f"start with SVDQ_COMPILE_CACHE: {coldstart.line(cache)}")
    out = Path(
        args.output or REPO / "bench" / "results" / f"gpu-{slug(label) if cuda else 'cpu'}.json"
    )
    report = {
        "benchmark": "gpu",
        "device": label,
        "cuda": cuda,
        "torch": torch.__version__,
        "variant": variant,
        "job": job,
        "clips": args.clips,
        "rows": rows,
        "compile_cache": cache,
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
