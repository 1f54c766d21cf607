"""Reading the GPUs of this host without initialising CUDA: NVML, else `nvidia-smi`.

One small interface, `read_devices()`, returns what the profile table needs per device (total
and free VRAM, name, compute capability); an empty list means "no CUDA". It never imports
torch, so the launcher (the parent of the per-GPU workers) can call it before any fork.

Functions that act on devices take them as a parameter (`launch(args, devices=...)`,
`this_device(settings, devices)`): tests hand them made-up readings (tests/fixtures/gpus.py),
and `svdq plan --vram/--capability` plans for a card that is not here.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
import shutil
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdq.shared.errors import ConfigError

log = logging.getLogger(__name__)

_UNITS = {"gib": 1024**3, "gb": 10**9, "mib": 1024**2, "mb": 10**6, "": 1}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(gib|gb|mib|mb|)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    """One GPU, or one MIG instance of a GPU, as the driver reports it."""

    index: int  # svdq's number for it: NVML's (PCI bus) order, a MIG GPU's instances in its
    # place; names the worker (gpu<i>), SVDQ_GPU_INDEX and the metrics port
    name: str
    total_bytes: int
    free_bytes: int | None
    capability: tuple[int, int] | None
    uuid: str | None = None  # GPU-… or MIG-…: what the launcher puts in CUDA_VISIBLE_DEVICES
    nvml_index: int | None = None  # the physical GPU's NVML index when it differs from index
    parent_uuid: str | None = None  # a MIG instance's GPU

    @property
    def gpu_index(self) -> int:
        """The physical GPU's NVML index (= its CUDA index under CUDA_DEVICE_ORDER=PCI_BUS_ID)."""
        return self.index if self.nvml_index is None else self.nvml_index

    def cuda_visible(self) -> str:
        """What CUDA_VISIBLE_DEVICES names this device by: its UUID when known (whatever the
        device order), else its PCI-bus index."""
        return self.uuid or str(self.gpu_index)

    def to_dict(self) -> dict[str, object]:
        """JSON form for `svdq plan --json`."""
        cap = f"{self.capability[0]}.{self.capability[1]}" if self.capability else None
        out: dict[str, object] = {
            "index": self.index,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "capability": cap,
        }
        if self.uuid:
            out["uuid"] = self.uuid
        return out


def parse_size(text: str, name: str = "--vram") -> int:
    """'12GiB', '24GB', '8000MiB' or plain bytes → bytes; ConfigError naming `name` if not."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"{name}={text!r} is not allowed: a size such as 24GiB, 12GB or 8000MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_capability(text: str, name: str = "--capability") -> tuple[int, int]:
    """'8.6' → (8, 6); ConfigError naming `name` if it is not major.minor."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    if not match:
        raise ConfigError(f"{name}={text!r} is not allowed: major.minor, e.g. 8.6")
    return int(match.group(1)), int(match.group(2))


def read_devices() -> list[Device]:
    """Every GPU on this host, in driver order; [] when there is no CUDA."""
    try:
        import pynvml  # nvidia-ml-py: talks to the driver, does not create a CUDA context

        return from_nvml(pynvml)
    except Exception:  # no library, no driver, no GPU: try the command line tool
        return _from_nvidia_smi()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def from_nvml(nvml: Any) -> list[Device]:
    """The devices NVML (the `pynvml` module, or a stand-in with its API) reports. A GPU in
    MIG mode is listed as its MIG instances, each read through its own handle (memory, name,
    UUID), never through the parent's: a 1g.10gb slice of an 80 GB card has 10 GB. One in MIG
    mode without instances is left out, with a warning telling the operator what to do."""
    nvml.nvmlInit()
    try:
        devices: list[Device] = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            capability = (int(major), int(minor))
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            migs = _mig_handles(nvml, handle)
            if migs == []:
                # MIG mode with no instance: CUDA has no device there (a worker planned on the
                # whole card would crash at its first CUDA call, again at every restart).
                log.warning(
                    "GPU %d (%s, %s) is in MIG mode but has no MIG instances: CUDA sees no "
                    "device there, so svdq leaves it out. Create instances (`nvidia-smi mig "
                    "-lgip` lists the profiles; `nvidia-smi mig -i %d -cgi <profile> -C` "
                    "creates one) or turn MIG off (`nvidia-smi -i %d -mig 0`)",
                    i,
                    _text(nvml.nvmlDeviceGetName(handle)),
                    uuid,
                    i,
                    i,
                )
                continue
            for part in migs or [handle]:
                mem = nvml.nvmlDeviceGetMemoryInfo(part)
                devices.append(
                    Device(
                        index=len(devices),
                        name=_text(nvml.nvmlDeviceGetName(part)),
                        total_bytes=int(mem.total),
                        free_bytes=int(mem.free),
                        capability=capability,
                        uuid=_text(nvml.nvmlDeviceGetUUID(part)) if migs else uuid,
                        nvml_index=i if i != len(devices) else None,
                        parent_uuid=uuid if migs else None,
                    )
                )
        return devices
    finally:
        nvml.nvmlShutdown()


