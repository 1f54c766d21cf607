"""A compiled worker's start, cold and then warm, with SVDQ_COMPILE_CACHE: what the cache
saves a restart.

Each start is its own process (`python -m bench.coldstart --child`), as a restarted worker
is: a second load in the same process would find dynamo's in-memory graphs and prove
nothing. Both starts share one fresh cache folder; the first compiles and fills it, the
second should take every graph from it. bench/gpu.py puts the figure in `make gpu-check`'s
JSON ("compile_cache"); on any machine, `python -m bench.coldstart` times the tiny model on
the CPU with inductor's C++ backend (minutes: 2 CPUs take ~3 min cold, ~15 s warm).

    python -m bench.coldstart [--size 64x64] [--frames 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from svdq.worker.profiles import CPU_PROFILE, Profile  # noqa: E402

RESULT = "coldstart-result "  # the child's last line starts with this, then JSON


def start_once(profile: Profile, env: dict[str, str], timeout: float = 1800) -> dict[str, Any]:
    """Load and warm `profile` in a new process with `env` (SVDQ_COMPILE_CACHE and
    SVDQ_WARM_SHAPES in it); its load_s, warmup_s and compile_cache, or {"error": ...}."""
    argv = [sys.executable, "-m", "bench.coldstart", "--child", json.dumps(profile.to_dict())]
    run = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    for line in reversed(run.stdout.splitlines()):
        if line.startswith(RESULT):
            return dict(json.loads(line.removeprefix(RESULT)))
    tail = (run.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"error": f"exit {run.returncode}: {tail}"}


def cold_vs_warm(
    profile: Profile, env: dict[str, str], root: Path, timeout: float = 1800
) -> dict[str, Any]:
    """Two starts of `profile` on one empty cache under `root`: the figures of each and what
    the warm one saved ("warmup_saved_s", "warmup_speedup")."""
    env = {**env, "SVDQ_COMPILE_CACHE": str(root)}
    cold = start_once(profile, env, timeout)
    warm = start_once(profile, env, timeout) if "error" not in cold else {"error": "cold failed"}
    out: dict[str, Any] = {"profile": profile.name, "cold": cold, "warm": warm}
    if "warmup_s" in cold and "warmup_s" in warm:
        out["warmup_saved_s"] = round(cold["warmup_s"] - warm["warmup_s"], 2)
        out["warmup_speedup"] = round(cold["warmup_s"] / max(warm["warmup_s"], 1e-3), 1)
    return out


def line(figure: dict[str, Any]) -> str:
    """The figure as one line people read."""

    def one(start: dict[str, Any]) -> str:
        if "error" in start:
            return f"ERROR ({start['error']})"
        cache = start["compile_cache"]
        return (
            f"load {start['load_s']:.1f}s, warm-up {start['warmup_s']:.1f}s, cache "
            f"{cache['state']} ({cache['hits']} hit, {cache['misses']} compiled)"
        )

    return f"{figure['profile']}: cold {one(figure['cold'])}; warm {one(figure['warm'])}"


def _child(profile_json: str) -> int:
    from svdq.shared.settings import Settings
    from svdq.worker import models

    profile = Profile(**json.loads(profile_json))
    model = models.load_model(Settings.from_env(), profile)
    figures = {
        "load_s": round(model.load_seconds, 2),
        "warmup_s": round(model.warmup_seconds, 2),
        "compile_cache": model.compile_cache,
    }
    print(RESULT + json.dumps(figures), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="64x64", help="the warmed shape, WxH (CPU)")
    parser.add_argument("--frames", type=int, default=2)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    profile = dataclasses.replace(CPU_PROFILE, name="cpu-compiled", compile=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "SVDQ_MODEL_DIR": os.environ.get("SVDQ_MODEL_DIR", str(Path(tmp) / "models")),
            "SVDQ_WARM_SHAPES": f"{args.size}x{args.frames}",
        }
        figure = cold_vs_warm(profile, env, Path(tmp) / "compile-cache")
    print(line(figure))
    print(json.dumps(figure, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
