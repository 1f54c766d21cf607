"""Who a worker process is: its name, the queues it consumes, its GPU and its variant.

The parent learns all of it before the pool forks (Celery's `worker_init` gives the name and
queues; the launcher's SVDQ_GPU_INDEX and SVDQ_WORKER_VARIANT, read into the settings, give the
GPU and the variant), so the pool child inherits it. The metrics labels, the heartbeat hash and
the metrics port all read it from here.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from svdq.shared.settings import Settings


def gpu_index(configured: int | None, cuda_visible_devices: str = "") -> int:
    """This worker's GPU index: SVDQ_GPU_INDEX (`configured`, set by the launcher), else
    CUDA_VISIBLE_DEVICES when it names a single numbered GPU (a worker started by hand), else 0
    (a CPU worker or a UUID-pinned GPU)."""
    if configured is not None:
        return configured
    value = cuda_visible_devices.strip()
    return int(value) if value.isdigit() else 0


_process: tuple[int, str] | None = None  # (pid, id) of this process, made on first use


def process_id() -> str:
    """A random id for this process, new in every process (a forked pool child gets its own):
    what the attempt and the heartbeat name a process by. A pid is no name: a worker
    restarted in a container (a fresh PID namespace) gets its old pid back."""
    global _process
    if _process is None or _process[0] != os.getpid():
        _process = (os.getpid(), uuid.uuid4().hex[:16])
    return _process[1]


_boot: str | None = None  # this worker start's id, made on first use


def boot_id() -> str:
    """A random id for this worker start, the same in every process of it: the main process
    makes it at worker_init, before the pool forks, and every pool child inherits it (unlike
    `process_id`, it is not renewed in a forked child). The heartbeat carries it, whichever
    process beats, and the holder entry of every message the worker takes names it
    (shared/holders.py): a worker restarted under the same name has another."""
    global _boot
    if _boot is None:
        _boot = uuid.uuid4().hex[:16]
    return _boot


@dataclass(frozen=True)
class Identity:
    """One worker as `svdq stats`, Prometheus and the logs name it."""

    hostname: str
    queues: tuple[str, ...]
    gpu_index: int
    variant: str  # the variant the launcher planned for this worker (loaded first)
    boot: str = field(default_factory=boot_id)  # this worker start (see boot_id)

    @classmethod
    def of(
        cls,
        settings: Settings,
        hostname: str | None = None,
        queues: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Identity:
        """The identity from Celery's name and queues and the launcher's settings."""
        env = os.environ if env is None else env
        return cls(
            hostname=hostname or socket.gethostname(),
            queues=tuple(sorted(queues)),
            gpu_index=gpu_index(settings.worker.gpu_index, env.get("CUDA_VISIBLE_DEVICES", "")),
            variant=settings.worker.worker_variant,
        )
