"""`make gpu-check`: GPU acceptance in one command, for whoever brings up a GPU host.

1. Reads the GPUs through NVML / nvidia-smi (never torch). None: says "no CUDA here" and exits 0.
2. If the venv's torch has no CUDA build (pip takes `2.13.0+cpu` as meeting `torch==2.13.0`),
   reinstalls it from `--torch-spec` (default: the cu128 wheels) and checks CUDA then works.
3. Runs `pytest -m gpu tests/gpu` (tiny model on CUDA: fp16, both offloads, forward chunking,
   compile, a forced out-of-memory step-down, eviction, a second job at the same speed).
4. Runs bench/gpu.py for every rung the card can run: tiny always; svd and svd-xt when their
   weights are on disk, else one line "skipped: no weights".
5. Writes bench/results/gpu-<card>.json and prints a table: per rung s/clip, peak reserved VRAM,
   compile speed-up after warm-up, pass/fail against the README's profile table.

Exit status: 0 when the tests pass and no rung fails or errors; 1 otherwise (the JSON is
written either way). Each step runs in its own process: step 2 may replace torch under us.

    python bench/gpu_check.py [--torch-spec SPEC] [--dry-run] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.coldstart import line  # noqa: E402
from bench.gpu import NO_CUDA, slug  # noqa: E402
from svdq.shared.errors import ConfigError, ModelNotFoundError  # noqa: E402
from svdq.shared.settings import Settings  # noqa: E402
from svdq.worker.devices import device_plan, this_device  # noqa: E402
from svdq.worker.gpuinfo import Device, pin_device, read_devices  # noqa: E402
from svdq.worker.models import model_source  # noqa: E402

CUDA_TORCH = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
REAL = ("svd", "svd-xt")  # benched when their weights are here; tiny always is


def torch_cuda(python: str = sys.executable, env: dict[str, str] | None = None) -> str | None:
    """The CUDA version the venv's torch was built for (None: a CPU build), asked of a fresh
    interpreter so a reinstall is seen."""
    probe = subprocess.run(
        [python, "-c", "import torch; print(torch.version.cuda or '')"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return probe.stdout.strip() or None


def install_argv(spec: str, python: str = sys.executable) -> list[str]:
    """pip's command line to replace a CPU torch with `spec` (--force-reinstall: pip would
    otherwise keep 2.13.0+cpu as meeting torch==2.13.0)."""
    return [python, "-m", "pip", "install", "-q", "--force-reinstall", *shlex.split(spec)]


def bench_targets(settings: Settings, device: Device) -> list[tuple[str, str | None]]:
    """(variant, why it is skipped or None) for each variant to bench on `device`."""
    targets: list[tuple[str, str | None]] = [("tiny", None)]
    for variant in REAL:
        try:
            device_plan(device, settings, variant)
        except ConfigError as exc:
            targets.append((variant, f"skipped: this card cannot run it ({exc})"))
            continue
        try:
            model_source(settings, variant)
        except ModelNotFoundError:
            targets.append((variant, "skipped: no weights"))
            continue
        targets.append((variant, None))
    return targets


def summary(report: dict[str, Any]) -> tuple[str, bool]:
    """The table people read, and whether everything passed."""
    ok = report["pytest"]["returncode"] in (0, None)
    lines = [
        f"{report['device']}: pytest -m gpu: {report['pytest']['result']}",
        f"{'variant':<8}{'profile':<16}{'s/clip':>8}{'reserved GB':>12}{'compile×':>9}  verdict",
    ]
    for variant, bench in report["benches"].items():
        if "skipped" in bench:
            lines.append(f"{variant:<8}{bench['skipped']}")
            continue
        if "rows" not in bench:
            ok = False
            lines.append(f"{variant:<8}bench/gpu.py failed: {bench.get('error', '?')}")
            continue
        for row in bench["rows"]:
            took = f"{row['s_per_clip']:.2f}" if "s_per_clip" in row else "-"
            reserved = row.get("peak_reserved_gb", "-")
            speedup = row.get("compile_speedup", "-")
            ok = ok and row["verdict"] in ("pass", "n/a")
            lines.append(
                f"{variant:<8}{row['profile']['name']:<16}{took:>8}{reserved!s:>12}"
                f"{speedup!s:>9}  {row['verdict']}"
                + (f" ({row['error']})" if "error" in row else "")
            )
        if bench.get("compile_cache"):  # bench/coldstart.py: cold vs warm with the cache
            lines.append(f"{variant:<8}restart, SVDQ_COMPILE_CACHE: {line(bench['compile_cache'])}")
    return "\n".join(lines), ok


def _run(
    argv: list[str], dry_run: bool, env: dict[str, str]
) -> subprocess.CompletedProcess[str] | None:
    print("+ " + shlex.join(argv), flush=True)
    if dry_run:
        return None
    return subprocess.run(argv, cwd=REPO, text=True, check=False, env=env)


def main(argv: list[str] | None = None, devices: list[Device] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--torch-spec", default=CUDA_TORCH, help=f"default: {CUDA_TORCH}")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run none")
    parser.add_argument("--output", help="default: bench/results/gpu-<card>.json")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    device = this_device(settings, read_devices() if devices is None else devices)
    if device is None:
        print(f"{NO_CUDA}: NVML and nvidia-smi report no GPU; gpu-check has nothing to check")
        return 0
    print(f"GPU {device.index}: {device.name}, {device.total_bytes / 1e9:.1f} GB")
    # Every process below runs on the GPU reported here: tests/gpu and bench/gpu.py use
    # "cuda" (device 0), which is this one only when it is the one CUDA sees.
    env = dict(os.environ)
    pin_device(env, device)
    print(f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} CUDA_DEVICE_ORDER=PCI_BUS_ID")
    if torch_cuda(env=env) is None:
        print(f"torch here is a CPU build: installing {args.torch_spec}")
        _run(install_argv(args.torch_spec), args.dry_run, env)
        if not args.dry_run and torch_cuda(env=env) is None:
            print(f"torch is still a CPU build after installing {args.torch_spec}", file=sys.stderr)
            return 1
    check = [sys.executable, "-c", "import torch, sys; sys.exit(not torch.cuda.is_available())"]
    done = _run(check, args.dry_run, env)
    if done is not None and done.returncode != 0:
        print(
            "torch has CUDA but cannot use this GPU: is the driver new enough for the wheel's "
            "CUDA (nvidia-smi shows the highest it supports)?",
            file=sys.stderr,
        )
        return 1
    tests = _run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q"], args.dry_run, env
    )
    report: dict[str, Any] = {
        "benchmark": "gpu-check",
        "device": device.name,
        "total_bytes": device.total_bytes,
        "pytest": {
            "returncode": tests.returncode if tests else None,
            "result": "not run"
            if tests is None
            else ("passed" if tests.returncode == 0 else "FAILED"),
        },
        "benches": {},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for variant, skipped in bench_targets(settings, device):
            if skipped:
                print(f"{variant}: {skipped}")
                report["benches"][variant] = {"skipped": skipped}
                continue
            out = Path(tmp) / f"{variant}.json"
            bench = [sys.executable, "bench/gpu.py", "--variant", variant, "--output", str(out)]
            done = _run(bench, args.dry_run, env)
            if done is None:
                continue
            if done.returncode != 0 or not out.is_file():
                report["benches"][variant] = {"error": f"exit status {done.returncode}"}
            else:
                report["benches"][variant] = json.loads(out.read_text())
    if args.dry_run:
        return 0
    text, ok = summary(report)
    print("\n" + text)
    path = Path(args.output or REPO / "bench" / "results" / f"gpu-{slug(device.name)}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path} — commit it: these rows are the first hardware check of the README table")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
