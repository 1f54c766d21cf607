"""A compiled worker never compiles inside a job (issue 9, defect 7): the shapes warmed at load
run compiled with no new graph, any other shape runs eagerly without compiling, and
result.json's profile says which. Before the fix every new width, height or frame count
recompiled inside the job (minutes on a GPU, with CUDA graphs re-recorded).

On the CPU the UNet is compiled with backend="eager" (dynamo traces and guards exactly as it
does for inductor, with no C compiler needed); dynamo's own counters tell whether a graph was
compiled.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from torch._dynamo.utils import counters

from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, jobs, models
from svdq.worker.profiles import CPU_PROFILE

pytestmark = pytest.mark.integration

COMPILED = dataclasses.replace(CPU_PROFILE, name="cpu-compiled", compile=True)


def _spec(width: int, height: int, frames: int) -> JobSpec:
    return JobSpec.from_dict(
        {
            "image": "x.png",
            "variant": "tiny",
            "width": width,
            "height": height,
            "num_frames": frames,
            "num_inference_steps": 2,
            "seed": 3,
            "job_id": "shape",
        }
    )


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def test_warmed_shapes_run_compiled_and_others_eagerly(model_dir) -> None:
    settings = dataclasses.replace(Settings.from_env({}), model_dir=model_dir)
    models.forget_compiled()
    counters.clear()
    model = models.load_model(settings, CPU_PROFILE)
    model.profile = COMPILED  # apply_profile's inductor needs a C compiler; eager traces alike
    model.pipe.unet = torch.compile(model.pipe.unet, backend="eager", fullgraph=True)
    models.warm_up(model, width=64, height=64, steps=2)
    warmed = _graphs()
    assert warmed > 0 and model.warmed == ((64, 64, 14),)

    image = Image.new("RGB", (64, 64), (10, 120, 200))
    same = _spec(64, 64, 14)
    params = engine.params_for(same, model)
    frames, _ = engine.generate(model, same, image, params)
    assert frames.shape == (14, 64, 64, 3)
    assert _graphs() == warmed  # no new graph for a warmed shape
    assert jobs._profile_record(model, same, params)["shape_run"] == "compiled"

    other = _spec(128, 64, 6)
    params = engine.params_for(other, model)
    frames, _ = engine.generate(model, other, image.resize((128, 64)), params)
    assert frames.shape == (6, 64, 128, 3)
    assert _graphs() == warmed  # ran, and compiled nothing
    assert jobs._profile_record(model, other, params)["shape_run"] == (
        "eager: 128x64x6 was not warmed at load (warmed: 64x64x14)"
    )
    models.forget_compiled()


def test_an_eager_profile_says_nothing_about_shapes(model_dir) -> None:
    settings = dataclasses.replace(Settings.from_env({}), model_dir=model_dir)
    model = models.load_model(settings, CPU_PROFILE)
    spec = _spec(64, 64, 4)
    assert "shape_run" not in jobs._profile_record(model, spec, engine.params_for(spec, model))
