"""Defect 9 (issue 9): device identity. NVML readings are injected through a stand-in with
pynvml's API (nvidia-ml-py, .venv/.../pynvml.py): `nvmlDeviceGetName`/`nvmlDeviceGetUUID` return
str (`@convertStrBytes`), `nvmlDeviceGetMigMode` returns `[current, pending]` and raises NVMLError
on a GPU without MIG, `nvmlDeviceGetMigDeviceHandleByIndex` raises NVMLError for an empty slot,
`nvmlDeviceGetMemoryInfo` returns `total`/`free`/`used` in bytes.

A preset CUDA_VISIBLE_DEVICES (indices, UUIDs) is respected; MIG instances are read through
their own handles (a 1g.10gb slice is planned as a 10 GB card, not as its 80 GB parent); CUDA is
told to count in PCI bus order; nvidia-smi's `[N/A]` is read, not crashed on.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from svdq.shared.settings import Settings
from svdq.worker import launch
from svdq.worker.devices import device_plan, this_device
from svdq.worker.gpuinfo import from_nvml, parse_nvidia_smi, visible
from svdq.worker.supervisor import Supervisor
from tests.fixtures.gpus import cuda_torch_build

GB = 10**9
DEFAULTS = Settings.from_env({})


class NVMLError(Exception):
    """pynvml.NVMLError (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NOT_FOUND, …)."""


@dataclass
class Memory:
    total: int
    free: int
    used: int = 0


@dataclass
class Handle:
    name: str
    uuid: str
    total: int
    capability: tuple[int, int] = (9, 0)
    mig: list[Handle | None] | None = None  # None: no MIG support; a list: MIG slots
    mig_enabled: bool = True


@dataclass
class FakeNvml:
    """The slice of pynvml's module API that svdq calls, over made-up cards."""

    gpus: list[Handle]
    calls: list[str] = field(default_factory=list)
    NVMLError = NVMLError
    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        return self.gpus[index]

    def nvmlDeviceGetMemoryInfo(self, handle: Handle) -> Memory:
        return Memory(handle.total, handle.total - 500 * 2**20, 500 * 2**20)

    def nvmlDeviceGetName(self, handle: Handle) -> str:
        return handle.name

    def nvmlDeviceGetUUID(self, handle: Handle) -> str:
        return handle.uuid

    def nvmlDeviceGetCudaComputeCapability(self, handle: Handle) -> tuple[int, int]:
        return handle.capability

    def nvmlDeviceGetMigMode(self, handle: Handle) -> list[int]:
        if handle.mig is None:
            raise NVMLError("Not Supported")
        return [int(handle.mig_enabled), int(handle.mig_enabled)]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Handle) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Handle, index: int) -> Handle:
        slots = handle.mig or []
        if index >= len(slots) or slots[index] is None:
            raise NVMLError("Not Found")
        found = slots[index]
        assert found is not None
        return found


A100 = "GPU-a100a100-0000-0000-0000-000000000001"
SLICE_10, SLICE_40 = "MIG-1g10-0000-0000-0000-000000000002", "MIG-3g40-0000-0000-0000-000000000003"


def host() -> FakeNvml:
    """An H100 (MIG off), an A100 80GB in MIG mode with a 1g.10gb and a 3g.40gb instance in
    slots 0 and 2, and an RTX 4090 (no MIG)."""
    return FakeNvml(
        [
            Handle(
                "NVIDIA H100 80GB HBM3", "GPU-h100h100-0000", 85 * GB, mig=[], mig_enabled=False
            ),
            Handle(
                "NVIDIA A100-SXM4-80GB",
                A100,
                85 * GB,
                (8, 0),
                mig=[
                    Handle("NVIDIA A100-SXM4-80GB MIG 1g.10gb", SLICE_10, 10_200_000_000),
                    None,
                    Handle("NVIDIA A100-SXM4-80GB MIG 3g.40gb", SLICE_40, 40_500_000_000),
                ],
            ),
            Handle("NVIDIA GeForce RTX 4090", "GPU-40904090-0000", 25_700_000_000, (8, 9)),
        ]
    )


def test_mig_instances_are_read_through_their_own_handles() -> None:
    nvml = host()
    devices = from_nvml(nvml)
    assert nvml.calls == ["init", "shutdown"]
    assert [(d.index, d.gpu_index, d.uuid) for d in devices] == [
        (0, 0, "GPU-h100h100-0000"),
        (1, 1, SLICE_10),
        (2, 1, SLICE_40),
        (3, 2, "GPU-40904090-0000"),
    ]
    small = devices[1]
    assert small.total_bytes == 10_200_000_000 and small.name.endswith("MIG 1g.10gb")
    assert small.capability == (8, 0) and small.parent_uuid == A100
    # Read through the parent, the slice was an 80 GB card: xt-40g, compiled. Now:
    assert device_plan(small, DEFAULTS).ladder[0].name == "xt-10g"
    assert device_plan(devices[2], DEFAULTS).ladder[0].name == "xt-40g"


