"""GPU acceptance with the tiny model on CUDA (issue 9; `make gpu-check` runs these): compile
with warm-up and no recompile on a warmed shape, an out-of-memory error forced on purpose that
the step-down survives, eviction that gives the VRAM back for every offload mode, and a second
job on the same process at the same speed. Skipped without CUDA.

The forced OOM caps this process's allocator with `torch.cuda.set_per_process_memory_fraction`
("If trying to allocate more than the allowed value in a process, will raise an out of memory
error in allocator", torch/cuda/memory.py): a real CUDA allocator OOM, not a raised stand-in.
Recompiles are counted by dynamo's `counters["stats"]["unique_graphs"]`, bumped once per new
graph (torch/_dynamo/output_graph.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from PIL import Image

from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, models, stepdown
from svdq.worker.profiles import Profile

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BASE = Profile("gpu-accept", "tiny", "float16", "none", False, None, False, "cuda")
MB = 2**20


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root: Path = tmp_path_factory.mktemp("models")
    return dataclasses.replace(Settings.from_env({}), model_dir=root)


def _job(**fields: object) -> tuple[JobSpec, Image.Image]:
    spec = JobSpec.from_dict(
        {"image": "x.png", "variant": "tiny", "seed": 5, "num_inference_steps": 6, "job_id": "g"}
        | fields
    )
    return spec, Image.new("RGB", (spec.width, spec.height), (30, 120, 200))


def _clip(model: models.LoadedModel, spec: JobSpec, image: Image.Image) -> float:
    start = time.perf_counter()
    frames, _ = engine.generate(model, spec, image, engine.params_for(spec, model))
    torch.cuda.synchronize()
    assert len(frames) == (spec.num_frames or model.info.frames)
    return time.perf_counter() - start


def test_compile_warms_up_and_never_recompiles_a_warmed_shape(settings: Settings) -> None:
    from torch._dynamo.utils import counters

    model = models.load_model(settings, dataclasses.replace(BASE, compile=True))
    try:
        assert model.warmup_seconds > 0  # compiled at load, not in the first job
        graphs = counters["stats"]["unique_graphs"]
        spec, image = _job()  # 1024×576 at the variant's frames: the warmed shape
        _clip(model, spec, image)
        _clip(model, spec, image)
        assert counters["stats"]["unique_graphs"] == graphs
        assert engine.shape_run(model, spec, engine.params_for(spec, model)) == "compiled"
        # A shape SVDQ_WARM_SHAPES does not list runs eagerly: no graph, no CUDA graph recorded.
        other, image = _job(width=512, height=256)
        _clip(model, other, image)
        assert counters["stats"]["unique_graphs"] == graphs
        run = engine.shape_run(model, other, engine.params_for(other, model))
        assert run is not None and run.startswith("eager: 512x256x14 was not warmed")
    finally:
        models.evict(model)


@pytest.mark.parametrize("offload", ["none", "model", "sequential"])
def test_eviction_gives_the_vram_back(settings: Settings, offload: str) -> None:
    models.free_memory()
    reserved, allocated = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
    model = models.load_model(settings, dataclasses.replace(BASE, offload=offload))
    spec, image = _job(width=512, height=320)
    _clip(model, spec, image)
    assert torch.cuda.max_memory_reserved() > reserved
    models.evict(model)
    models.free_memory()
    # Offload hooks make each model refer to itself (accelerate/hooks.py); an evict that left
    # them in place kept the last model's weights on the card.
    assert torch.cuda.memory_allocated() - allocated < 16 * MB
    assert torch.cuda.memory_reserved() - reserved < 64 * MB


@pytest.mark.parametrize("compile_unet", [False, True], ids=["eager", "compiled"])
def test_a_second_job_runs_at_the_same_speed(settings: Settings, compile_unet: bool) -> None:
    model = models.load_model(settings, dataclasses.replace(BASE, compile=compile_unet))
    try:
        spec, image = _job()
        first = _clip(model, spec, image)  # after warm-up: no compile left to pay for
        second = _clip(model, spec, image)
        third = _clip(model, spec, image)
        print(f"s/clip: {first:.3f} {second:.3f} {third:.3f}")
        assert third < second * 1.3 + 0.05
        if compile_unet:
            assert first < second * 2 + 0.5  # the first job did not compile
    finally:
        models.evict(model)


def test_a_forced_out_of_memory_steps_down_and_succeeds(settings: Settings) -> None:
    """The top rung decodes all 25 frames at 1024×576 at once; the rung below decodes one at a
    time with model offload. The allocator is capped between the two rungs' peaks, so the
    top rung's decode runs out of memory for real and the job must still finish."""
    top = dataclasses.replace(BASE, name="gpu-all-at-once")
    low = dataclasses.replace(BASE, name="gpu-lean", offload="model", decode_chunk_size=1)
    spec, image = _job(num_frames=25)
    peaks = {}
    for rung in (top, low):
        models.free_memory()
        torch.cuda.reset_peak_memory_stats()
        model = models.load_model(settings, rung)
        _clip(model, spec, image)
        models.evict(model)
        peaks[rung.name] = torch.cuda.max_memory_reserved()
    assert peaks[top.name] > peaks[low.name] * 1.2, peaks  # the ladder has a point
    models.free_memory()
    cap = (peaks[top.name] + peaks[low.name]) / 2
    total = torch.cuda.get_device_properties(0).total_memory
    model = models.load_model(settings, top, lower=(low,))
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        frames, _, _, attempts = stepdown.generate(model, settings, spec, image)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        models.evict(model)
    print("attempts:", attempts)
    assert len(frames) == 25
    # An out-of-memory try is recorded (a step down, or a halved decode chunk), then success.
    assert len(attempts) > 1 and attempts[-1]["outcome"] == "succeeded"
    assert all(a["outcome"] != "succeeded" for a in attempts[:-1])
