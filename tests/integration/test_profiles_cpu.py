"""Each profile option a CPU allows, applied to the tiny pipeline, does what it should; an
out-of-memory error on the first rung steps down and the job succeeds on the next."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from svdq.shared.errors import ResourceError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, stepdown
from svdq.worker.models import LoadedModel, load_model
from svdq.worker.profiles import CPU_LEAN, CPU_PROFILE, Profile
from tests.fixtures.faults import FaultyPipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_settings(model_dir):  # type: ignore[no-untyped-def]
    return dataclasses.replace(Settings.from_env({}), model_dir=model_dir)


def _spec(**kw) -> JobSpec:  # type: ignore[no-untyped-def]
    base = {
        "image": "x.png",
        "variant": "tiny",
        "width": 64,
        "height": 64,
        "num_frames": 4,
        "num_inference_steps": 2,
        "seed": 7,
        "job_id": "p",
    }
    return JobSpec.from_dict({**base, **kw})


IMAGE = Image.new("RGB", (64, 64), (200, 80, 30))


def _run(model: LoadedModel, spec: JobSpec) -> np.ndarray:
    frames, _ = engine.generate(model, spec, IMAGE, engine.params_for(spec, model))
    return frames


def _chunk_sizes(model: LoadedModel) -> set[object]:
    return {m._chunk_size for m in model.pipe.unet.modules() if hasattr(m, "_chunk_size")}


def test_profile_options_change_what_they_should(tiny_settings) -> None:
    plain = load_model(tiny_settings, CPU_PROFILE)
    chunked = load_model(tiny_settings, dataclasses.replace(CPU_PROFILE, forward_chunking=True))
    offload = load_model(tiny_settings, dataclasses.replace(CPU_PROFILE, offload="model"))

    # forward chunking: the UNet's feed-forward layers run one slice at a time, same maths
    assert _chunk_sizes(plain) == {None}
    assert _chunk_sizes(chunked) == {1}
    base = _run(plain, _spec())
    assert np.abs(_run(chunked, _spec()) - base).max() <= 1e-4

    # model offload on device="cpu": accelerate hooks on every model, same output
    assert hasattr(offload.pipe.unet, "_hf_hook") and not hasattr(plain.pipe.unet, "_hf_hook")
    assert np.abs(_run(offload, _spec()) - base).max() <= 1e-4

    # decode chunk size changes the output (the temporal decoder mixes frames within a
    # chunk); the same chunk size reproduces it
    two = _run(plain, _spec(decode_chunk_size=2))
    assert np.abs(_run(plain, _spec(decode_chunk_size=2)) - two).max() <= 1e-5
    assert np.abs(two - base).max() > 1e-3
    assert np.abs(_run(plain, _spec(decode_chunk_size=4)) - base).max() <= 1e-5


def test_oom_on_the_first_rung_steps_down_and_succeeds(tiny_settings) -> None:
    model = load_model(tiny_settings, CPU_PROFILE, (CPU_LEAN,))
    spec = _spec(job_id="oom-1", metadata={"svdq_test_fault": "oom_once"})
    # The first rung's pipeline runs out of memory once for this job (no GPU here to fill);
    # the step-down loads the next rung's pipeline afresh.
    model.pipe = FaultyPipeline(model.pipe, job=spec.to_dict)
    frames, _, plan, attempts = stepdown.generate(model, tiny_settings, spec, IMAGE)
    assert [(a["profile"], a["outcome"]) for a in attempts] == [
        ("cpu", "oom"),
        ("cpu-lean", "succeeded"),
    ]
    assert all(a["seconds"] >= 0 for a in attempts)
    assert model.profile == CPU_LEAN and model.lower == ()
    assert plan.decode_chunk_size == 2 and frames.shape == (4, 64, 64, 3)
    assert _chunk_sizes(model) == {1}


def test_oom_on_every_rung_is_a_resource_error(tiny_settings, monkeypatch) -> None:
    import torch

    def always_oom(*_: object, **__: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    def fake_exit(code: int) -> None:  # the real one would end pytest too
        raise SystemExit(code)

    model = load_model(tiny_settings, CPU_PROFILE, (CPU_LEAN,))
    monkeypatch.setattr(engine, "generate", always_oom)  # no GPU here to really run out
    monkeypatch.setattr(stepdown.os, "_exit", fake_exit)
    monkeypatch.setitem(stepdown._state, "exhausted_in_a_row", 0)
    with pytest.raises(
        ResourceError, match=r"out of GPU memory on every profile .*\(cpu, cpu-lean\)"
    ):
        stepdown.generate(model, tiny_settings, _spec(job_id="oom-2"), IMAGE)
    assert model.profile == CPU_LEAN  # stays on the bottom rung
    with pytest.raises(ResourceError, match=r"\(cpu-lean\)"):
        stepdown.generate(model, tiny_settings, _spec(job_id="oom-3"), IMAGE)
    # the third job in a row that no rung can hold ends the process (the job is retried fresh)
    with pytest.raises(SystemExit) as ended:
        stepdown.generate(model, tiny_settings, _spec(job_id="oom-4"), IMAGE)
    assert ended.value.code == stepdown.EXIT_POISONED


def test_cpu_profile_rows_are_what_the_cpu_can_run() -> None:
    for p in (CPU_PROFILE, CPU_LEAN):
        assert isinstance(p, Profile)
        assert (p.device, p.dtype, p.compile) == ("cpu", "float32", False)
        assert p.offload != "sequential"


def test_a_broken_cuda_context_ends_the_process(tiny_settings, monkeypatch) -> None:
    exits: list[int] = []

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fake_exit(code: int) -> None:  # the real one would end pytest too
        exits.append(code)
        raise SystemExit(code)

    model = load_model(tiny_settings, CPU_PROFILE, (CPU_LEAN,))
    monkeypatch.setattr(engine, "generate", broken)
    monkeypatch.setattr(stepdown.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        stepdown.generate(model, tiny_settings, _spec(job_id="poison"), IMAGE)
    assert exits == [stepdown.EXIT_POISONED]
    assert model.profile == CPU_PROFILE  # no step-down: a broken context is not memory

    def other(*_: object, **__: object) -> None:
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(engine, "generate", other)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        stepdown.generate(model, tiny_settings, _spec(job_id="plain"), IMAGE)
    assert exits == [stepdown.EXIT_POISONED]