@pytest.mark.parametrize(
    ("preset", "indices"),
    [
        (None, [0, 1, 2, 3]),
        ("2", [3]),  # a PCI-bus index: the 4090
        ("2,0", [3, 0]),  # CUDA's order is the list's
        ("GPU-40904090", [3]),  # a unique UUID prefix
        (A100, [1, 2]),  # a MIG GPU's UUID: its instances
        (SLICE_40, [2]),
        ("0,7,2", [0]),  # as in CUDA, the list ends at an entry that names no device
        ("", []),  # hides every GPU
        ("-1", []),
    ],
)
def test_a_preset_visible_list_is_respected(preset: str | None, indices: list[int]) -> None:
    devices = from_nvml(host())
    assert [d.index for d in visible(devices, preset)] == indices


def test_a_worker_started_under_slurm_plans_for_its_own_gpu() -> None:
    devices = from_nvml(host())
    env = {"CUDA_VISIBLE_DEVICES": "GPU-40904090-0000"}
    assert this_device(DEFAULTS, devices, env) == devices[3]  # was NVML's GPU 0, an H100
    assert this_device(DEFAULTS, devices, {"CUDA_VISIBLE_DEVICES": ""}) is None
    launched = Settings.from_env({"SVDQ_GPU_INDEX": "1"})
    assert this_device(launched, devices, env) == devices[1]  # the launcher's choice stands


def test_the_launcher_starts_only_the_visible_gpus_by_uuid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[list[object]] = []
    monkeypatch.setattr(Supervisor, "run", lambda self: started.append(self.children) or 0)
    monkeypatch.setattr(launch, "_prepare_model", lambda settings, variant: None)
    monkeypatch.setattr(launch, "torch_build", cuda_torch_build)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{SLICE_10},2")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    args = argparse.Namespace(gpus="all", variant="tiny", queues=None, name=None)
    assert launch.launch(args, devices=from_nvml(host())) == 0
    (children,) = started
    envs = {c.name.split("@")[0]: c.env for c in children}  # type: ignore[attr-defined]
    assert sorted(envs) == ["gpu1", "gpu3"]
    assert envs["gpu1"]["CUDA_VISIBLE_DEVICES"] == SLICE_10  # a MIG instance has no index
    assert envs["gpu3"]["CUDA_VISIBLE_DEVICES"] == "GPU-40904090-0000"
    assert {e["CUDA_DEVICE_ORDER"] for e in envs.values()} == {"PCI_BUS_ID"}
    assert envs["gpu3"]["SVDQ_GPU_INDEX"] == "3"


def test_nvidia_smi_not_available_fields() -> None:
    text = (
        "0, GPU-aaaa, NVIDIA A100-SXM4-80GB, 81920, [N/A], 8.0\n"
        "1, GPU-bbbb, NVIDIA A100-SXM4-80GB, [N/A], [N/A], [N/A]\n"
        "2, GPU-cccc, Tesla T4, 15360, 14930, [Not Supported]\n"
    )
    devices = parse_nvidia_smi(text)  # used to raise ValueError on "[N/A]"
    assert [(d.index, d.uuid, d.free_bytes, d.capability) for d in devices] == [
        (0, "GPU-aaaa", None, (8, 0)),
        (2, "GPU-cccc", 14930 * 2**20, None),
    ]
    assert devices[0].total_bytes == 81920 * 2**20
    old = parse_nvidia_smi("0, NVIDIA GeForce RTX 4090, 24564, 24080, 8.9\n")  # no uuid column
    assert old[0].uuid is None and old[0].cuda_visible() == "0"


def test_a_mig_gpu_without_instances_is_left_out_and_plan_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    """Review finding 8: MIG mode on, no instance created. CUDA has no device there; planned
    as the whole card it was a worker crashing at its first CUDA call, restarted forever."""
    nvml = host()
    nvml.gpus[1].mig = []  # the A100: MIG on, its instances not created (yet)
    devices = from_nvml(nvml)
    assert [(d.index, d.gpu_index, d.uuid) for d in devices] == [
        (0, 0, "GPU-h100h100-0000"),
        (1, 2, "GPU-40904090-0000"),
    ]
    said = [r.getMessage() for r in caplog.records if r.name == "svdq.worker.gpuinfo"]
    assert said == [
        f"GPU 1 (NVIDIA A100-SXM4-80GB, {A100}) is in MIG mode but has no MIG instances: CUDA "
        "sees no device there, so svdq leaves it out. Create instances (`nvidia-smi mig -lgip` "
        "lists the profiles; `nvidia-smi mig -i 1 -cgi <profile> -C` creates one) or turn MIG "
        "off (`nvidia-smi -i 1 -mig 0`)"
    ]
    caplog.clear()
    monkeypatch.setattr(launch, "read_devices", lambda: from_nvml(nvml))
    args = argparse.Namespace(vram=None, capability=None, variant=None, json=False)
    assert launch.plan_command(args) == 0
    assert "GPU 1: NVIDIA GeForce RTX 4090" in capsys.readouterr().out
    assert any("no MIG instances" in r.getMessage() for r in caplog.records)
