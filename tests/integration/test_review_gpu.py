"""Review of the GPU path (issue 9, second round), through the real tiny pipeline: defects a CPU
can show, each expected to fail until fixed (xfail strict: the mark comes off with the fix).

Finding numbers refer to the review report on branch adv9.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from svdq.shared.errors import WorkerFatalError
from svdq.shared.settings import Settings
from svdq.worker import models
from svdq.worker.profiles import CPU_PROFILE

pytestmark = pytest.mark.integration

COMPILED = dataclasses.replace(CPU_PROFILE, name="cpu-compiled", compile=True)


def _probe(x: torch.Tensor) -> torch.Tensor:
    """Compiled alongside the UNet: its cache entry stands for the rung's compiled state."""
    return x + 1


def test_a_failed_compiled_load_leaves_no_compiled_state(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evict` resets dynamo (`forget_compiled`) only for a pipeline that loaded. When the
    xt-40g warm-up runs out of memory (defect 4's case), `load_model` raises, `load_first`
    only runs `free_memory` (gc + empty_cache) and loads xt-24g. torch/_dynamo/__init__.py
    `reset()` is what frees the CUDA-graph trees ("Reset cudagraph trees unconditionally",
    `reset_cudagraph_trees()` -> `tree_manager.shutdown()`); the warm-up's cudagraph warm-up
    and recording allocate in that private pool, which `empty_cache` cannot return, so the
    rungs below run with that much less VRAM for the process's life (and bench/gpu.py's next
    rung starts its peak counters with it reserved).

    On the CPU: torch.compile with backend="eager" (no C compiler), the warm-up failing with a
    CUDA-style OOM in the image encoder; a small function compiled with the UNet stands for
    the compiled state, whose dynamo cache entry `torch.compiler.reset()` clears."""
    settings = dataclasses.replace(Settings.from_env({}), model_dir=model_dir)
    models.forget_compiled()
    real_compile = torch.compile

    def compile_eagerly(module: Any, **_: Any) -> Any:
        probe = real_compile(_probe, backend="eager")
        probe(torch.ones(1))
        return real_compile(module, backend="eager", fullgraph=True)

    def out_of_memory(*_: Any, **__: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    from diffusers import StableVideoDiffusionPipeline

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    monkeypatch.setattr(StableVideoDiffusionPipeline, "_encode_image", out_of_memory)
    tried: list[dict[str, Any]] = []
    try:
        with pytest.raises(WorkerFatalError):
            models.load_first(settings, (COMPILED,), tried)
        assert [t["outcome"] for t in tried] == ["load_failed"]
        assert _debug_get_cache_entry_list(_probe.__code__) == []
    finally:
        models.forget_compiled()
