"""A second start with SVDQ_COMPILE_CACHE compiles less (issue 15, item 3), in real separate
processes: dynamo keeps compiled graphs in memory, so a second load in the same process would
hit whatever the disk held. Inductor's C++ backend on the CPU needs a C compiler.

Dynamo's counters decide (torch/_inductor/codecache.py: `counters["inductor"]
["fxgraph_cache_hit"] += 1` on a hit, `["fxgraph_cache_miss"] += 1` when it compiles; torch/
_functorch/_aot_autograd/autograd_cache.py: `counters["aot_autograd"]["autograd_cache_hit"]`).

- a small convolutional net through the worker's own `compile_unet` and
  `compilecache.open_cache`/`finish`: two starts ~30-50 s on 2 CPUs (the bundle-only and
  damaged-bundle cases take more starts and are `slow`);
- slow: the tiny SVD pipeline through `models.load_model`, as a worker starts, via
  bench/coldstart.py (the figure `make gpu-check` reports on a GPU; ~4 min on 2 CPUs).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import coldstart
from svdq.worker.compilecache import BUNDLE
from svdq.worker.profiles import CPU_PROFILE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("gcc") is None and shutil.which("clang") is None,
        reason="inductor's CPU backend builds C++: no gcc or clang here",
    ),
]
REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
from pathlib import Path
import torch
from torch._dynamo.utils import counters
from svdq.worker import compilecache, compiled

root = Path(sys.argv[1]) if sys.argv[1] else None
key = compilecache.cache_key(torch.__version__, "cpu-test", "net", "float32")
cache = compilecache.open_cache(root, key)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 3))
fast = compiled.compile_unet(net, 1, backend="inductor")
with torch.inference_mode():
    out = fast(torch.ones(1, 3, 16, 16))
cache.finish()
print(json.dumps({
    "cache": cache.to_dict(),
    "counters": {k: dict(counters[k]) for k in ("inductor", "aot_autograd")},
    "sum": float(out.sum()),
}))
"""


def _start(root: Path | None, tmp: Path) -> dict[str, Any]:
    """One process start: compile the net with the cache at `root` (None: off). Inductor's
    default folder is pointed into `tmp`, so an off start cannot reuse anything either."""
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp / "default-inductor"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(root or "")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.slow  # two processes compiling the UNet: ~30 s on 2 CPUs
def test_a_second_process_takes_its_graph_from_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "compile-cache"
    cold = _start(root, tmp_path)
    assert cold["cache"]["state"] == "miss" and cold["cache"]["saved"]
    assert cold["counters"]["inductor"].get("fxgraph_cache_miss") == 1
    assert not cold["counters"]["inductor"].get("fxgraph_cache_hit")
    [folder] = root.glob("torch-*/cpu-test/net-float32")
    assert (folder / BUNDLE).stat().st_size > 0 and any((folder / "inductor").iterdir())
    # Nothing went to torch's default folder (importing inductor makes it, empty).
    assert not any((tmp_path / "default-inductor").rglob("*"))

    warm = _start(root, tmp_path)
    assert warm["cache"]["state"] == "hit"
    assert warm["cache"]["loaded"] >= 1  # the bundle was read back
    assert warm["counters"]["inductor"].get("fxgraph_cache_hit") == 1
    assert not warm["counters"]["inductor"].get("fxgraph_cache_miss")  # nothing compiled
    assert warm["counters"]["aot_autograd"].get("autograd_cache_hit") == 1
    assert warm["sum"] == cold["sum"]  # the cached kernels compute what the compiled ones did


@pytest.mark.slow  # two compiles and a kernel rebuild: ~1-3 min on 2 CPUs
def test_the_bundle_alone_warms_an_empty_folder(tmp_path: Path) -> None:
    """The bundle is portable: copied to a host whose folder is empty (or pruned), it is
    loaded into torch's caches (`load_cache_artifacts`) and the start compiles nothing."""
    first = tmp_path / "first"
    _start(first, tmp_path)
    [folder] = first.glob("torch-*/cpu-test/net-float32")
    second = tmp_path / "second"
    target = second / folder.relative_to(first)
    target.mkdir(parents=True)
    shutil.copy(folder / BUNDLE, target / BUNDLE)
    warm = _start(second, tmp_path)
    assert warm["cache"]["state"] == "hit" and warm["cache"]["loaded"] >= 1
    assert not warm["counters"]["inductor"].get("fxgraph_cache_miss")


@pytest.mark.slow  # three starts, two of them compiling: ~1-2 min on 2 CPUs
def test_a_damaged_bundle_costs_a_compile_not_the_start(tmp_path: Path) -> None:
    root = tmp_path / "cc"
    _start(root, tmp_path)
    [folder] = root.glob("torch-*/cpu-test/net-float32")
    shutil.rmtree(folder / "inductor")  # only the bundle could have helped
    bundle = folder / BUNDLE
    bundle.write_bytes(bundle.read_bytes()[:200])  # cut short, as by a full disk
    again = _start(root, tmp_path)
    assert again["cache"]["state"] == "miss" and "unreadable" in again["cache"]["note"]
    assert again["cache"]["saved"]  # and a good bundle replaces it
    assert _start(root, tmp_path)["cache"]["state"] == "hit"


@pytest.mark.slow
def test_the_tiny_pipeline_restarts_warm(tmp_path: Path) -> None:
    """The worker's own load (models.load_model → warm-up at SVDQ_WARM_SHAPES) in two
    processes on one cache: the second takes its UNet graph from the cache and warms faster.
    The same code gives `make gpu-check` its cold/warm figure (bench/gpu.py)."""
    profile = dataclasses.replace(CPU_PROFILE, name="cpu-compiled", compile=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "SVDQ_MODEL_DIR": str(tmp_path / "models"),
        "SVDQ_WARM_SHAPES": "64x64x2",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "default-inductor"),
    }
    figure = coldstart.cold_vs_warm(profile, env, tmp_path / "cc", timeout=900)
    cold, warm = figure["cold"], figure["warm"]
    assert cold["compile_cache"]["state"] == "miss", figure
    assert cold["compile_cache"]["misses"] == 1 and cold["compile_cache"]["saved"]
    assert warm["compile_cache"]["state"] == "hit", figure
    assert warm["compile_cache"]["hits"] == 1 and warm["compile_cache"]["misses"] == 0
    assert warm["warmup_s"] < cold["warmup_s"]  # what the restart saved: minutes on a GPU
    assert "; warm load" in coldstart.line(figure)
    assert coldstart.line(figure).endswith("cache hit (1 hit, 0 compiled)")
