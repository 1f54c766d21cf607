"""How much faster `encode_gif` is than Pillow's default animated-GIF save, and what an MP4
of the same clip costs.

Best of `--repeats` for each encoder on a synthetic clip (a moving colour gradient with mild
noise: smooth like real output, not trivially flat) at the two reference sizes. Prints a table
and writes bench/results/export.json. Target: GIF ratio >= 5x.

    python bench/export.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from svdq.worker.export import encode_gif, encode_mp4, gif_frame_ms

REPO = Path(__file__).resolve().parent.parent
SIZES = ((25, 576, 1024, 7), (14, 256, 256, 7))  # frames, height, width, fps


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_gif(frames_u8: np.ndarray, fps: float, repeats: int = 3) -> dict[str, Any]:
    """Best-of-`repeats` seconds for `encode_gif` and for Pillow's default save of the same clip.

    The default is `first.save(buf, format="GIF", save_all=True, append_images=rest,
    duration=..., loop=0)` on RGB PIL images built beforehand (not timed). Returns
    {"ours_s", "pillow_default_s", "ratio" (default / ours), "frames", "width", "height"}.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    images = [Image.fromarray(frame) for frame in frames_u8]
    duration = gif_frame_ms(fps)

    def pillow_default() -> bytes:
        buf = io.BytesIO()
        images[0].save(
            buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )
        return buf.getvalue()

    ours = _best_of(lambda: encode_gif(frames_u8, fps), repeats)
    default = _best_of(pillow_default, repeats)
    count, height, width, _ = frames_u8.shape
    return {
        "ours_s": ours,
        "pillow_default_s": default,
        "ratio": default / ours,
        "frames": count,
        "width": width,
        "height": height,
    }


def smooth_clip(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A moving colour gradient with mild noise: smooth like real output, not trivially flat."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.arange(frames, dtype=np.float32)[:, None, None] / max(frames, 1)
    clip = np.stack(
        np.broadcast_arrays(
            x / width * 0.8 + 0.2 * np.sin(2 * np.pi * (y / height + t)),
            np.broadcast_to(y / height, (frames, height, width)),
            0.5 + 0.5 * np.cos(2 * np.pi * (x / width - t)),
        ),
        axis=-1,
    )
    clip = clip + np.random.default_rng(seed).normal(0, 0.03, clip.shape).astype(np.float32)
    return (np.clip(clip, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON report (its folder made if need be) and say where."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {target}")


def provenance() -> dict[str, object]:
    """Where a benchmark's figures come from: machine, commit, time (every bench JSON has it)."""
    return {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    print(f"{'clip':<14}{'gif ours':>10}{'pillow':>10}{'ratio':>8}{'mp4':>10}")
    for frames, height, width, fps in SIZES:
        clip = smooth_clip(frames, height, width)
        row = bench_gif(clip, fps, args.repeats)
        row["mp4_s"] = _best_of(lambda clip=clip, fps=fps: encode_mp4(clip, fps), args.repeats)
        name = f"{frames}x{width}x{height}"
        rows[name] = row
        print(
            f"{name:<14}{row['ours_s']:>10.3f}{row['pillow_default_s']:>10.3f}"
            f"{row['ratio']:>7.1f}x{row['mp4_s']:>10.3f}   target: ratio >= 5x"
        )
    report = {
        "clips": rows,
        "repeats": args.repeats,
        **provenance(),
    }
    out = REPO / "bench" / "results" / "export.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
