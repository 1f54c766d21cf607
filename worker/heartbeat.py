"""A worker's presence in Redis, for `svdq stats` and `svdq exporter`: a heartbeat hash
(variant, profile, GPU, queues, current job) refreshed every WORKER_KEY_TTL / 3 seconds by a
thread in the pool child, and one entry per finished job on the FINISHED_STREAM stream, written
by whichever process sees the end (the parent sees a killed child or a hard time limit)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Any

from svdq.shared.constants import FINISHED_STREAM, WORKER_KEY_TTL, worker_key

log = logging.getLogger("svdq.metrics")
STREAM_KEEP_SECONDS = 2 * 3600

# Filled in the parent at worker_init, inherited by the forked child.
worker: dict[str, Any] = {"hostname": socket.gethostname(), "queues": []}
state: dict[str, Any] = {}


def gpu_index(env: dict[str, str] | None = None) -> int:
    """This worker's GPU index: SVDQ_GPU_INDEX (set by the launcher), else CUDA_VISIBLE_DEVICES
    when it names a single numbered GPU, else 0 (a CPU worker or a UUID-pinned GPU)."""
    env = dict(os.environ) if env is None else env
    for name in ("SVDQ_GPU_INDEX", "CUDA_VISIBLE_DEVICES"):
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def loaded_model() -> Any:
    """The pipeline worker.tasks loaded in this process, or None (not yet, or the parent)."""
    tasks = sys.modules.get("svdq.worker.tasks")
    return getattr(tasks, "_loaded", {}).get("model") if tasks else None


def redis() -> Any:
    """The Redis client of the Celery result backend (one connection pool per process)."""
    if "redis" not in state:
        from svdq.worker.tasks import app

        state["redis"] = app.backend.client
    return state["redis"]


def beat(fields: dict[str, Any] | None = None) -> None:
    """Refresh this worker's heartbeat hash (and set `fields` on it)."""
    model = loaded_model()
    entry = {
        "hostname": worker["hostname"],
        "pid": os.getpid(),
        "gpu": gpu_index(),
        "queues": ",".join(worker["queues"]),
        "metrics_port": state.get("port", ""),
        "variant": model.info.name if model else "",
        "profile": model.profile.name if model else "",
        "device": model.profile.device if model else "",
        "beat_at": time.time(),
        **(fields or {}),
    }
    key = worker_key(worker["hostname"])
    pipe = redis().pipeline()
    pipe.hset(key, mapping={k: str(v) for k, v in entry.items()})
    pipe.expire(key, WORKER_KEY_TTL)
    pipe.execute()


def heartbeat_forever(every: float) -> None:
    """Beat every `every` seconds until `forget()`; run in a daemon thread of the child."""
    while not state.get("stopping"):
        try:
            beat()
        except Exception as exc:  # Redis away for a moment: the next beat tries again
            log.warning("worker heartbeat failed: %s", exc)
        time.sleep(every)


def record(task: Any, status: str, variant: str, reason: str, seconds: float | None = None) -> None:
    """One entry on the finished-jobs stream; entries older than 2 h are trimmed away."""
    entry = {
        "job_id": task.request.id or "",
        "status": status,
        "variant": variant,
        "reason": reason,
        "worker": task.request.hostname or worker["hostname"],
        "seconds": "" if seconds is None else str(seconds),
    }
    min_id = f"{int((time.time() - STREAM_KEEP_SECONDS) * 1000)}-0"
    redis().xadd(FINISHED_STREAM, entry, minid=min_id, approximate=True)


def forget() -> None:
    """Remove this worker's heartbeat hash and stop refreshing it (a clean stop)."""
    state["stopping"] = True
    redis().delete(worker_key(worker["hostname"]))
