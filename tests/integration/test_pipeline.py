"""The tiny pipeline saved and loaded from disk through the real from_pretrained path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine
from svdq.worker.models import load_model
from svdq.worker.profiles import choose_profile
from svdq.worker.tiny import build_tiny_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(model_dir):  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(Settings.from_env({}), model_dir=model_dir)
    return load_model(settings, choose_profile(None, "tiny"))


def _spec(**kw) -> JobSpec:  # type: ignore[no-untyped-def]
    base = {
        "image": "x.png",
        "variant": "tiny",
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "seed": 1234,
        "job_id": "t",
    }
    return JobSpec.from_dict({**base, **kw})


def _run(model, spec):  # type: ignore[no-untyped-def]
    image = Image.new("RGB", (spec.width, spec.height), (120, 60, 200))
    frames, _ = engine.generate(model, spec, image, engine.params_for(spec, model))
    return frames


def test_same_seed_same_frames_other_seed_other_frames(tiny):
    a = _run(tiny, _spec())
    b = _run(tiny, _spec())
    c = _run(tiny, _spec(seed=99))
    assert a.shape == (14, 64, 64, 3) and a.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-4
    assert np.abs(a - c).max() > 1e-2


def test_two_builds_are_bit_identical():
    first = build_tiny_pipeline().unet.state_dict()
    second = build_tiny_pipeline().unet.state_dict()
    assert all(bool((first[k] == second[k]).all()) for k in first)


def test_loaded_from_disk_with_safetensors(tiny, model_dir):
    assert tiny.source == str(model_dir / "tiny")
    assert list((model_dir / "tiny" / "unet").glob("*.safetensors"))
    assert tiny.profile.dtype == "float32" and tiny.profile.device == "cpu"


def test_progress_reports_every_step(tiny):
    seen: list[tuple[str, int, int]] = []
    spec = _spec(num_inference_steps=4)
    image = Image.new("RGB", (64, 64))
    engine.generate(
        tiny,
        spec,
        image,
        engine.params_for(spec, tiny),
        lambda phase, step, steps: seen.append((phase, step, steps)),
    )
    assert [s[1] for s in seen] == [1, 2, 3, 4] and seen[-1][2] == 4


def test_wrong_variant_is_refused(tiny):
    from svdq.shared.errors import InvalidJobError

    with pytest.raises(InvalidJobError, match="variant='svd-xt' cannot run here"):
        engine.params_for(_spec(variant="svd-xt"), tiny)


def test_guidance_ramp_reaches_the_pipeline(tiny):
    # diffusers 0.42 runs classifier-free guidance (the UNet on a doubled batch) only when
    # `guidance_scale.max() > 1`, the ramp being linspace(min_guidance_scale,
    # max_guidance_scale, num_frames): the UNet's batch shows which scales the job passed.
    batches: list[int] = []

    def seen(_module, args, kwargs):  # type: ignore[no-untyped-def]
        batches.append(int((args[0] if args else kwargs["sample"]).shape[0]))

    hook = tiny.pipe.unet.register_forward_pre_hook(seen, with_kwargs=True)
    try:
        default = _run(tiny, _spec(num_frames=4))
        assert set(batches) == {2}  # 1.0 → 3.0: guided
        batches.clear()
        unguided = _run(tiny, _spec(num_frames=4, min_guidance_scale=1, max_guidance_scale=1))
        assert set(batches) == {1}  # max <= 1: no guidance, one pass a step
        steeper = _run(tiny, _spec(num_frames=4, max_guidance_scale=6))
    finally:
        hook.remove()
    assert np.abs(default - unguided).max() > 1e-3
    assert np.abs(default - steeper).max() > 1e-3
