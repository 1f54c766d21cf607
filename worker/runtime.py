"""Everything one worker process works with, made once and handed to every step of a job.

A pool child builds its `Runtime` in Celery's `worker_process_init` (worker/tasks.py), after
the fork and before it reports ready: the settings, the Celery app, the Redis client of the
result backend, the object store, the metrics, the worker's presence in Redis and the loaded
model. Nothing in the worker reaches back into the task module for any of them; the job's
lifecycle (worker/lifecycle.py) receives the runtime and passes on what each step needs.

The parent process never builds one: CUDA must not be touched before the pool forks. What
the parent knows (the worker's name, queues, GPU and variant: `Identity`) it learns at
`worker_init`, and the child inherits it. With SVDQ_OVERLAP ≥ 2 there is no fork (Celery's
threads pool): the one process builds its Runtime at `worker_init`, and its jobs share it
(worker/overlap.py: the GPU lock, the jobs in flight, the hard-limit watchdog).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from svdq.shared.settings import Settings
from svdq.shared.storage import ObjectStore, open_store
from svdq.worker.heartbeat import Presence
from svdq.worker.identity import Identity, process_id
from svdq.worker.metrics import WorkerMetrics, metrics_port
from svdq.worker.models import LoadedModel, settle
from svdq.worker.overlap import GpuGate, InFlight, Watchdog
from svdq.worker.reaper import Reaper
from svdq.worker.resident import RungMemory, load_initial
from svdq.worker.sharing import Sharing

log = logging.getLogger("svdq.worker")


class Runtime:
    """One pool child's (with overlap: the worker process's) settings, connections, counters
    and model."""

    def __init__(
        self, settings: Settings, app: Celery, identity: Identity, store: ObjectStore
    ) -> None:
        self.settings = settings
        self.app = app
        self.identity = identity
        self.redis: Any = app.backend.client  # one connection pool per process
        self.store = store
        self.model: LoadedModel | None = None  # loaded by `start`; swapped in place after
        self.metrics = WorkerMetrics()
        self.rungs = RungMemory.of(self.redis, identity)  # where a restart starts
        # Read at every beat and scrape, so a step-down or a variant switch shows at once.
        # Queues dead hosts' jobs again (worker/reaper.py says why it runs here, in the child).
        self.reaper = Reaper(
            app, store, identity.hostname, settings.reap_interval, self.metrics.reaped
        )
        self.inflight = InFlight()  # the jobs held now, and the one on the GPU
        self.gpu_gate = GpuGate()  # one job at a time in the GPU phase
        # No timer ends a thread: with overlap, a job past its hard limit ends the process.
        # With overlap, a lost process's other job is not blamed for it (worker/sharing.py).
        self.sharing = (
            Sharing(self.redis, process_id(), settings.result_expires)
            if settings.overlap > 1
            else None
        )
        self.watchdog = (
            Watchdog(self.inflight, culprit=self.sharing.hard_limit) if self.sharing else None
        )
        self.presence = Presence(
            self.redis,
            identity,
            settings.heartbeat_ttl,
            lambda: self.model,
            lambda: {**self.metrics.beat_fields(), **self.inflight.fields()},
        )

    @classmethod
    def start(
        cls,
        settings: Settings,
        app: Celery,
        identity: Identity,
        load: Callable[[Settings, str, RungMemory], LoadedModel] = load_initial,
    ) -> Runtime:
        """Open the store, serve /metrics, start the heartbeat, then load the model (so
        `svdq stats` shows a worker that is still loading). Raises whatever loading raised."""
        runtime = cls(settings, app, identity, open_store(settings))
        port = metrics_port(settings.metrics_port, identity.gpu_index)
        if runtime.metrics.serve(port, identity, lambda: runtime.model, settings.metrics_host):
            runtime.presence.metrics_port = port
        runtime.presence.start()
        runtime.reaper.start()
        if runtime.watchdog is not None:
            runtime.watchdog.start()
        began = time.perf_counter()
        runtime.model = load(settings, identity.variant, runtime.rungs)
        # The model and libraries live as long as the process (until a swap evicts the model):
        # keep them out of the garbage collector's full passes.
        settle()
        # This start's cost: the load (rungs that failed to load included) and the warm-up
        # (models.warm_all; 0 when the profile does not compile); the GPU's busy ratio counts
        # from here.
        warmup = runtime.model.warmup_seconds
        runtime.metrics.ready(
            time.perf_counter() - began - warmup, warmup, runtime.model.compile_cache
        )
        try:  # `svdq stats` shows the start's cost at once, not at the next beat
            runtime.presence.beat()
        except Exception as exc:  # Redis away for a moment: the heartbeat thread beats again
            log.warning("worker heartbeat failed: %s", exc)
        return runtime

    def loaded(self) -> LoadedModel:
        """The model; a child whose model did not load never takes a job. Its pipeline may be
        empty (a job's time limit ended a reload after the eviction): the job's
        `resident.ensure_variant` loads it again, or ends the process."""
        if self.model is None:
            raise RuntimeError("no model loaded in this worker process")
        return self.model

    def remember_rung(self) -> None:
        """After a job: its rung (a step-down may have changed it) is where a restart starts.
        Not a rung the job stepped down to and then failed on (`resume` set: the next job goes
        back up): one oversized job must not keep the GPU's workers low for RUNG_MEMORY_TTL."""
        model = self.model
        if model is not None and model.pipe is not None and not model.resume:
            self.rungs.remember(model)

    def stop(self) -> None:
        """A clean stop: leave `svdq stats` at once, not when the heartbeat expires."""
        self.reaper.stop()
        if self.watchdog is not None:
            self.watchdog.stop()
        try:
            self.presence.forget()
        except Exception as exc:
            log.warning("could not remove this worker's heartbeat: %s", exc)
