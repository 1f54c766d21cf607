"""Running the loaded pipeline for one job: parameters in, frames out.

The pipeline denoises only (`output_type="latent"`); the VAE decode runs here, in chunks of
`decode_chunk_size` frames, so that an out-of-memory error in the decode can be retried with
a smaller chunk without denoising again (worker/stepdown.py). The decode is diffusers' own:
`StableVideoDiffusionPipeline.decode_latents` then `video_processor.postprocess_video`, what
`__call__` itself runs when `output_type` is not "latent" (diffusers 0.42,
pipeline_stable_video_diffusion.py: `frames = self.decode_latents(latents, num_frames,
decode_chunk_size)`; `frames = self.video_processor.postprocess_video(video=frames,
output_type=output_type)`). Under model offload `__call__` ends with `maybe_free_model_hooks()`,
which moves every model back to the CPU; the VAE's `decode` is wrapped in diffusers'
`apply_forward_hook` (`self._hf_hook.pre_forward(self)`), so the VAE comes back to the device
for our decode, alone.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from svdq.shared import shapes
from svdq.shared.errors import InvalidJobError
from svdq.shared.spec import JobSpec
from svdq.worker.models import LoadedModel

log = logging.getLogger(__name__)

# progress(phase, step, steps)
Progress = Callable[[str, int, int], None]
# decode(latents, num_frames, decode_chunk_size) -> float frames (F, H, W, 3) in [0, 1]
Decode = Callable[[Any, int, int], np.ndarray]


@dataclass(frozen=True)
class RunParams:
    """The concrete values one run of the pipeline uses, after the job's defaults are resolved
    against the loaded model (not to be confused with a worker's DevicePlan or `svdq plan`)."""

    variant: str
    num_frames: int
    output_fps: int
    decode_chunk_size: int
    seed: int


def params_for(spec: JobSpec, model: LoadedModel) -> RunParams:
    """Resolve the job's defaults against the loaded model and profile."""
    variant = spec.variant or "auto"
    if variant not in ("auto", model.info.name):
        raise InvalidJobError(
            f"variant={variant!r} cannot run here: this worker runs {model.info.name!r}; "
            f"the job was routed to the wrong queue",
            field="variant",
        )
    frames = spec.num_frames or model.info.frames
    # The job's choice, else the memory profile's, else the variant's (shared/variants.py).
    chunk = (
        spec.decode_chunk_size
        or model.profile.decode_chunk_size
        or model.info.decode_chunk_size
        or frames
    )
    if spec.seed is None:
        raise InvalidJobError("seed is missing: the producer fills it in", field="seed")
    fps = spec.output_fps or spec.fps
    return RunParams(model.info.name, frames, fps, min(chunk, frames), spec.seed)


def generate(
    model: LoadedModel,
    spec: JobSpec,
    image: Image.Image,
    params: RunParams,
    progress: Progress | None = None,
    decode: Decode | None = None,
    seeds: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Denoise once, then `decode` the latents (by default `decode_latents` with the params'
    chunk); return float frames (F, H, W, 3) in [0, 1] and seconds per phase.

    `seeds` (candidates, worker/quality.py): one clip per seed in this one call
    (`num_videos_per_prompt`), frames (N, F, H, W, 3) — even for one seed. Each clip's
    starting latents are what its own seed draws in a plain call (`candidate_latents`) and
    the conditioning image's noise, one for the call, comes from `params.seed`; so a clip
    whose seed is `params.seed` is the plain call's clip, and a candidate's numbers do not
    depend on the batch it ran in. (The same numbers, not always the same bits: on a GPU in
    float16 a batched kernel may round differently from a single one.) diffusers'
    `randn_tensor` with a list of generators would draw the image noise from the first
    generator only: "if isinstance(generator, list): shape = (1,) + shape[1:]; latents =
    [torch.randn(shape, generator=generator[i], ...) for i in range(batch_size)]" with
    batch_size the image's, 1.
    """
    import torch

    steps = spec.num_inference_steps
    if (run := shape_run(model, spec, params)) not in (None, "compiled"):
        log.warning("job %s: %s", spec.job_id, run)
    start = time.perf_counter()

    def on_step_end(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if progress:
            progress("denoise" if i + 1 < steps else "decode", i + 1, steps)
        return kwargs

    # A CPU generator gives the same noise whatever device runs the model.
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    batch: dict[str, Any] = {}
    if seeds is not None:
        batch = {
            "num_videos_per_prompt": len(seeds),
            "latents": candidate_latents(model, spec, params.num_frames, seeds),
        }
    with torch.inference_mode(), _no_compile_in_jobs(model):
        latents = model.pipe(
            image,
            height=spec.height,
            width=spec.width,
            num_frames=params.num_frames,
            num_inference_steps=steps,
            min_guidance_scale=spec.min_guidance_scale,
            max_guidance_scale=spec.max_guidance_scale,
            fps=spec.fps,
            motion_bucket_id=spec.motion_bucket_id,
            noise_aug_strength=spec.noise_aug_strength,
            decode_chunk_size=params.decode_chunk_size,
            generator=generator,
            output_type="latent",
            callback_on_step_end=on_step_end,
            **batch,
        ).frames
    denoised = time.perf_counter()
    run_decode = decode or functools.partial(decode_latents, model)
    frames = run_decode(latents, params.num_frames, params.decode_chunk_size)
    if seeds is not None and frames.ndim == 4:
        frames = frames[None]  # one candidate in this call: still (N, F, H, W, 3)
    timings = {"denoise": denoised - start, "decode": time.perf_counter() - denoised}
    return frames, timings


def shape_run(model: LoadedModel, spec: JobSpec, params: RunParams) -> str | None:
    """How a compiled model runs this job's shape, for result.json: None when it does not
    compile, "compiled" for a shape warmed at load, else why it runs eagerly."""
    if not model.profile.compile:
        return None
    shape = (spec.width, spec.height, params.num_frames)
    if shape in model.warmed:
        return "compiled"
    warmed = ", ".join(map(shapes.text, model.warmed)) or "none"
    return (
        f"eager: {shapes.text(shape)} was not warmed at load (warmed: {warmed}; "
        "SVDQ_WARM_SHAPES lists the shapes to warm)"
    )


def _no_compile_in_jobs(model: LoadedModel) -> Any:
    """A compiled UNet never compiles inside a job: a shape the warm-up did not compile runs
    eagerly instead of recompiling (and re-recording CUDA graphs) for minutes. torch 2.13's
    `torch.compiler.set_stance("eager_on_recompile")`: "Run code eagerly when a recompile is
    necessary. If there is cached compiled code valid for the input, it will still be used."
    """
    import contextlib

    import torch

    if not model.profile.compile:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("eager_on_recompile")


def candidate_latents(
    model: LoadedModel, spec: JobSpec, num_frames: int, seeds: tuple[int, ...]
) -> Any:
    """The starting latents of one clip per seed, (N, F, C, H/8, W/8): for each seed, what
    the plain pipeline called with `generator=torch.Generator("cpu").manual_seed(seed)` draws.

    diffusers 0.42 (pipeline_stable_video_diffusion.py) draws twice from that one generator:
    first the conditioning image's noise, step 4, "noise = randn_tensor(image.shape,
    generator=generator, device=device, dtype=image.dtype)" (image: the preprocessed
    (1, 3, height, width) float32 tensor, image_processor.py "np.array(image).astype(
    np.float32) / 255.0"), then step 7, prepare_latents' "latents = randn_tensor(shape,
    generator=generator, device=device, dtype=dtype)" with shape "(batch_size, num_frames,
    num_channels_latents // 2, height // self.vae_scale_factor, width // self.vae_scale_factor)",
    `num_channels_latents = self.unet.config.in_channels` and dtype the image embeddings'
    (the pipeline's one dtype, worker/models.py). With a CPU generator randn_tensor is
    "torch.randn(shape, generator=generator, device=rand_device, dtype=dtype, layout=layout)"
    (utils/torch_utils.py). So each seed's generator is advanced by the image-noise draw
    first: the seed's latents are never the image noise again, and a candidate whose seed is
    the call's image-noise seed (candidate 0, the job's) starts where the plain job starts.
    The draws use the pipeline's dtype as diffusers does (a float16 draw is not a float32 draw
    rounded: torch's CPU normal_ takes as many random bits as the dtype has digits).
    """
    import torch

    pipe = model.pipe
    dtype = pipe.unet.dtype
    image_shape = (1, 3, spec.height, spec.width)
    shape = (
        1,
        num_frames,
        pipe.unet.config.in_channels // 2,
        spec.height // pipe.vae_scale_factor,
        spec.width // pipe.vae_scale_factor,
    )
    drawn = []
    for seed in seeds:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        torch.randn(image_shape, generator=generator, dtype=torch.float32)  # the image noise
        drawn.append(torch.randn(shape, generator=generator, dtype=dtype))
    return torch.cat(drawn)


def decode_latents(
    model: LoadedModel, latents: Any, num_frames: int, decode_chunk_size: int
) -> np.ndarray:
    """The VAE decode of the pipeline's latents, `decode_chunk_size` frames at a time, as the
    pipeline itself would run it; float frames (F, H, W, 3) in [0, 1], or (N, F, H, W, 3)
    for a batch of N clips. Each clip of a batch is decoded alone: diffusers' decode flattens
    the batch into one run of frames ("latents = latents.flatten(0, 1)") and cuts it into
    chunks, which would let a chunk (and the temporal decoder) span two clips."""
    import torch

    clips = []
    with torch.inference_mode():
        for one in latents.split(1):
            video = model.pipe.decode_latents(one, num_frames, decode_chunk_size)
            frames = model.pipe.video_processor.postprocess_video(video=video, output_type="np")
            clips.append(np.asarray(frames[0]))
    return clips[0] if len(clips) == 1 else np.stack(clips)
