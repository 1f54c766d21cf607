"""Eviction frees the old pipeline for good, whatever offload or compile set it up, with the
garbage collector frozen as a worker freezes it after a load (issue 9, defect 1).

accelerate's offload hooks make each hooked module refer to itself, and a frozen cycle is
never collected: before the fix, a weakref to the old UNet survived eviction under `model` and
`sequential` offload (the old UNet and VAE stayed on the GPU for the process's life).
The tiny pipeline runs on the CPU; `device="cpu"` puts the same hooks on it as on a GPU.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from svdq.shared.settings import Settings
from svdq.worker import models
from svdq.worker.profiles import CPU_LEAN, CPU_PROFILE

pytestmark = pytest.mark.integration


@pytest.fixture
def tiny_settings(model_dir: Path) -> Settings:
    return dataclasses.replace(Settings.from_env({}), model_dir=model_dir)


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # whatever a test froze goes back to the collector


def _run(model: models.LoadedModel) -> None:
    model.pipe(
        Image.new("RGB", (64, 64)),
        width=64,
        height=64,
        num_frames=2,
        num_inference_steps=1,
        decode_chunk_size=2,
        output_type="np",
    )


def _refs(model: models.LoadedModel) -> list[weakref.ref[object]]:
    unet = model.pipe.unet
    return [weakref.ref(getattr(unet, "_orig_mod", unet)), weakref.ref(model.pipe.vae)]


@pytest.mark.parametrize("offload", ["none", "model", "sequential"])
def test_evict_frees_the_pipeline_for_every_offload_mode(tiny_settings, offload) -> None:
    model = models.load_model(tiny_settings, dataclasses.replace(CPU_PROFILE, offload=offload))
    if offload != "none":
        assert hasattr(model.pipe.unet, "_hf_hook")  # the hooks that made the cycle
    if offload != "sequential":  # sequential offload streams weights to an accelerator only
        _run(model)
    refs = _refs(model)
    models.settle()  # as Runtime.start does after the first load
    models.evict(model)
    assert model.pipe is None
    assert [r() for r in refs] == [None, None]


def test_evict_frees_a_compiled_unet(tiny_settings) -> None:
    import torch

    model = models.load_model(tiny_settings, CPU_PROFILE)
    model.pipe.unet = torch.compile(model.pipe.unet, backend="eager")  # no C compiler needed
    _run(model)
    refs = _refs(model)
    models.settle()
    models.evict(model)
    assert [r() for r in refs] == [None, None]


def test_a_swap_under_model_offload_frees_the_old_rung_and_freezes_the_new(tiny_settings) -> None:
    offloaded = dataclasses.replace(CPU_PROFILE, offload="model")
    model = models.load_model(tiny_settings, offloaded, (CPU_LEAN,))
    _run(model)
    refs = _refs(model)
    models.settle()
    models.swap(model, tiny_settings, CPU_LEAN, ())
    assert [r() for r in refs] == [None, None]
    assert model.profile == CPU_LEAN and not hasattr(model.pipe.unet, "_hf_hook")
    assert gc.get_freeze_count() > 0  # the new rung is out of the full passes again
    _run(model)
