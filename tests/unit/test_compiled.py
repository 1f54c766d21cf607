"""compiled.compile_unet: one specialised graph per warmed shape, however many are listed, and
nothing compiled under the jobs' stance. A small module stands in for the UNet (dynamo's eager
backend: the same tracing and guards as inductor, no C compiler)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from svdq.worker.compiled import compile_unet, forget_compiled


@pytest.fixture(autouse=True)
def _fresh() -> None:
    forget_compiled()
    counters.clear()
    yield
    forget_compiled()


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def test_more_shapes_than_torchs_recompile_limit_all_compile() -> None:
    default = torch._dynamo.config.recompile_limit  # 8 in torch 2.13
    sizes = range(1, default + 3)  # ten shapes
    net = compile_unet(torch.nn.Linear(4, 4), len(sizes), backend="eager")
    with torch.inference_mode():
        for n in sizes:
            net(torch.zeros(n, 4))  # a ninth would raise FailOnRecompileLimitHit at the default
        assert _graphs() == len(sizes)  # specialised: one graph per shape, none dynamic
        with torch.compiler.set_stance("eager_on_recompile"):
            net(torch.zeros(3, 4))  # warmed: cached graph
            net(torch.zeros(50, 4))  # not warmed: eagerly
        assert _graphs() == len(sizes)


def test_the_limit_is_what_made_the_ninth_shape_compile() -> None:
    """The same compile without `recompile_limit`: fullgraph turns the limit into an error."""
    default = torch._dynamo.config.recompile_limit
    net = torch.compile(torch.nn.Linear(4, 4), backend="eager", fullgraph=True, dynamic=False)
    with torch.inference_mode():
        for n in range(1, default + 1):
            net(torch.zeros(n, 4))
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            net(torch.zeros(default + 1, 4))
