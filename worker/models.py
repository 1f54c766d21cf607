"""Pipeline loading: once per process, offline, safetensors only.

What each variant is (model id, frames, ...) is the table in shared/variants.py; this module
finds its weights on this machine and turns them into a pipeline set up as a profile says.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from svdq.shared import shapes, variants
from svdq.shared.errors import ModelNotFoundError, WorkerFatalError
from svdq.shared.fields import MAX_GUIDANCE_SCALE, MIN_GUIDANCE_SCALE
from svdq.shared.settings import Settings
from svdq.shared.variants import Variant
from svdq.worker import compilecache
from svdq.worker.compiled import compile_unet, forget_compiled
from svdq.worker.gpuinfo import use_pci_bus_order
from svdq.worker.profiles import Profile
from svdq.worker.quiet import silence_library_notices

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A pipeline ready to run, where it came from, and the rungs below its profile.

    One per process. `swap` replaces its contents in place (variant switch or out-of-memory
    step-down), so whoever holds it sees the new pipeline and the old one can be freed.
    """

    pipe: Any
    info: Variant  # its row in shared/variants.py
    source: str
    profile: Profile
    load_seconds: float
    warmup_seconds: float = 0.0
    lower: tuple[Profile, ...] = ()  # the ladder below `profile`, next rung first
    warmed: tuple[shapes.Resolved, ...] = ()  # (width, height, frames) compiled at load
    warmup_by_shape: dict[str, float] = dataclasses.field(default_factory=dict)  # "WxHxF": s
    # The ladder to load again before the next job (worker/resident.py): set while a job's
    # out-of-memory step-downs have not ended in success (worker/stepdown.py); () otherwise.
    resume: tuple[Profile, ...] = ()
    # What SVDQ_COMPILE_CACHE did for this load's warm-up (compilecache.CompileCache.to_dict).
    compile_cache: dict[str, Any] = dataclasses.field(default_factory=dict)


def model_source(settings: Settings, variant: str) -> Path:
    """Where `variant`'s weights are on this machine; raise ModelNotFoundError if nowhere.

    Looks in $SVDQ_MODEL_DIR/<variant>/ first, then the Hugging Face cache. Never downloads.
    """
    info = variants.variant(variant)
    local = settings.model_dir / variant
    if variant == "tiny":
        return local
    if (local / "model_index.json").is_file():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(info.model_id, revision=info.revision, local_files_only=True))
    except Exception:
        raise ModelNotFoundError(
            f"the {variant} weights are not on this machine: looked in {local} and the "
            f"Hugging Face cache. Fetch them once with\n  hf download {info.model_id} "
            f"--include '*.json' --include '*.fp16.safetensors' --local-dir {local}\n"
            "(svdq never downloads weights itself)"
        ) from None


def weights_variant(source: Path) -> str | None:
    """Which weight files to load from a model folder: the fp16 ones when it has them (the
    README's download fetches only those; a float32 profile casts them up), else the
    full-precision files. The profile's dtype decides the precision that runs either way."""
    return "fp16" if any(source.rglob("*.fp16.safetensors")) else None


