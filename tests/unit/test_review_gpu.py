"""Review of the GPU path (issue 9, second round): defects a CPU can show, each expected to fail
until fixed (xfail strict: the mark comes off with the fix).

Finding numbers refer to the review report on branch adv9.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from bench import gpu_check
from svdq.shared.settings import Settings
from svdq.worker import models
from svdq.worker.gpuinfo import Device
from svdq.worker.profiles import GPU_TABLE

XT_40G, XT_24G = GPU_TABLE[0][1], GPU_TABLE[1][1]


def test_a_soft_time_limit_during_a_reload_is_not_a_failed_rung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """billiard raises SoftTimeLimitExceeded (an Exception) from its SIGUSR1 handler wherever
    the pool child is: during a step-down reload or a variant switch's compile warm-up it lands
    in `load_first`'s `except Exception`. The rung is then recorded as "load_failed", the next
    one loads, the job runs on past its soft limit (delivery.py's JobTimeoutError never
    happens) until the hard limit kills the child; on the last rung it becomes a
    WorkerFatalError and the job is requeued instead of timing out."""
    loaded: list[str] = []

    def load(settings: Settings, profile: Any, lower: tuple[Any, ...] = ()) -> Any:
        loaded.append(profile.name)
        if profile.name == XT_40G.name:
            raise SoftTimeLimitExceeded()
        return object()

    monkeypatch.setattr(models, "load_model", load)
    tried: list[dict[str, Any]] = []
    with pytest.raises(SoftTimeLimitExceeded):
        models.load_first(Settings.from_env({}), (XT_40G, XT_24G), tried)
    assert loaded == [XT_40G.name] and tried == []


def _two_gpus() -> list[Device]:
    return [
        Device(0, "fake A", 80 * 10**9, 80 * 10**9, (9, 0), uuid="GPU-aaaa"),
        Device(1, "fake B", 80 * 10**9, 80 * 10**9, (9, 0), uuid="GPU-bbbb"),
    ]


def test_gpu_check_runs_its_torch_processes_on_the_gpu_it_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SVDQ_GPU_INDEX=1 make gpu-check` reports GPU 1 (name, JSON file, NVML samples in
    bench/gpu.py), but neither CUDA_VISIBLE_DEVICES nor CUDA_DEVICE_ORDER reaches its pytest
    and bench subprocesses: tests/gpu use "cuda" (device 0), i.e. GPU 0, and without
    CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA's device 0 is the fastest card, not NVML's 0."""
    monkeypatch.setenv("SVDQ_GPU_INDEX", "1")
    monkeypatch.setenv("SVDQ_MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    calls: list[tuple[list[str], dict[str, str]]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = dict(kwargs.get("env") or os.environ)
        calls.append((list(argv), env))
        return subprocess.CompletedProcess(argv, 0, stdout="12.8\n", stderr="")

    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    gpu_check.main(["--output", str(tmp_path / "out.json")], devices=_two_gpus())
    torch_runs = [(a, e) for a, e in calls if "pytest" in a or "bench/gpu.py" in a]
    assert torch_runs, "gpu-check ran neither pytest nor bench/gpu.py"
    for argv, env in torch_runs:
        assert env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID", argv
        assert env.get("CUDA_VISIBLE_DEVICES") in ("GPU-bbbb", "1"), argv


def test_the_bench_samples_nvml_on_the_card_it_benches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GPU 0 in MIG mode is listed as two instances (svdq indices 0 and 1), so the whole GPU 1
    is svdq's device 2 with nvml_index 1. bench/gpu.py hands `device.index` (2) to NvmlPeak,
    which calls nvmlDeviceGetHandleByIndex(2): another card, or none (then no NVML figure and
    the verdict falls back to torch's). A MIG instance itself gets a whole card's handle."""
    torch = pytest.importorskip("torch")
    from bench import gpu as bench_gpu

    devices = [
        Device(0, "MIG 3g.40gb", 40 * 10**9, None, (8, 0), "MIG-a", None, "GPU-p"),
        Device(1, "MIG 3g.40gb", 40 * 10**9, None, (8, 0), "MIG-b", 0, "GPU-p"),
        Device(2, "whole", 80 * 10**9, None, (8, 0), "GPU-w", 1),
    ]
    monkeypatch.setenv("SVDQ_GPU_INDEX", "2")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # main() sets it: restored after
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # main() pins the card: restored after
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_gpu, "read_devices", lambda: devices)
    seen: list[Any] = []

    def time_profile(settings: Any, profile: Any, job: Any, clips: int, nvml: Any) -> Any:
        seen.append(nvml)
        return {"profile": profile.to_dict(), "verdict": "n/a"}

    monkeypatch.setattr(bench_gpu, "time_profile", time_profile)
    bench_gpu.main(["--variant", "tiny", "--output", str(tmp_path / "b.json")])
    assert seen
    for nvml in seen:
        index = getattr(nvml, "gpu_index", nvml)  # an int, or the Device itself once fixed
        assert index == 1
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-w"  # torch's "cuda" is that card too


class _Nvml:
    """pynvml's handle lookups and memory reading (pynvml.py), over made-up cards."""

    def __init__(self) -> None:
        self.looked_up: list[Any] = []

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None: ...

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.looked_up.append(uuid)
        return uuid

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self.looked_up.append(index)
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return type("Memory", (), {"used": 7 * 10**9})()


def test_nvml_is_sampled_by_uuid_else_by_the_physical_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding 7: a MIG instance has no NVML index of its own, and svdq's index is not
    NVML's once a MIG GPU is listed as its instances."""
    from bench.gpumem import NvmlPeak

    nvml = _Nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    for device in (
        Device(1, "MIG 3g.40gb", 40 * 10**9, None, (8, 0), "MIG-b", 0, "GPU-p"),
        Device(2, "whole, no UUID (nvidia-smi)", 80 * 10**9, None, (8, 0), None, 1),
    ):
        sampler = NvmlPeak(device)
        sampler.start()
        assert sampler.stop() == (7 * 10**9, 7 * 10**9)
    assert nvml.looked_up == ["MIG-b", 1]


CU128 = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"


@pytest.mark.parametrize("target", ["gpu-check", "lint"])
def test_make_keeps_the_cuda_torch_the_readme_installed(tmp_path: Path, target: str) -> None:
    """The stamp is named after TORCH_SPEC's hash and the rule deletes every other stamp, so
    `make gpu-check` (TORCH_SPEC defaults to plain `torch==2.13.0`) finds no stamp for the
    default and runs `pip install --force-reinstall --no-deps torch==2.13.0` over the cu128
    build (from PyPI, or a CPU wheel where pip is set up for one: then gpu_check.py installs
    cu128 again, and the next `make lint`/`make test` flips it back). `make -n` only prints."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    digest = subprocess.run(
        ["sha1sum"], input=CU128, capture_output=True, text=True, check=True
    ).stdout[:12]
    (venv / f".torch-{digest}").touch()  # what `make install TORCH_SPEC=<cu128>` left
    os.utime(venv / f".torch-{digest}", (1, 1))
    (venv / ".installed").touch()
    repo = Path(__file__).resolve().parents[2]
    plan = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "--force-reinstall" not in plan and "pip install -q torch" not in plan, plan
