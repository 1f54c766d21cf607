"""The compiled UNet: how it is compiled (one graph per warmed shape, nothing else ever
compiled) and how dynamo's process-wide compiled state is dropped when it is evicted.
worker/models.py warms it; worker/engine.py keeps jobs from compiling."""

from __future__ import annotations

import warnings
from typing import Any


def compile_unet(unet: Any, shapes_: int, backend: Any = "inductor") -> Any:
    """`torch.compile` the UNet so that each warmed shape gets its own graph and nothing else
    is ever compiled for it (tests pass another `backend`: inductor needs a C compiler).

    torch 2.13's `torch.compile` docstring decides the two arguments:
    - `dynamic=False`: "we will NEVER generate dynamic kernels, we will always specialize. By
      default (None), we automatically detect if dynamism has occurred and compile a more
      dynamic kernel upon recompile" -- with None, warming a second shape would build one
      dynamic graph that then also serves shapes nobody warmed, re-recording CUDA graphs for
      each inside a job; specialised, an unwarmed shape fails every guard and runs eagerly
      (`set_stance("eager_on_recompile")`, worker/engine.py).
    - `recompile_limit`: "Maximum number of recompilations allowed ... If None (default), uses
      the global torch._dynamo.config.recompile_limit (default 8). With fullgraph=True,
      exceeding the limit raises FailOnRecompileLimitHit" -- so a list longer than torch's
      limit raises the limit rather than fail the warm-up of the ninth shape.
    """
    import torch

    mode = "reduce-overhead" if backend == "inductor" else None  # CUDA graphs: inductor's
    limit = max(shapes_, torch._dynamo.config.recompile_limit)
    # torch 2.13's typing overloads of `compile` leave out `recompile_limit`; the function
    # itself takes it and hands it to `torch._dynamo.optimize(..., recompile_limit=...)`.
    return torch.compile(  # type: ignore[call-overload]
        unet, backend=backend, mode=mode, fullgraph=True, dynamic=False, recompile_limit=limit
    )


def forget_compiled() -> None:
    """Clear dynamo's process-wide compiled state (graphs, guards, CUDA-graph trees)."""
    import torch

    with warnings.catch_warnings():
        # torch/utils/mkldnn.py, imported with inductor, warns that torch.jit is deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Imported first: resetting a "reduce-overhead" backend imports it, and that import
        # adds to the backend cache torch is iterating ("dictionary changed size").
        import torch._inductor.cudagraph_trees

        torch.compiler.reset()