def _mig_handles(nvml: Any, handle: Any) -> list[Any] | None:
    """The MIG instance handles of a GPU in MIG mode ([] when it has none); None when the GPU
    is not in MIG mode. nvmlDeviceGetMigMode
    returns [current, pending] and raises NVMLError (not supported) on GPUs without MIG;
    nvmlDeviceGetMigDeviceHandleByIndex raises NVMLError (not found) for an empty slot."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:
        return None
    if current != nvml.NVML_DEVICE_MIG_ENABLE:
        return None
    found = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            found.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))
        except nvml.NVMLError:
            continue
    return found


def visible(devices: list[Device], cuda_visible_devices: str | None) -> list[Device]:
    """The devices a preset CUDA_VISIBLE_DEVICES (Slurm, a container runtime, the operator)
    leaves to CUDA, in its order; None (unset) leaves all. Entries are PCI-bus indices (svdq
    sets CUDA_DEVICE_ORDER=PCI_BUS_ID), GPU-/MIG- UUIDs or unique UUID prefixes; as in CUDA,
    the list ends at the first entry that names no device, and an empty value hides them all."""
    if cuda_visible_devices is None:
        return list(devices)
    chosen: list[Device] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.isdigit():
            found = [d for d in devices if d.gpu_index == int(entry)]
        elif entry.startswith(("GPU-", "MIG-")):
            found = [
                d
                for d in devices
                if (d.uuid or "").startswith(entry) or (d.parent_uuid or "").startswith(entry)
            ]
        else:
            found = []
        if not found:
            break
        chosen += [d for d in found if d not in chosen]
    return chosen


def use_pci_bus_order(env: MutableMapping[str, str]) -> None:
    """Make CUDA number GPUs as NVML does (PCI bus order); CUDA's default puts the fastest
    first, so on a mixed host CUDA device 0 could be another card than NVML's 0. CUDA reads it
    once, when it initialises: set it before anything touches CUDA."""
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"


def pin_device(env: MutableMapping[str, str], device: Device) -> None:
    """Make `device` the only GPU, and so `cuda` (device 0), of a process started with `env`
    or of this one before torch first asks CUDA: PCI bus order, and CUDA_VISIBLE_DEVICES
    naming it (its UUID when known: a MIG instance has no index)."""
    use_pci_bus_order(env)
    env["CUDA_VISIBLE_DEVICES"] = device.cuda_visible()


def _from_nvidia_smi() -> list[Device]:
    """The fallback when NVML cannot be loaded. It lists whole GPUs only (no MIG instances)."""
    if shutil.which("nvidia-smi") is None:
        return []
    probe = subprocess.run(
        ["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        return []
    return parse_nvidia_smi(probe.stdout)


SMI_QUERY = "index,uuid,name,memory.total,memory.free,compute_cap"


def _mib(text: str) -> int | None:
    """A MiB figure in bytes; None for what nvidia-smi prints when it has none ([N/A],
    [Not Supported], [Insufficient Permissions], …)."""
    try:
        return int(float(text)) * 1024**2
    except ValueError:
        return None


def parse_nvidia_smi(text: str) -> list[Device]:
    """Rows of `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free,compute_cap
    --format=csv,noheader,nounits` (memory in MiB; rows without the uuid column are read
    too) → devices. A field it cannot read is "[N/A]": free memory or compute capability then
    stay unknown; a GPU whose total memory is unknown cannot be planned and is left out, said
    in the log."""
    devices = []
    for line in text.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 5:
            parts.insert(1, "")
        if len(parts) != 6 or not parts[0].isdigit():
            log.warning("nvidia-smi: cannot read the row %r; left out", line)
            continue
        index, uuid, name, total, free, cap = parts
        total_bytes = _mib(total)
        if total_bytes is None:
            log.warning(
                "nvidia-smi: GPU %s (%s) reports memory.total=%s; left out", index, name, total
            )
            continue
        capability = (
            parse_capability(cap, "compute_cap") if re.fullmatch(r"\d+\.\d+", cap) else None
        )
        devices.append(
            Device(
                int(index),
                name,
                total_bytes,
                _mib(free),
                capability,
                uuid=uuid if uuid.startswith(("GPU-", "MIG-")) else None,
            )
        )
    return devices


def torch_build() -> tuple[str, str | None] | None:
    """(version, CUDA version or None for a CPU build) of the installed torch, read from its
    `torch/version.py` (`__version__ = '2.13.0+cpu'`, `cuda: Optional[str] = None`) without
    importing torch: the launcher must not. None when torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            values[target.id] = value.value
    cuda = values.get("cuda")
    return str(values.get("__version__", "?")), str(cuda) if cuda else None


def torch_cuda_build() -> str | None:
    """The CUDA version the installed torch was built for; None for a CPU build or no torch."""
    build = torch_build()
    return build[1] if build else None