def load_model(
    settings: Settings, profile: Profile, lower: tuple[Profile, ...] = ()
) -> LoadedModel:
    """Load the pipeline for `profile.variant`, apply the profile and, when it compiles the
    UNet, warm it up at every shape SVDQ_WARM_SHAPES lists. Call once per process (then
    `swap`, which comes back here: a new rung or variant is warmed the same way)."""
    import torch
    from diffusers import StableVideoDiffusionPipeline

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if profile.device == "cuda":
        # Before the first CUDA allocation: fewer out-of-memory errors from fragmentation.
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        use_pci_bus_order(os.environ)  # CUDA numbers the GPUs as NVML does
    start = time.perf_counter()
    variant = profile.variant
    source = model_source(settings, variant)
    if variant == "tiny":
        from svdq.worker.tiny import ensure_tiny_model

        ensure_tiny_model(source)
    dtype = torch.float16 if profile.dtype == "float16" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "local_files_only": True}
    if variant != "tiny" and (files := weights_variant(Path(source))):
        kwargs["variant"] = files
    _quiet_loading()
    pipe = StableVideoDiffusionPipeline.from_pretrained(str(source), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    info = variants.variant(variant)
    warm = settings.worker.warm_shapes_for(info.frames)
    apply_profile(pipe, profile, len(warm))
    seconds = time.perf_counter() - start
    label = str(source)
    model = LoadedModel(pipe, info, label, profile, seconds, lower=lower)
    if profile.compile:
        warm_cached(model, settings.worker.compile_cache, warm)
    log.info(
        "loaded %s from %s with profile %s (%s) in %.1fs, warm-up %.1fs",
        variant,
        label,
        profile.name,
        ", ".join(f"{k}={v}" for k, v in profile.to_dict().items() if k != "name"),
        seconds,
        model.warmup_seconds,
    )
    return model


def warm_cached(
    model: LoadedModel, root: Path | None, shapes_: tuple[shapes.Resolved, ...]
) -> None:
    """`warm_all` with torch's compile caches in SVDQ_COMPILE_CACHE (`root`; None: torch's
    defaults): its bundle loaded before, what the warm-up took from it counted and the bundle
    saved after (worker/compilecache.py). Loading the bundle counts in the load's seconds."""
    import torch

    profile = model.profile
    key = compilecache.cache_key(
        torch.__version__, compilecache.device_tag(profile.device), profile.variant, profile.dtype
    )
    began = time.perf_counter()
    cache = compilecache.open_cache(root, key)
    model.load_seconds += time.perf_counter() - began
    warm_all(model, shapes_)
    cache.finish()
    model.compile_cache = cache.to_dict()


def warm_all(model: LoadedModel, shapes_: tuple[shapes.Resolved, ...], steps: int = 2) -> None:
    """Compile the UNet at each of `shapes_` (SVDQ_WARM_SHAPES), one after the other, and record
    the seconds each took (`warmup_by_shape`, total in `warmup_seconds`). A job of one of
    these shapes then runs compiled with nothing left to compile; any other shape runs
    eagerly (worker/engine.py `_no_compile_in_jobs`)."""
    for width, height, frames in shapes_:
        seconds = warm_up(model, width, height, frames, steps)
        model.warmup_by_shape[shapes.text((width, height, frames))] = round(seconds, 3)
        model.warmup_seconds += seconds
        log.info(
            "warmed %s/%s at %s in %.1fs",
            model.info.name,
            model.profile.name,
            shapes.text((width, height, frames)),
            seconds,
        )


def warm_up(model: LoadedModel, width: int, height: int, frames: int, steps: int = 2) -> float:
    """Denoise once on a blank image of this shape so torch.compile builds the UNet's graph
    for it now, not during a job. Returns the seconds it took.

    It calls the pipeline as a job does (engine.generate), with the JobSpec's default
    guidance scales: they decide whether classifier-free guidance doubles the UNet's batch
    (diffusers: `do_classifier_free_guidance` is `guidance_scale.max() > 1`), so the graph's
    guards match a job at the defaults. A job with max_guidance_scale <= 1 runs a batch of one,
    which this graph does not cover: it runs eagerly (engine._no_compile_in_jobs).
    Only the UNet is compiled (`apply_profile`), so the warm-up stops at the latents
    (`output_type="latent"`: diffusers skips `decode_latents`): a full-clip VAE decode beside
    the CUDA-graph pool is what ran out of memory at start-up. Jobs decode in chunks that
    halve on out of memory (worker/stepdown.py). An out-of-memory error here fails this
    rung's load, and `load_first` steps down to the next rung, as a job would.
    """
    import torch
    from PIL import Image

    start = time.perf_counter()
    model.warmed = (*model.warmed, (width, height, frames))
    with torch.inference_mode():
        model.pipe(
            Image.new("RGB", (width, height)),
            width=width,
            height=height,
            num_frames=frames,
            num_inference_steps=steps,
            min_guidance_scale=MIN_GUIDANCE_SCALE,
            max_guidance_scale=MAX_GUIDANCE_SCALE,
            generator=torch.Generator(device="cpu").manual_seed(0),
            output_type="latent",
        )
    return time.perf_counter() - start


def free_memory() -> None:
    """Collect what nothing references any more and hand cached CUDA blocks back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def settle() -> None:
    """Collect, then freeze what is left (the libraries and the loaded pipeline) out of the
    garbage collector's full passes, which would otherwise run in the middle of generation.
    `evict` unfreezes first: a frozen object is never collected, however unreachable."""
    gc.collect()
    gc.freeze()


def evict(model: LoadedModel) -> None:
    """Drop the pipeline (the object stays, empty) and free its memory, all of it.

    Three things would keep an evicted pipeline alive for the process's life:
    - accelerate's offload hooks make every hooked module refer to itself
      (accelerate/hooks.py `add_hook_to_module`: `module.forward = functools.update_wrapper(
      functools.partial(new_forward, module), old_forward)`): a cycle only the collector frees;
    - `settle` froze that cycle, and `gc.freeze()` moves objects to a permanent generation
      that no collection looks at until `gc.unfreeze()`;
    - a compiled UNet's graphs (and, on CUDA, its CUDA-graph memory pool) live in dynamo's
      process-wide caches; `torch._dynamo.reset()` clears them ("Reset cudagraph trees").
    So: every hook off (recursively, `remove_hook_from_module(recurse=True)`, which also puts
    `_old_forward` back), unfreeze, drop compiled state, collect, empty the CUDA cache.
    """
    pipe, model.pipe = model.pipe, None
    compiled = False
    if pipe is not None:
        compiled = _unhook(pipe)
        pipe = None
    gc.unfreeze()
    if compiled:
        forget_compiled()
    free_memory()


def _unhook(pipe: Any) -> bool:
    """Take every accelerate hook off every model of `pipe`; say whether one was compiled."""
    import torch
    from accelerate.hooks import remove_hook_from_module

    compiled = False
    for component in dict(getattr(pipe, "components", {})).values():
        if isinstance(component, torch.nn.Module):
            remove_hook_from_module(component, recurse=True)
            compiled = compiled or hasattr(component, "_orig_mod")  # torch.compile's wrapper
    if hasattr(pipe, "_all_hooks"):
        pipe._all_hooks = []  # diffusers' list of offload hooks, each holding its model
    return compiled


def load_first(
    settings: Settings, rungs: tuple[Profile, ...], tried: list[dict[str, Any]] | None = None
) -> LoadedModel:
    """Load the first of `rungs` that loads, with the rest below it as its ladder.

    A rung whose load raises (out of memory in `.to()` or in the compile warm-up, unreadable
    files; not the job's soft time limit, which propagates) is recorded in `tried` as
    `{"profile", "outcome": "load_failed", "seconds", "error"}` and the next one is tried.
    Raises WorkerFatalError, naming every rung and why it failed, when none loads: a process
    without a pipeline must never take a job.
    """
    tried = [] if tried is None else tried
    failed: list[str] = []
    for i, rung in enumerate(rungs):
        start = time.perf_counter()
        error = ""
        try:
            return load_model(settings, rung, rungs[i + 1 :])
        except SoftTimeLimitExceeded:
            # The job's time is up, not the rung (billiard/pool.py `soft_timeout_sighandler`:
            # `raise SoftTimeLimitExceeded()` wherever the child is, and billiard/exceptions.py
            # `class SoftTimeLimitExceeded(Exception)`): it must reach worker/delivery.py, which
            # ends the job as timed out. billiard's other ends (Terminated, TimeLimitExceeded)
            # are raised in the parent, never here.
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        # Outside the except block: the traceback and its frames' tensors are gone.
        log.error("could not load profile %s: %s", rung.name, error)
        seconds = round(time.perf_counter() - start, 4)
        tried.append(
            {"profile": rung.name, "outcome": "load_failed", "seconds": seconds, "error": error}
        )
        failed.append(f"{rung.name} ({error})")
        if rung.compile:
            # Its warm-up may have compiled and recorded CUDA graphs before failing: dynamo's
            # process-wide state keeps them, and their private memory pool, which
            # `empty_cache` cannot return. torch/_dynamo/__init__.py `reset()`: "Reset
            # cudagraph trees unconditionally since they are global state" ->
            # `reset_cudagraph_trees()`. `evict` does this only for a pipeline that loaded.
            forget_compiled()
        free_memory()
    raise WorkerFatalError(
        "no pipeline could be loaded in this worker process: "
        + ("; ".join(failed) or "no profile to load")
    )


def swap(
    model: LoadedModel,
    settings: Settings,
    profile: Profile,
    lower: tuple[Profile, ...],
    tried: list[dict[str, Any]] | None = None,
) -> LoadedModel:
    """Evict the loaded pipeline first, then load `profile` into the same object, or the
    first rung of `lower` that loads when it does not (`load_first`); freeze it again when
    the process had frozen the one before.

    Raises WorkerFatalError when no rung loads: `model` is then empty (`pipe` None), and the
    caller must end the process rather than take another job.
    """
    log.warning(
        "switching from %s/%s to %s/%s",
        model.info.name,
        model.profile.name,
        profile.variant,
        profile.name,
    )
    frozen = gc.get_freeze_count() > 0
    evict(model)
    fresh = load_first(settings, (profile, *lower), tried)
    for f in dataclasses.fields(LoadedModel):
        setattr(model, f.name, getattr(fresh, f.name))
    del fresh
    if frozen:
        settle()
    return model


def _quiet_loading() -> None:
    """No progress bars in worker logs, and no notice that torchvision is absent: svdq
    deliberately uses transformers' PIL image processor."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    silence_library_notices()  # diffusers' "kept in float32: []" on every fp16 VAE cast


def apply_profile(pipe: Any, profile: Profile, shapes_: int = 1) -> None:
    """Put the pipeline on its device the way the profile says; a compiled UNet is made for
    `shapes_` warmed shapes (`compile_unet`).

    Offload hooks move each model to `profile.device` only while it runs. Sequential offload
    streams weights layer by layer and needs an accelerator (it breaks on a CPU).
    """
    if profile.offload == "model":
        pipe.enable_model_cpu_offload(device=profile.device)
    elif profile.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=profile.device)
    else:
        pipe.to(profile.device)
    if profile.forward_chunking:
        pipe.unet.enable_forward_chunking()  # feed-forward one frame at a time: ~15 % less
    if profile.compile:
        pipe.unet = compile_unet(pipe.unet, shapes_)
