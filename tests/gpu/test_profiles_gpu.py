"""On a CUDA GPU: the tiny pipeline under fp16, each offload mode and torch.compile, with peak
VRAM per profile. Skipped without CUDA (run: pytest -m gpu tests/gpu -s)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine
from svdq.worker.models import LoadedModel, evict, load_model
from svdq.worker.profiles import Profile

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BASE = Profile("gpu-test", "tiny", "float16", "none", False, None, False, "cuda")
PROFILES = {
    "fp16": BASE,
    "fp32": dataclasses.replace(BASE, dtype="float32"),
    "model-offload": dataclasses.replace(BASE, offload="model"),
    "sequential-offload": dataclasses.replace(BASE, offload="sequential"),
    "forward-chunking": dataclasses.replace(BASE, forward_chunking=True, decode_chunk_size=2),
    "compile": dataclasses.replace(BASE, compile=True),
}
PEAKS: dict[str, float] = {}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):  # type: ignore[no-untyped-def]
    return dataclasses.replace(Settings.from_env({}), model_dir=tmp_path_factory.mktemp("m"))


def _spec() -> JobSpec:
    return JobSpec.from_dict(
        {
            "image": "x.png",
            "variant": "tiny",
            "width": 256,
            "height": 128,
            "seed": 3,
            "num_inference_steps": 4,
            "job_id": "gpu",
        }
    )


def _run(model: LoadedModel) -> np.ndarray:
    spec = _spec()
    image = Image.new("RGB", (spec.width, spec.height), (10, 200, 90))
    frames, _ = engine.generate(model, spec, image, engine.params_for(spec, model))
    return frames


@pytest.fixture(scope="module")
def reference(settings) -> np.ndarray:  # type: ignore[no-untyped-def]
    model = load_model(settings, PROFILES["fp32"])
    frames = _run(model)
    evict(model)
    return frames


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_runs_on_the_gpu(name: str, settings, reference) -> None:  # type: ignore[no-untyped-def]
    profile = PROFILES[name]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = load_model(settings, profile)
    if profile.offload == "none":
        assert next(model.pipe.unet.parameters()).device.type == "cuda"
    else:  # offloaded: weights wait on the CPU until their model runs
        assert hasattr(model.pipe.unet, "_hf_hook")
    expected = torch.float16 if profile.dtype == "float16" else torch.float32
    assert next(model.pipe.vae.parameters()).dtype == expected
    if profile.compile:
        assert model.warmup_seconds > 0  # compiled at load, not in the first job
    frames = _run(model)
    assert frames.shape == reference.shape and np.isfinite(frames).all()
    if profile.decode_chunk_size is None:  # same maths: fp16 noise only
        assert np.abs(frames - reference).mean() < 0.1
    PEAKS[name] = torch.cuda.max_memory_allocated() / 1e6
    evict(model)


def test_offload_lowers_peak_vram() -> None:
    if not {"fp16", "model-offload", "sequential-offload"} <= set(PEAKS):
        pytest.skip("needs the profile runs above")
    print("peak VRAM MB per profile:", {k: round(v, 1) for k, v in PEAKS.items()})
    assert PEAKS["sequential-offload"] <= PEAKS["model-offload"] <= PEAKS["fp16"]
    assert PEAKS["fp16"] < PEAKS["fp32"]


def test_the_reader_agrees_with_cuda() -> None:
    from svdq.worker.gpuinfo import read_devices

    devices = read_devices()  # NVML, else nvidia-smi: never torch
    assert devices, "a CUDA host must read at least one GPU"
    props = torch.cuda.get_device_properties(0)
    if len(devices) == 1:
        assert abs(devices[0].total_bytes - props.total_memory) / props.total_memory < 0.05
        assert devices[0].capability == (props.major, props.minor)
