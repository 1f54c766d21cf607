"""An out-of-memory error in the VAE decode halves the decode chunk, down to 1, without
denoising again and without reloading (issue 9, defect 6). Before the fix the step-down
reloaded every rung, repeated the whole denoise each time with the job's own chunk, and ended
in ResourceError.

No GPU here to fill: the tiny pipeline's VAE is made to run out of memory whenever it is
asked to decode more frames at once than it "holds", raising torch's own OutOfMemoryError
from inside the real decode (diffusers' decode_latents → vae.decode).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from svdq.shared.errors import ResourceError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, models, stepdown
from svdq.worker.profiles import CPU_LEAN, CPU_PROFILE

pytestmark = pytest.mark.integration

IMAGE = Image.new("RGB", (64, 64), (200, 80, 30))


@pytest.fixture(scope="module")
def tiny_settings(model_dir):  # type: ignore[no-untyped-def]
    return dataclasses.replace(Settings.from_env({}), model_dir=model_dir)


def _spec(**kw) -> JobSpec:  # type: ignore[no-untyped-def]
    base = {
        "image": "x.png",
        "variant": "tiny",
        "width": 64,
        "height": 64,
        "num_frames": 8,
        "num_inference_steps": 2,
        "seed": 7,
        "job_id": "decode",
    }
    return JobSpec.from_dict({**base, **kw})


class Counted:
    """The pipeline, counting its calls (each one a denoise)."""

    def __init__(self, pipe: object) -> None:
        self.pipe, self.calls = pipe, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.pipe(*args, **kwargs)  # type: ignore[operator]

    def __getattr__(self, name: str) -> object:
        return getattr(self.pipe, name)


def vae_holding(model: models.LoadedModel, frames: int) -> list[int]:
    """Make the VAE run out of memory above `frames` frames a chunk; return the chunks seen."""
    vae = model.pipe.vae
    real, seen = vae.decode, []

    def decode(z: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(z.shape[0])
        if z.shape[0] > frames:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 9.00 GiB (decoding {z.shape[0]} frames)"
            )
        return real(z, *args, **kwargs)

    vae.decode = decode
    return seen


def test_a_decode_oom_halves_the_chunk_and_keeps_the_denoise(tiny_settings) -> None:
    model = models.load_model(tiny_settings, CPU_PROFILE, (CPU_LEAN,))
    reference = engine.generate(model, _spec(), IMAGE, engine.params_for(_spec(), model))[0]
    chunk_one = engine.generate(
        model, _spec(), IMAGE, engine.params_for(_spec(decode_chunk_size=1), model)
    )[0]
    counted = Counted(model.pipe)
    model.pipe = counted
    pipe_before = counted.pipe
    seen = vae_holding(model, 1)

    spec = _spec(decode_chunk_size=8)  # the job asks for all 8 frames at once
    frames, timings, params, attempts = stepdown.generate(model, tiny_settings, spec, IMAGE)

    assert counted.calls == 1  # denoised once
    assert model.profile == CPU_PROFILE and counted.pipe is pipe_before  # not reloaded
    assert frames.shape == (8, 64, 64, 3)  # the clip is complete
    assert seen == [8, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [(a["outcome"], a.get("phase"), a["decode_chunk_size"]) for a in attempts] == [
        ("oom", "decode", 8),
        ("oom", "decode", 4),
        ("oom", "decode", 2),
        ("succeeded", None, 1),
    ]
    assert all(a["profile"] == "cpu" for a in attempts)
    assert params.decode_chunk_size == 1  # result.json's decode_chunk_size is the one used
    # The same latents as an undisturbed run, decoded one frame at a time.
    assert np.abs(frames - chunk_one).max() <= 1e-5
    assert np.abs(frames - reference).max() > 1e-3  # (the chunk does change the decode)
    assert set(timings) == {"denoise", "decode"}


def test_one_frame_at_a_time_still_too_much_steps_down_a_rung(tiny_settings) -> None:
    model = models.load_model(tiny_settings, CPU_PROFILE, (CPU_LEAN,))
    vae_holding(model, 0)  # not even one frame fits on this rung (the next rung's VAE is new)
    frames, _, _, attempts = stepdown.generate(
        model, tiny_settings, _spec(num_frames=4, decode_chunk_size=2), IMAGE
    )
    assert [(a["profile"], a["outcome"], a["decode_chunk_size"]) for a in attempts] == [
        ("cpu", "oom", 2),
        ("cpu", "oom", 1),
        ("cpu-lean", "succeeded", 2),
    ]
    assert frames.shape == (4, 64, 64, 3) and model.profile == CPU_LEAN


def test_a_decode_oom_on_the_last_rung_is_a_resource_error(tiny_settings, monkeypatch):
    monkeypatch.setitem(stepdown._state, "exhausted_in_a_row", 0)
    model = models.load_model(tiny_settings, CPU_LEAN)
    vae_holding(model, 0)
    with pytest.raises(ResourceError, match=r"every profile this worker has \(cpu-lean\)"):
        stepdown.generate(model, tiny_settings, _spec(num_frames=4), IMAGE)
