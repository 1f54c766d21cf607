"""`svdq demo`: Redis, an S3 server, one tiny-model worker, three images, three clips.

Uses what is already running where it can (SVDQ_REDIS_URL, SVDQ_S3_ENDPOINT) and starts the
rest on free loopback ports; everything it started is stopped when it ends, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from svdq.producer.client import Client
from svdq.producer.progress import JobProgress
from svdq.producer.services import redis_server, s3_server
from svdq.shared.errors import SvdqError
from svdq.shared.settings import Settings
from svdq.shared.storage import S3Store

# Small enough that three clips finish in well under a minute on two CPU cores.
DEMO_JOB: dict[str, Any] = {
    "variant": "tiny",
    "width": 256,
    "height": 192,
    "num_inference_steps": 10,
    "formats": ["mp4", "gif"],
}
SAMPLES = {"landscape": (1280, 720), "portrait": (600, 900), "square": (512, 512)}


def sample_image(width: int, height: int, hue: int) -> Image.Image:
    """A generated scene: sky gradient, a sun, hills. Different sizes exercise the crop."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(40 + 80 * t), int(90 + 100 * t), 220 - hue))
    r = min(width, height) // 8
    draw.ellipse(
        [width * 0.7 - r, height * 0.25 - r, width * 0.7 + r, height * 0.25 + r],
        fill=(255, 210, 60),
    )
    for i, color in enumerate([(40, 120, 60), (30, 90, 45)]):
        top = int(height * (0.6 + 0.12 * i))
        draw.polygon(
            [
                (0, height),
                (0, top),
                (width // 2, top - height // 10),
                (width, top),
                (width, height),
            ],
            fill=color,
        )
    return img


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(output_dir: str = "demo-output") -> int:
    """Run the whole stack once; return an exit code."""
    started = time.monotonic()
    base = Settings.from_env()
    out = Path(output_dir)
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(base.redis_url))
        endpoint = base.s3_endpoint or stack.enter_context(s3_server())
        env = {
            **os.environ,
            "SVDQ_REDIS_URL": redis_url,
            "SVDQ_S3_ENDPOINT": endpoint,
            "SVDQ_STORE": "s3",
            "SVDQ_DEFAULT_VARIANT": "tiny",
        }
        settings = Settings.from_env(env)
        print(
            f"redis   {redis_url}\ns3      {endpoint} bucket {settings.s3_bucket}", file=sys.stderr
        )
        store = S3Store(
            settings.s3_bucket, settings.s3_endpoint, settings.s3_region, settings.s3_timeout
        )
        store.ensure_bucket()

        logs = stack.enter_context(tempfile.TemporaryDirectory(prefix="svdq-demo-"))
        log_path = Path(logs) / "worker.log"
        log_file = stack.enter_context(open(log_path, "wb"))
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "svdq.producer.cli",
                "worker",
                "--gpus",
                "none",
                "--variant",
                "tiny",
                "--name",
                "demo@%h",
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, worker)
        print(f"worker  started (pid {worker.pid}), log {log_path}", file=sys.stderr)

        client = Client(settings, store)
        inputs = Path(logs) / "inputs"
        inputs.mkdir()
        handles = {}
        for i, (name, (w, h)) in enumerate(SAMPLES.items()):
            path = inputs / f"{name}.png"
            sample_image(w, h, hue=40 * i).save(path)
            handle = client.submit(str(path), **DEMO_JOB)
            handles[handle.job_id] = name
            print(f"queued  {name} {w}×{h} -> job {handle.job_id}", file=sys.stderr)

        printer = JobProgress(labels=handles)

        def on_progress(status: dict[str, object]) -> None:
            if worker.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise SvdqError(f"the worker exited with code {worker.returncode}:\n{tail}")
            printer(status)

        results = client.wait(list(handles), timeout=150, on_progress=on_progress)

        out.mkdir(parents=True, exist_ok=True)
        print(f"\nclips in {out.resolve()}/ (tiny model: random weights, so they are noise):")
        for job_id, name in handles.items():
            result = results[job_id]
            for kind, obj in result["outputs"].items():
                ext = obj["key"].rsplit(".", 1)[-1]
                target = out / f"{name}.{'poster.' if kind == 'poster' else ''}{ext}"
                target.write_bytes(store.get_bytes(obj["key"]))
                print(f"  {target}  <-  {obj['uri']}")
        shutil.copy(log_path, out / "worker.log")
    print(f"demo finished in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0
