"""What bench/gpu.py measures about memory, and how it judges a rung against the README.

`NvmlPeak` samples the memory NVML reports used on one card while a rung runs: unlike torch's
counters it includes the CUDA context, cuBLAS/cuDNN workspaces and whatever else holds the
card, so it is the figure a card must actually have. nvidia-ml-py's `nvmlDeviceGetMemoryInfo`
returns a `c_nvmlMemory_t` with `('total', c_ulonglong), ('free', c_ulonglong), ('used',
c_ulonglong)` in bytes (pynvml.py); we read `used`.

`budget_gb` is the least memory a card in the rung's README row has (the row's floor less the
5 % band tolerance, worker/profiles.py); the lowest row, `svd-low` (< 8 GB), is held to the
seed's "svd fp16 with offloading ~6 GB". A rung passes when what it needed fits its budget.
"""

from __future__ import annotations

import threading
from typing import Any

from svdq.worker.gpuinfo import Device
from svdq.worker.profiles import BAND_TOLERANCE, ROW_FLOOR, Profile

SVD_LOW_BUDGET_GB = 6.0  # SVD-NOTES.md: svd, fp16 with offloading, ~6 GB
POLL_SECONDS = 0.02


def budget_gb(profile: Profile) -> float | None:
    """The VRAM budget of the rung's README row in decimal GB; None for tiny and CPU rungs
    (the tiny model says nothing about what svd-xt needs)."""
    if profile.device != "cuda" or profile.variant == "tiny":
        return None
    name = profile.name.split(" ")[0].removesuffix("*")
    if name not in ROW_FLOOR:
        return None
    floor = ROW_FLOOR[name]
    return SVD_LOW_BUDGET_GB if floor == 0 else round(floor * (1 - BAND_TOLERANCE), 1)


def verdict(row: dict[str, Any]) -> str:
    """pass / FAIL / error / n/a for one bench row (NVML's peak when read, else torch's peak
    reserved memory, against `budget_gb`)."""
    if "error" in row:
        return "error"
    budget = row.get("budget_gb")
    need = row.get("nvml_peak_used_gb", row.get("peak_reserved_gb"))
    if budget is None or need is None:
        return "n/a"
    if need <= budget:
        return "pass"
    return f"FAIL: needs {need:.1f} GB, the README row allows {budget:.1f}"


class NvmlPeak:
    """Peak NVML used memory of one card between start() and stop() (a polling thread).

    `stop()` returns (used at start, peak used) in bytes, or None when NVML cannot be read
    (no library, no driver, device None).

    The card is found by its UUID (a GPU-… or MIG-… one), else by its physical GPU's NVML
    index (`Device.gpu_index`), never by svdq's `Device.index`: once a GPU in MIG mode is
    listed as its instances the two numberings differ, and a MIG instance has no NVML index
    of its own. NVML's `nvmlDeviceGetHandleByUUID` takes "The UUID of the target GPU or MIG
    instance" and returns "the device handle or MIG device handle"; pynvml.py wraps it as
    `nvmlDeviceGetHandleByUUID(uuid)` (`@convertStrBytes`: a str is fine)."""

    def __init__(self, device: Device | None) -> None:
        self.device = device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._before: int | None = None
        self._peak = 0
        self._handle: Any = None

    def _used(self) -> int:
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def start(self) -> None:
        if self.device is None:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            if self.device.uuid:
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(self.device.uuid)
            else:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device.gpu_index)
            self._before = self._peak = self._used()
        except Exception:  # no NVML here: torch's counters still report
            self._handle = None
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._peak = max(self._peak, self._used())

    def stop(self) -> tuple[int, int] | None:
        if self._handle is None or self._before is None:
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, self._used())
        import pynvml

        pynvml.nvmlShutdown()
        return self._before, self._peak
