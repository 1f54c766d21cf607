"""A worker's presence in Redis, for `svdq stats`, `svdq exporter` and the reaper: a heartbeat
hash (variant, profile, GPU, queues, current job, the worker start's boot id) that expires
SVDQ_HEARTBEAT_TTL seconds after its last beat, refreshed every third of that by a thread in
the pool child; the time of that beat under the worker's name in LAST_SEEN_KEY (kept after
the hash expires, so the reaper can say how long a dead host was silent); and one entry per
finished job on the FINISHED_STREAM stream, written by whichever process sees the end (the
parent sees a killed child or a hard time limit)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from svdq.shared.constants import FINISHED_STREAM, LAST_SEEN_KEY, worker_key
from svdq.worker.identity import Identity, process_id

log = logging.getLogger("svdq.metrics")
STREAM_KEEP_SECONDS = 2 * 3600


class Presence:
    """One worker's heartbeat hash and its entries on the finished-jobs stream.

    `model()` gives the loaded pipeline (or None: not yet, or the parent), read at every beat
    so a step-down or a variant switch shows at once; `extra()` adds fields to every beat.
    """

    def __init__(
        self,
        redis: Any,
        identity: Identity,
        ttl: int,
        model: Callable[[], Any] = lambda: None,
        extra: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.redis, self.identity, self.ttl, self.model = redis, identity, ttl, model
        self.extra = extra  # more fields for every beat (the child's load, warm-up, busy ratio)
        self.metrics_port: int | None = None  # set once /metrics is served
        self._stopping = threading.Event()

    def beat(self, fields: dict[str, Any] | None = None) -> None:
        """Refresh this worker's heartbeat hash (and set `fields` on it)."""
        model = self.model()
        entry = {
            "hostname": self.identity.hostname,
            "pid": os.getpid(),
            "proc": process_id(),
            "boot": self.identity.boot,
            "gpu": self.identity.gpu_index,
            "queues": ",".join(self.identity.queues),
            "metrics_port": self.metrics_port or "",
            "variant": model.info.name if model else "",
            "profile": model.profile.name if model else "",
            "device": model.profile.device if model else "",
            "beat_at": time.time(),
            **self.extra(),
            **(fields or {}),
        }
        key = worker_key(self.identity.hostname)
        seen = json.dumps(
            {
                "pid": entry["pid"],
                "proc": entry["proc"],
                "boot": entry["boot"],
                "at": entry["beat_at"],
            }
        )
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={k: str(v) for k, v in entry.items()})
        pipe.expire(key, self.ttl)
        pipe.hset(LAST_SEEN_KEY, self.identity.hostname, seen)
        pipe.execute()

    def start(self) -> threading.Thread:
        """Beat every third of the TTL from a daemon thread until `forget()`."""
        thread = threading.Thread(target=self._forever, args=(self.ttl / 3,), name="heartbeat")
        thread.daemon = True
        thread.start()
        return thread

    def _forever(self, every: float) -> None:
        while not self._stopping.is_set():
            try:
                self.beat()
            except Exception as exc:  # Redis away for a moment: the next beat tries again
                log.warning("worker heartbeat failed: %s", exc)
            self._stopping.wait(every)

    def finished(
        self,
        job_id: str,
        status: str,
        variant: str,
        reason: str = "",
        seconds: float | None = None,
        worker: str | None = None,
    ) -> None:
        """One entry on the finished-jobs stream; entries older than 2 h are trimmed away."""
        entry = {
            "job_id": job_id,
            "status": status,
            "variant": variant,
            "reason": reason,
            "worker": worker or self.identity.hostname,
            "seconds": "" if seconds is None else str(seconds),
        }
        min_id = f"{int((time.time() - STREAM_KEEP_SECONDS) * 1000)}-0"
        self.redis.xadd(FINISHED_STREAM, entry, minid=min_id, approximate=True)

    def forget(self) -> None:
        """Remove this worker's heartbeat hash and stop refreshing it (a clean stop)."""
        self._stopping.set()
        self.redis.delete(worker_key(self.identity.hostname))
