"""Which errors from a run mean "out of memory" (step down) and which a broken CUDA context
(end the process), read from the exception types and messages torch 2.13 really raises.

Out of memory arrives in more forms than `torch.cuda.OutOfMemoryError`:
- the caching allocator raises `torch.OutOfMemoryError` ("CUDA out of memory. Tried to
  allocate ...");
- a CUDA runtime call that fails to allocate goes through C10_CUDA_CHECK and arrives as
  `torch.AcceleratorError` (a RuntimeError) saying "CUDA error: out of memory" — the error
  cudaErrorMemoryAllocation, which does not break the context;
- cuBLAS failing to allocate its workspace or handle is a plain RuntimeError from
  ATen/cuda/Exceptions.h: `TORCH_CHECK(__err == CUBLAS_STATUS_SUCCESS, "CUDA error: ",
  at::cuda::blas::_cublasGetErrorEnum(__err), " when calling `" #EXPR "`")`, i.e.
  "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"; cuDNN's
  the same way ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED");
- an out-of-memory inside a torch.compile backend (inductor autotuning, CUDA-graph
  recording) is wrapped: torch/_dynamo/output_graph.py `raise BackendCompilerFailed(
  self.compiler_fn, e, inspect.currentframe()).with_traceback(e.__traceback__) from None`,
  keeping the original as `inner_exception` (torch/_dynamo/exc.py).
Every one of these is a RuntimeError. Only after none of them matches does "CUDA error" mean
a context that every later call would fail in (an illegal access, a device-side assert).
"""

from __future__ import annotations

# Messages of allocation failures that leave the CUDA context usable.
OUT_OF_MEMORY = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)
# Errors after which this process's CUDA context is unusable: every later call fails too.
POISONED = ("CUDA error", "cuDNN error", "illegal memory access", "device-side assert")
_DEPTH = 4  # how far down wrapped exceptions are followed


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: dynamo's `inner_exception`, then explicit causes."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < _DEPTH and current not in seen:
        seen.append(current)
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return seen


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is an allocation failure: step down, do not exit."""
    import torch

    return any(
        isinstance(e, torch.OutOfMemoryError) or any(m in str(e) for m in OUT_OF_MEMORY)
        for e in _chain(exc)
    )


def poisoned(exc: BaseException) -> bool:
    """Whether `exc` leaves the CUDA context broken (an out-of-memory error never does)."""
    if out_of_memory(exc):
        return False
    return any(marker in str(e) for e in _chain(exc) for marker in POISONED)
