"""A stand-in GPU for bench/duty.py (benchmark only): a pipeline that holds no CPU while it runs.

On a CPU the tiny pipeline and the encoders fight for the same cores, so how well a worker
keeps its GPU busy cannot be seen there. This stand-in takes the pipeline's place in a real
worker: it sleeps for the seconds the job's metadata asks (`{"duty_gpu_seconds": 2}`), split
over the job's denoising steps with the step callback called after each (the worker's
cancellation check and progress update run as they do on a GPU), and returns a clip of the
job's size: float frames (F, H, W, 3) in [0, 1], made once per shape (bench/export.py's
`smooth_clip`: smooth like real output), so it costs the CPU nothing per job. Everything
after it is real: the encoders, the S3 uploads, Redis, the Celery worker.

Each call appends {"job_id", "start", "end"} (time.time()) to the file named by DUTY_GPU_LOG:
the stand-in's own record of when the "GPU" was busy, which bench/duty.py reads.

It is wired in the way tests/fixtures/serving.py wires in the tiny weights: `install()` points
`svdq.worker.models.load_model` here before the worker modules are imported
(bench/duty_app.py, the Celery app the bench's worker runs). No production module knows of it.

    python -m bench.duty_gpu worker --gpus none --variant tiny   # `svdq worker`, stand-in GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from typing import Any

import numpy as np

from bench.export import smooth_clip
from svdq.shared import variants
from svdq.shared.settings import Settings
from svdq.worker import models
from svdq.worker.profiles import Profile
from tests.fixtures.faults import celery_job

APP = "bench.duty_app"
SECONDS_KEY = "duty_gpu_seconds"  # job metadata: seconds the stand-in GPU runs
DEFAULT_SECONDS = 2.0


class StandInGpu:
    """What the worker calls as its pipeline: `__call__` (denoise), `decode_latents` and
    `video_processor.postprocess_video` (the decode engine.decode_latents runs)."""

    def __init__(self, log_path: str | None) -> None:
        self.log_path = log_path
        self.video_processor = types.SimpleNamespace(postprocess_video=self._postprocess)
        self._clips: dict[tuple[int, int, int], np.ndarray] = {}

    def clip(self, frames: int, height: int, width: int) -> np.ndarray:
        """The float clip of this shape, made on first use (the bench warms every shape)."""
        key = (frames, height, width)
        if key not in self._clips:
            self._clips[key] = smooth_clip(frames, height, width).astype(np.float32) / 255.0
        return self._clips[key]

    def __call__(
        self,
        image: Any,
        *,
        height: int,
        width: int,
        num_frames: int,
        num_inference_steps: int,
        callback_on_step_end: Any = None,
        **_: Any,
    ) -> Any:
        spec = celery_job() or {}
        seconds = float((spec.get("metadata") or {}).get(SECONDS_KEY, DEFAULT_SECONDS))
        start = time.time()
        for step in range(num_inference_steps):
            # Sleep to the step's planned end, so the callbacks' own time is not added on.
            time.sleep(max(0.0, start + seconds * (step + 1) / num_inference_steps - time.time()))
            if callback_on_step_end is not None:
                callback_on_step_end(self, step, step, {})
        end = time.time()
        if self.log_path:
            entry = {"job_id": spec.get("job_id"), "start": start, "end": end}
            with open(self.log_path, "a") as out:
                out.write(json.dumps(entry) + "\n")
        return types.SimpleNamespace(frames=(num_frames, height, width))

    def decode_latents(self, latents: Any, num_frames: int, decode_chunk_size: int) -> Any:
        return latents  # the shape: the stand-in's "decode" is part of its sleep

    def _postprocess(self, video: Any, output_type: str = "np") -> list[np.ndarray]:
        return [self.clip(*video)]

    def set_progress_bar_config(self, **_: Any) -> None:
        pass


def load_model(
    settings: Settings, profile: Profile, lower: tuple[Profile, ...] = ()
) -> models.LoadedModel:
    """`models.load_model`'s answer with the stand-in as the pipeline (nothing to load)."""
    pipe = StandInGpu(os.environ.get("DUTY_GPU_LOG"))
    return models.LoadedModel(pipe, variants.variant(profile.variant), "stand-in GPU", profile, 0.0)


def install() -> None:
    """Every pipeline the worker loads is the stand-in."""
    models.load_model = load_model


def main(argv: list[str] | None = None) -> int:
    """Run `svdq` with `svdq worker` running the stand-in GPU's Celery app."""
    from svdq.producer import cli, workercli
    from svdq.worker import launch

    def worker(args: argparse.Namespace) -> int:
        return launch.launch(args, app=APP)

    workercli.cmd_worker = worker  # as tests/fixtures/launcher.py does
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
