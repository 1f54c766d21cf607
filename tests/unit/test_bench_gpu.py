"""bench/gpu.py's decisions, with made-up cards: which variant and rungs it times (defect 2:
`auto` used to reach load_model as the literal 'auto' → KeyError on every CUDA host), how a
rung is judged against the README table, and that a rung that fails frees what it held before
the next one starts (defect 10)."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu
from bench.gpumem import budget_gb, verdict
from svdq.shared import variants
from svdq.shared.settings import Settings
from svdq.worker import models
from svdq.worker.profiles import GPU_TABLE
from tests.fixtures.gpus import parse as fake_gpus

DEFAULTS = Settings.from_env({})


@pytest.mark.parametrize(
    ("card", "variant", "expected", "names"),
    [
        ("80GB", "auto", "svd-xt", ["xt-40g", "xt-24g", "xt-16g", "xt-10g", "xt-8g"]),
        ("24GiB", "auto", "svd-xt", ["xt-24g", "xt-16g", "xt-10g", "xt-8g"]),
        ("6GiB", "auto", "svd", ["svd-low"]),
        ("80GB", "tiny", "tiny", [p.name for _, p in GPU_TABLE]),
        ("12GiB", "svd", "svd", ["xt-10g", "xt-8g", "svd-low"]),
    ],
)
def test_auto_resolves_to_the_cards_default_variant(
    card: str, variant: str, expected: str, names: list[str]
) -> None:
    resolved, rungs = gpu.gpu_rungs(fake_gpus(card)[0], DEFAULTS, variant)
    assert resolved == expected
    assert [p.name for p in rungs] == names
    for rung in rungs:  # what load_model looks up: the old code passed "auto" here
        assert rung.variant == expected
        assert variants.variant(rung.variant).name == expected


def test_all_rungs_and_eager_twins_for_the_compile_speedup() -> None:
    _, rungs = gpu.gpu_rungs(fake_gpus("24GiB")[0], DEFAULTS, "auto", all_rungs=True)
    assert rungs[0].name == "xt-40g" and rungs[0].variant == "svd-xt"
    timed = gpu.with_eager_twins(rungs)
    assert [p.name for p in timed[:3]] == ["xt-40g", "xt-40g eager", "xt-24g"]
    assert timed[0].compile and not timed[1].compile
    rows: list[dict[str, Any]] = [
        {"profile": {"name": "xt-40g"}, "s_per_clip": 2.0},
        {"profile": {"name": "xt-40g eager"}, "s_per_clip": 2.5},
    ]
    gpu.add_speedups(rows)
    assert rows[0]["compile_speedup"] == 1.25 and "compile_speedup" not in rows[1]


def test_budgets_follow_the_readme_rows() -> None:
    rung = {p.name: p for _, p in GPU_TABLE}
    assert budget_gb(rung["xt-40g"]) == 38.0  # ≥ 40 GB less the 5 % band tolerance
    assert budget_gb(rung["xt-16g"]) == 15.2
    assert budget_gb(dataclasses.replace(rung["xt-24g"], name="xt-24g eager")) == 22.8
    assert budget_gb(rung["svd-low"]) == 6.0  # the seed's "~6 GB with offloading"
    assert budget_gb(dataclasses.replace(rung["xt-40g"], variant="tiny")) is None


def test_verdicts_use_nvml_when_it_was_read() -> None:
    assert verdict({"budget_gb": 15.2, "peak_reserved_gb": 9.0, "nvml_peak_used_gb": 10.1}) == (
        "pass"
    )
    # torch's reserved memory fits, but the card also holds the context: NVML decides.
    assert verdict({"budget_gb": 15.2, "peak_reserved_gb": 14.9, "nvml_peak_used_gb": 15.8}) == (
        "FAIL: needs 15.8 GB, the README row allows 15.2"
    )
    assert verdict({"budget_gb": 7.2, "peak_reserved_gb": 6.0}) == "pass"
    assert verdict({"budget_gb": None, "peak_reserved_gb": 1.0}) == "n/a"
    assert verdict({"error": "out of memory: ..."}) == "error"


class _OomPipe:
    """Stands in for a pipeline that runs out of memory mid-clip (no CUDA here to do it)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        held = torch.zeros(1024)  # a tensor the failed frame holds, like a real OOM's
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {held.numel()}")


def test_a_rung_that_fails_is_freed_before_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = dataclasses.replace(GPU_TABLE[0][1], name="cpu", variant="tiny", device="cpu")
    pipe = _OomPipe()
    alive = weakref.ref(pipe)
    model = models.LoadedModel(pipe, variants.variant("tiny"), "test", profile, 0.1)
    monkeypatch.setattr(models, "load_model", lambda settings, p: model)
    del pipe
    job = {"variant": "tiny", "width": 128, "height": 64, "num_inference_steps": 2}
    row = gpu.time_profile(DEFAULTS, profile, job, clips=1, nvml_device=None)
    assert row["error"].startswith("out of memory: CUDA out of memory")
    assert row["verdict"] == "error"
    assert model.pipe is None  # evicted by the bench itself, not left to the next rung
    gc.collect()
    assert alive() is None


def test_the_restart_figure_starts_the_first_compiling_rung_cold_then_warm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make gpu-check`'s compile-cache figure: which rung it starts, and how it reads. The
    starts themselves (new processes, real compiles) run in tests/integration/
    test_compile_cache.py; here each start's report stands in for a GPU's."""
    from bench import coldstart, gpu_check

    _, rungs = gpu.gpu_rungs(fake_gpus("80GB")[0], DEFAULTS, "auto")
    assert gpu.compile_cache_figure(rungs[1:], {}, tmp_path) is None  # none compiles
    starts: list[tuple[str, str]] = []
    reports = iter(
        [
            {"load_s": 41.0, "warmup_s": 212.0, "compile_cache": _cache("miss", 0, 2)},
            {"load_s": 44.5, "warmup_s": 9.5, "compile_cache": _cache("hit", 2, 0)},
        ]
    )

    def start(profile: Any, env: dict[str, str], timeout: float) -> dict[str, Any]:
        starts.append((profile.name, env["SVDQ_COMPILE_CACHE"]))
        return next(reports)

    monkeypatch.setattr(coldstart, "start_once", start)
    figure = gpu.compile_cache_figure(gpu.with_eager_twins(rungs), {"X": "1"}, tmp_path / "cc")
    assert starts == [("xt-40g", str(tmp_path / "cc"))] * 2
    assert figure is not None
    assert (figure["warmup_saved_s"], figure["warmup_speedup"]) == (202.5, 22.3)
    text = coldstart.line(figure)
    assert text == (
        "xt-40g: cold load 41.0s, warm-up 212.0s, cache miss (0 hit, 2 compiled); "
        "warm load 44.5s, warm-up 9.5s, cache hit (2 hit, 0 compiled)"
    )
    report = {
        "device": "card",
        "pytest": {"returncode": 0, "result": "passed"},
        "benches": {"svd-xt": {"rows": [], "compile_cache": figure}},
    }
    assert f"svd-xt  restart, SVDQ_COMPILE_CACHE: {text}" in gpu_check.summary(report)[0]


def _cache(state: str, hits: int, misses: int) -> dict[str, Any]:
    return {"state": state, "hits": hits, "misses": misses}
