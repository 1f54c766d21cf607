"""A compiled worker never compiles inside a job (issue 9, defect 7): every shape
SVDQ_WARM_SHAPES lists is compiled at load, a job of one of them runs the compiled graph with
no new graph, any other shape runs eagerly without compiling, and result.json's profile says
which. Before the fix only 1024×576 was warmed, and every other width, height or frame count
recompiled inside the job (minutes on a GPU, with CUDA graphs re-recorded).

On the CPU the UNet is compiled by `compiled.compile_unet` (dynamic=False, the recompile
limit) with dynamo's eager backend in place of inductor, which needs a C compiler: dynamo
traces and guards exactly as it does for inductor. Dynamo's own counters tell whether a graph
was compiled; the backend counts each run of a compiled graph, so an "eager" shape is seen not
to run one (a dynamic graph would serve it without compiling anything new).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
from typing import Any

import pytest
from PIL import Image
from torch._dynamo.utils import counters

from svdq.shared import variants
from svdq.shared.constants import result_key
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.storage import open_store
from svdq.worker import compiled, engine, jobs, models, quality, resident
from svdq.worker.devices import DevicePlan
from svdq.worker.profiles import CPU_PROFILE

pytestmark = pytest.mark.integration

COMPILED = dataclasses.replace(CPU_PROFILE, name="cpu-compiled", compile=True)


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """load_model's real compile (dynamic=False, the limit) with dynamo's eager backend
    (torch/_dynamo/backends/debugging.py `eager`: `return gm.forward`), counting each run of
    a compiled graph."""
    calls: list[int] = []

    def backend(gm: Any, example_inputs: Any) -> Any:
        def run(*args: Any) -> Any:
            calls.append(1)
            return gm.forward(*args)

        return run

    compile_eagerly = functools.partial(compiled.compile_unet, backend=backend)
    monkeypatch.setattr(models, "compile_unet", compile_eagerly)
    compiled.forget_compiled()
    counters.clear()
    yield calls
    compiled.forget_compiled()


def _spec(store: Any, width: int, height: int, frames: int) -> JobSpec:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buf, "PNG")
    key = f"inputs/{width}x{height}.png"
    store.put_bytes(key, buf.getvalue(), "image/png")
    return JobSpec.from_dict(
        {
            "image": store.uri(key),
            "variant": "tiny",
            "width": width,
            "height": height,
            "num_frames": frames,
            "num_inference_steps": 2,
            "seed": 3,
            "formats": ["gif"],
            "job_id": f"shape-{width}x{height}x{frames}",
        }
    )


def test_listed_shapes_are_warmed_at_load_and_others_run_eagerly(model_dir, tmp_path, runs) -> None:
    env = {"SVDQ_WARM_SHAPES": "64x64, 128x64x6", "SVDQ_STORE": "local"}
    settings = dataclasses.replace(Settings.from_env(env), model_dir=model_dir, local_dir=tmp_path)
    store = open_store(settings)
    model = models.load_model(settings, COMPILED)
    # Both listed shapes compiled at load, frames left out = tiny's 14; one graph each.
    assert model.warmed == ((64, 64, 14), (128, 64, 6))
    assert list(model.warmup_by_shape) == ["64x64x14", "128x64x6"]
    assert all(s > 0 for s in model.warmup_by_shape.values())
    assert model.warmup_seconds == pytest.approx(sum(model.warmup_by_shape.values()), abs=0.01)
    warmed = _graphs()
    assert warmed == 2

    def job(width: int, height: int, frames: int) -> tuple[dict[str, Any], int]:
        before = len(runs)
        spec = _spec(store, width, height, frames)
        result = jobs.run_job(spec, model, store, settings, "test-worker")
        written = json.loads(store.get_bytes(result_key(spec.job_id or "")))
        assert written == result and written["num_frames"] == frames
        assert (written["width"], written["height"]) == (width, height)
        return written, len(runs) - before

    for shape in ((64, 64, 14), (128, 64, 6)):
        result, ran = job(*shape)
        assert ran == 2  # the compiled graph ran, once per denoising step
        assert _graphs() == warmed  # and nothing new was compiled
        assert result["profile"]["shape_run"] == "compiled"

    result, ran = job(64, 64, 6)  # listed nowhere
    assert ran == 0 and _graphs() == warmed  # ran eagerly, compiled nothing
    assert result["profile"]["shape_run"] == (
        "eager: 64x64x6 was not warmed at load (warmed: 64x64x14, 128x64x6; "
        "SVDQ_WARM_SHAPES lists the shapes to warm)"
    )


def test_an_eager_profile_says_nothing_about_shapes(model_dir) -> None:
    settings = dataclasses.replace(Settings.from_env({}), model_dir=model_dir)
    model = models.load_model(settings, CPU_PROFILE)
    assert model.warmed == () and model.warmup_seconds == 0
    spec = JobSpec.from_dict(
        {"image": "x.png", "variant": "tiny", "width": 64, "height": 64, "seed": 3}
    )
    ran = quality.ran_record(model, spec, engine.params_for(spec, model))
    assert "shape_run" not in ran["profile"]


def test_a_variant_switch_inside_a_job_loads_eagerly(
    model_dir, tmp_path, runs, monkeypatch
) -> None:
    """Review finding 5: a job of another variant switches the pipeline inside the job
    (resident.ensure_variant -> models.swap -> load_model), and a compiling rung's load warms
    up, i.e. compiles, inside that job. Only start-up compiles: the switched-to pipeline runs
    eagerly, and result.json says why. Here a worker whose default is svd (the tiny weights
    under svd's name) takes a tiny job whose ladder compiles."""
    env = {"SVDQ_WARM_SHAPES": "64x64", "SVDQ_STORE": "local"}
    settings = dataclasses.replace(Settings.from_env(env), model_dir=model_dir, local_dir=tmp_path)
    store = open_store(settings)
    model = models.load_model(settings, CPU_PROFILE)
    model.info = variants.variant("svd")  # what the worker's default variant says it is
    plan = DevicePlan(None, "svd", (dataclasses.replace(COMPILED, variant="svd"),), ("svdq.svd",))
    monkeypatch.setattr(resident, "process_plan", lambda *_: plan)
    monkeypatch.setattr(resident, "ladder_for", lambda *_: (COMPILED,))
    before = _graphs()
    switched = resident.ensure_variant(model, settings, "svd", "tiny", "switch")
    assert switched.info.name == "tiny" and switched.warmed == ()
    assert not switched.profile.compile and switched.profile.name == "cpu-compiled"
    result = jobs.run_job(_spec(store, 64, 64, 14), switched, store, settings, "test-worker")
    assert _graphs() == before and runs == []  # nothing compiled, no compiled graph ran
    assert result["profile"]["compile"] is False
    assert result["profile"]["compile_unavailable"] == resident.IN_JOB
