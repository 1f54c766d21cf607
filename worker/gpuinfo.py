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
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from svdq.shared.errors import ConfigError

_UNITS = {"gib": 1024**3, "gb": 10**9, "mib": 1024**2, "mb": 10**6, "": 1}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(gib|gb|mib|mb|)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    """One GPU as the driver reports it."""

    index: int  # the driver's (PCI bus) order: what CUDA_VISIBLE_DEVICES means with
    # CUDA_DEVICE_ORDER=PCI_BUS_ID, which the launcher sets
    name: str
    total_bytes: int
    free_bytes: int | None
    capability: tuple[int, int] | None

    def to_dict(self) -> dict[str, object]:
        """JSON form for `svdq plan --json`."""
        cap = f"{self.capability[0]}.{self.capability[1]}" if self.capability else None
        return {
            "index": self.index,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "capability": cap,
        }


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
        return _from_nvml()
    except Exception:  # no library, no driver, no GPU: try the command line tool
        return _from_nvidia_smi()


def _from_nvml() -> list[Device]:
    import pynvml  # nvidia-ml-py: talks to the driver, does not create a CUDA context

    pynvml.nvmlInit()
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            devices.append(
                Device(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    capability=(int(major), int(minor)),
                )
            )
        return devices
    finally:
        pynvml.nvmlShutdown()


def _from_nvidia_smi() -> list[Device]:
    if shutil.which("nvidia-smi") is None:
        return []
    query = "index,name,memory.total,memory.free,compute_cap"
    probe = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        return []
    return parse_nvidia_smi(probe.stdout)


def parse_nvidia_smi(text: str) -> list[Device]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,memory.free,compute_cap
    --format=csv,noheader,nounits` (memory in MiB) → devices."""
    devices = []
    for line in text.strip().splitlines():
        index, name, total, free, cap = (part.strip() for part in line.split(","))
        capability = parse_capability(cap, "compute_cap") if "." in cap else None
        devices.append(
            Device(
                int(index),
                name,
                int(float(total)) * 1024**2,
                int(float(free)) * 1024**2 if free.replace(".", "").isdigit() else None,
                capability,
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
