"""Encode time per clip: svdq's encoders (worker/export.py) against ffmpeg's own CLI on the same
frames, and the CPU-seconds a clip costs (issue 15: how many cores a worker needs per GPU).

The clip: 25 frames of 1024x576 (SVD-XT's default), bench/export.py's `smooth_clip` (a moving
colour gradient with mild noise: smooth like real output). For each output, svdq's encoder
(run in this process, as the worker runs it) and the ffmpeg CLI (`ffmpeg` on PATH, reading the
same raw RGB frames from a file written beforehand, untimed) alternate for `--repeats` rounds;
the medians are reported:

    mp4     encode_mp4           vs  ffmpeg -f rawvideo ... -c:v libx264 (svdq's own x264
                                     settings: crf 18, preset veryfast, yuv420p, +faststart)
    gif     encode_gif           vs  ffmpeg ... palettegen=max_colors=255 / paletteuse with no
                                     dithering and changed rectangles only (what encode_gif does)
    poster  encode_poster        vs  ffmpeg ... -frames:v 1 -q:v 3 poster.jpg

Wall seconds (ratio ours / CLI, goal <= 1.1) and CPU-seconds (user + system of this process and
of the ffmpeg children it waited for: resource.getrusage). The rest of a job's CPU side is timed
too (float -> uint8, the motion score), so `cpu_s_per_clip` is what one clip costs the host.

    python bench/encode.py [--repeats 5]       (apt-get install ffmpeg for the CLI side)

Writes bench/results/encode.json.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.export import provenance, smooth_clip, write_report  # noqa: E402
from svdq.worker import engine, export  # noqa: E402

FRAMES, HEIGHT, WIDTH, FPS = 25, 576, 1024, 7
GOAL = 1.1


def cpu_seconds() -> float:
    """User + system seconds of this process and of every child it has waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def cli(args: list[str]) -> Callable[[], None]:
    """A call of the ffmpeg CLI with `args`, quiet, failing loudly."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("ffmpeg is not on PATH (Debian: apt-get install -y ffmpeg)")

    def run() -> None:
        argv = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *args]
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)

    return run


def cli_commands(raw: Path, first: Path, out: Path) -> dict[str, Callable[[], None]]:
    """The ffmpeg CLI's side of each output, reading the raw frames svdq's encoders get."""
    source = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS)]
    x264 = ["-crf", str(export.MP4_CRF), "-preset", export.MP4_PRESET]
    palette = (
        "split[a][b];[a]palettegen=max_colors=255:stats_mode=full[p];"
        "[b][p]paletteuse=dither=none:diff_mode=rectangle"
    )
    mp4 = [*source, "-i", str(raw), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", *x264]
    gif = [*source, "-i", str(raw), "-vf", palette, "-loop", "0", str(out / "clip.gif")]
    poster = [*source, "-i", str(first), "-frames:v", "1", "-q:v", "3", str(out / "p.jpg")]
    return {
        "mp4": cli([*mp4, "-movflags", "+faststart", str(out / "clip.mp4")]),
        "gif": cli(gif),
        "poster": cli(poster),
    }


def version(binary: str) -> str:
    done = subprocess.run([binary, "-version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "encode.json"))
    args = parser.parse_args()
    clip = smooth_clip(FRAMES, HEIGHT, WIDTH)
    floats = clip.astype(np.float32) / 255.0  # what the pipeline hands the worker
    ours: dict[str, Callable[[], object]] = {
        "mp4": lambda: export.encode_mp4(clip, FPS),
        "gif": lambda: export.encode_gif(clip, FPS),
        "poster": lambda: export.encode_poster(clip[0]),
    }
    rest: dict[str, Callable[[], object]] = {
        "to_uint8": lambda: export.to_uint8(floats),
        "motion_score": lambda: engine.motion_score(clip),
    }
    samples: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw, first = Path(tmp) / "frames.rgb", Path(tmp) / "first.rgb"
        raw.write_bytes(clip.tobytes())
        first.write_bytes(clip[0].tobytes())
        theirs = cli_commands(raw, first, Path(tmp))
        for fn in (*ours.values(), *theirs.values()):
            fn()  # warm: page cache, imports, the ffmpeg binaries
        for _ in range(args.repeats):  # alternating, so the host's drifting load hits both
            for kind in ours:
                samples.setdefault(f"ours_{kind}", []).append(measure(ours[kind]))
                samples.setdefault(f"cli_{kind}", []).append(measure(theirs[kind]))
            for name, fn in rest.items():
                samples.setdefault(name, []).append(measure(fn))
    med = {
        name: {
            "wall_s": round(statistics.median(w for w, _ in got), 4),
            "cpu_s": round(statistics.median(c for _, c in got), 4),
        }
        for name, got in samples.items()
    }
    outputs = {
        kind: {
            "ours": med[f"ours_{kind}"],
            "ffmpeg_cli": med[f"cli_{kind}"],
            "ratio_wall": round(med[f"ours_{kind}"]["wall_s"] / med[f"cli_{kind}"]["wall_s"], 3),
        }
        for kind in ours
    }
    side = med["to_uint8"]["cpu_s"] + med["motion_score"]["cpu_s"]
    per_clip = {
        "mp4": round(side + med["ours_mp4"]["cpu_s"] + med["ours_poster"]["cpu_s"], 3),
        "mp4+gif": round(
            side + sum(med[f"ours_{k}"]["cpu_s"] for k in ("mp4", "gif", "poster")), 3
        ),
    }
    import imageio_ffmpeg

    report = {
        "benchmark": "encode",
        "clip": {"frames": FRAMES, "width": WIDTH, "height": HEIGHT, "fps": FPS},
        "repeats": args.repeats,
        "goal_ratio": GOAL,
        "outputs": outputs,
        "rest_of_job": {k: med[k] for k in rest},
        "cpu_s_per_clip": per_clip,
        "ffmpeg": {
            "svdq (imageio-ffmpeg)": version(imageio_ffmpeg.get_ffmpeg_exe()),
            "cli": version(shutil.which("ffmpeg") or "ffmpeg"),
        },
        **provenance(),
    }
    print(f"{'output':<8}{'ours s':>9}{'CLI s':>9}{'ratio':>8}{'ours CPU s':>12}{'CLI CPU s':>11}")
    for kind, row in outputs.items():
        print(
            f"{kind:<8}{row['ours']['wall_s']:>9.3f}{row['ffmpeg_cli']['wall_s']:>9.3f}"
            f"{row['ratio_wall']:>7.2f}x{row['ours']['cpu_s']:>12.3f}"
            f"{row['ffmpeg_cli']['cpu_s']:>11.3f}   goal <= {GOAL}x"
        )
    for name in rest:
        print(f"{name:<14}{med[name]['wall_s']:>9.3f} s wall, {med[name]['cpu_s']:.3f} CPU s")
    print(
        f"CPU seconds per clip (encode, poster, uint8, motion): MP4 {per_clip['mp4']}, "
        f"MP4+GIF {per_clip['mp4+gif']}"
    )
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
