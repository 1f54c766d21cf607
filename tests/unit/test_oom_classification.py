"""Out-of-memory errors in every form torch raises them step down; only a broken CUDA context
ends the process (issue 9, defect 8). The exception types are torch's own, built the way
torch builds them; the messages are the ones its C++ checks format (quoted in worker/oom.py)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed

from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.variants import variant
from svdq.worker import engine, models, oom, stepdown
from svdq.worker.profiles import CPU_LEAN, CPU_PROFILE

ASYNC = (
    "\nCUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1"
)
ALLOCATOR = (
    "CUDA out of memory. Tried to allocate 2.25 GiB. GPU 0 has a total capacity of 79.19 GiB "
    "of which 1.02 GiB is free."
)


def inductor() -> None:  # a backend: dynamo names it in BackendCompilerFailed's message
    """Stands for torch._inductor's compile_fx."""


def compile_failed(inner: Exception) -> BackendCompilerFailed:
    """Raised as torch/_dynamo/output_graph.py raises it: `... from None`, inner kept."""
    try:
        try:
            raise inner
        except Exception as e:
            raise BackendCompilerFailed(inductor, e, None).with_traceback(e.__traceback__) from None
    except BackendCompilerFailed as wrapped:
        return wrapped


OUT_OF_MEMORY = [
    torch.cuda.OutOfMemoryError(ALLOCATOR),
    torch.AcceleratorError("CUDA error: out of memory" + ASYNC),
    RuntimeError("CUDA error: out of memory" + ASYNC),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    compile_failed(torch.cuda.OutOfMemoryError(ALLOCATOR)),
    compile_failed(RuntimeError("CUDA error: out of memory" + ASYNC)),
]
POISONED = [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered" + ASYNC),
    RuntimeError("CUDA error: device-side assert triggered" + ASYNC),
    RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
    compile_failed(RuntimeError("CUDA error: an illegal memory access was encountered")),
]
NEITHER = [
    RuntimeError("The size of tensor a (4) must match the size of tensor b (8)"),
    compile_failed(RuntimeError("Failed to find C compiler. Please specify via CC.")),
]


@pytest.mark.parametrize("exc", OUT_OF_MEMORY, ids=lambda e: f"{type(e).__name__}:{e}"[:60])
def test_out_of_memory_in_every_form_is_out_of_memory(exc: Exception) -> None:
    assert isinstance(exc, RuntimeError)  # what stepdown catches
    assert oom.out_of_memory(exc) and not oom.poisoned(exc)


@pytest.mark.parametrize("exc", POISONED, ids=lambda e: f"{type(e).__name__}:{e}"[:60])
def test_a_broken_context_is_poisoned(exc: Exception) -> None:
    assert oom.poisoned(exc) and not oom.out_of_memory(exc)


@pytest.mark.parametrize("exc", NEITHER, ids=lambda e: f"{type(e).__name__}:{e}"[:60])
def test_other_errors_are_neither(exc: Exception) -> None:
    assert not oom.poisoned(exc) and not oom.out_of_memory(exc)


@pytest.mark.parametrize("exc", OUT_OF_MEMORY[1:4], ids=["accelerator", "runtime", "cublas"])
def test_stepdown_steps_down_on_a_cuda_error_that_is_out_of_memory(monkeypatch, exc) -> None:
    """Before the fix these ended the process ("CUDA error" was taken for a broken context)."""
    runs: list[str] = []
    exits: list[int] = []

    def run(model, spec, image, params, progress=None, decode=None, seeds=None):  # type: ignore[no-untyped-def]
        runs.append(model.profile.name)
        if len(runs) == 1:
            raise exc
        return "frames", {"denoise": 0.0, "decode": 0.0}

    def swap(model, settings, profile, lower, tried=None):  # type: ignore[no-untyped-def]
        model.profile, model.lower = profile, lower
        return model

    monkeypatch.setattr(engine, "generate", run)
    monkeypatch.setattr(models, "swap", swap)
    monkeypatch.setattr(models, "free_memory", lambda: None)
    monkeypatch.setattr(stepdown.os, "_exit", exits.append)
    model = models.LoadedModel(
        object(), variant("tiny"), "here", CPU_PROFILE, 0.0, lower=(CPU_LEAN,)
    )
    spec = JobSpec.from_dict({"image": "x.png", "variant": "tiny", "seed": 1, "job_id": "m"})
    frames, _, _, attempts = stepdown.generate(model, Settings.from_env({}), spec, None)  # type: ignore[arg-type]
    assert exits == [] and runs == ["cpu", "cpu-lean"] and frames == "frames"
    assert [a["outcome"] for a in attempts] == ["oom", "succeeded"]
