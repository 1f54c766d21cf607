"""Prometheus metrics for one worker, driven by Celery signals (worker.heartbeat keeps its
Redis presence for `svdq stats`).

Where the metrics live: in the prefork pool *child*, which is where jobs run and the model
is loaded (concurrency is 1, so one child per worker). `worker_process_init` starts the HTTP
server there on SVDQ_METRICS_PORT + the GPU index. We chose this over prometheus_client's
multiprocess mode because the child is the only process that sees the job, its result record
and its CUDA memory; multiprocess mode would add a shared directory, file cleanup and no Info
metric for nothing, with one child per worker. The cost: counters restart at 0 when the child
is replaced (a crash, a lost worker), which Prometheus' rate()/increase() treat as a counter
reset. Failures only the parent sees (a killed child, a hard time limit) still reach
`svdq stats` and the exporter through the Redis stream FINISHED_STREAM, which both processes
write to.

For the lease / dead-letter code (issue 5): call `lease_renewed()` and `dead_lettered(reason)`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_success,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from svdq.shared.constants import TASK_GENERATE, WORKER_KEY_TTL
from svdq.worker.heartbeat import beat as _beat
from svdq.worker.heartbeat import forget as _forget
from svdq.worker.heartbeat import gpu_index
from svdq.worker.heartbeat import heartbeat_forever as _heartbeat_forever
from svdq.worker.heartbeat import loaded_model as _loaded_model
from svdq.worker.heartbeat import record as _record
from svdq.worker.heartbeat import state as _state
from svdq.worker.heartbeat import worker as _worker

log = logging.getLogger("svdq.metrics")

PHASES = ("load", "fetch", "preprocess", "denoise", "decode", "encode", "upload", "total")
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)

JOBS = Counter(
    "svdq_jobs", "Jobs this worker finished, by outcome", ["status", "variant"]
)  # status: succeeded | failed | retried | skipped (result.json already there)
FAILURES = Counter("svdq_job_failures", "Failed jobs by reason (exception class)", ["reason"])
PHASE_SECONDS = Histogram(
    "svdq_job_phase_seconds",
    "Seconds per job phase (load is the model load, once per process)",
    ["phase", "variant", "profile"],
    buckets=SECONDS_BUCKETS,
)
FRAMES = Counter("svdq_frames_generated", "Video frames generated", ["variant"])
OOM_STEPDOWNS = Counter(
    "svdq_oom_stepdowns",
    "CUDA out-of-memory step-downs, from one profile to the next",
    ["from_profile", "to_profile"],
)
PEAK_VRAM = Gauge(
    "svdq_job_peak_vram_bytes", "torch.cuda.max_memory_allocated during the last job (CUDA only)"
)
BUSY = Gauge("svdq_worker_busy", "1 while a job runs on this worker")
LEASE_RENEWALS = Counter("svdq_lease_renewals", "Job leases this worker renewed")
DEAD_LETTERS = Counter(
    "svdq_dead_letters",
    "Jobs this worker sent to the dead-letter list, by why: deliveries (too many, none "
    "finished) or transient (a fault that kept coming back)",
    ["reason"],
)


def lease_renewed() -> None:
    """Count one lease renewal (called by the delivery code)."""
    LEASE_RENEWALS.inc()


def stepped_down(before: str, after: str) -> None:
    """Count one out-of-memory step-down from profile `before` to `after` (worker.stepdown)."""
    OOM_STEPDOWNS.labels(before, after).inc()


def _peak_vram() -> None:
    """The job's peak GPU memory, whatever its outcome (an out-of-memory failure most of all)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        PEAK_VRAM.set(torch.cuda.max_memory_allocated())


def dead_lettered(reason: str) -> None:
    """Count one job sent to the dead-letter list; `reason` is a short kind, never free text
    (each distinct value is a time series)."""
    DEAD_LETTERS.labels(reason=reason).inc()


def metrics_port(base: int, env: dict[str, str] | None = None) -> int:
    """The port this worker serves /metrics on: base + GPU index."""
    return base + gpu_index(env)


class _WorkerInfo(Collector):
    """Read at scrape time, so a profile change after an OOM step-down shows at once."""

    def collect(self) -> Any:
        info = InfoMetricFamily("svdq_worker", "The loaded model on this worker")
        model = _loaded_model()
        labels = {
            "worker": _worker["hostname"],
            "gpu": str(gpu_index()),
            "queues": ",".join(_worker["queues"]),
            "variant": model.info.name if model else "",
            "profile": model.profile.name if model else "",
            "device": model.profile.device if model else "",
        }
        info.add_metric([], labels)
        yield info
        loaded = GaugeMetricFamily("svdq_model_loaded", "1 once the model is loaded")
        loaded.add_metric([], 1.0 if model else 0.0)
        yield loaded


@worker_init.connect
def _remember_worker(sender: Any = None, **_: Any) -> None:
    # Parent process, after the queues are chosen and before the pool forks.
    if sender is not None:
        _worker["hostname"] = sender.hostname
        _worker["queues"] = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())


@worker_process_init.connect
def _start_in_child(**_: Any) -> None:
    from svdq.worker.tasks import settings

    if not _state.get("registered"):
        REGISTRY.register(_WorkerInfo())
        _state["registered"] = True
    port = metrics_port(settings.metrics_port)
    try:
        start_http_server(port)
        _state["port"] = port
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
    except OSError as exc:
        # Another process holds the port: run the jobs anyway, without metrics.
        log.warning("no metrics: cannot listen on port %d (SVDQ_METRICS_PORT): %s", port, exc)
    threading.Thread(target=_heartbeat_forever, args=(WORKER_KEY_TTL / 3,), daemon=True).start()


@worker_process_shutdown.connect
def _forget_worker(**_: Any) -> None:
    # A worker that stops cleanly leaves `svdq stats` at once, not when its heartbeat expires.
    _safe(_forget)


def _ours(sender: Any) -> bool:
    return getattr(sender, "name", None) == TASK_GENERATE


def _spec_variant(args: Any) -> str:
    try:
        return str(args[0].get("variant") or "auto")
    except (IndexError, AttributeError, TypeError):
        return "unknown"


@task_prerun.connect
def _on_prerun(sender: Any = None, task_id: str = "", args: Any = None, **_: Any) -> None:
    if not _ours(sender):
        return
    _state["started"] = time.time()
    BUSY.set(1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _safe(_beat, {"job_id": task_id, "job_started_at": _state["started"]})
    _observe_load()


def _observe_load() -> None:
    """Count each pipeline load once: the first, and any swap (OOM step-down, variant switch),
    which reloads into the same object with a new profile and load time."""
    model = _loaded_model()
    if model is None or model.pipe is None:
        return
    seen = (id(model), model.info.name, model.profile.name, model.load_seconds)
    if _state.get("load_seen") != seen:
        _state["load_seen"] = seen
        PHASE_SECONDS.labels("load", model.info.name, model.profile.name).observe(
            model.load_seconds
        )


@task_postrun.connect
def _on_postrun(sender: Any = None, **_: Any) -> None:
    if _ours(sender):
        BUSY.set(0)
        _observe_load()
        _safe(_beat, {"job_id": "", "job_started_at": ""})


@task_success.connect
def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    if not _ours(sender) or not isinstance(result, dict):
        return
    variant = str(result.get("variant", "unknown"))
    profile = str((result.get("profile") or {}).get("name", ""))
    finished = _parse_time(result.get("finished_at"))
    if finished is not None and finished < _state.get("started", 0):
        # result.json was already there: the job did no work now.
        JOBS.labels("skipped", variant).inc()
        _safe(_record, sender, "skipped", variant, "")
        return
    JOBS.labels("succeeded", variant).inc()
    for phase, seconds in (result.get("timings") or {}).items():
        if phase in PHASES:
            PHASE_SECONDS.labels(phase, variant, profile).observe(float(seconds))
    FRAMES.labels(variant).inc(int(result.get("num_frames") or 0))
    _safe(_peak_vram)
    _safe(_record, sender, "succeeded", variant, "", result.get("timings", {}).get("total"))


@task_failure.connect
def _on_failure(
    sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    if not _ours(sender):
        return
    variant, reason = _spec_variant(args), type(exception).__name__
    JOBS.labels("failed", variant).inc()
    FAILURES.labels(reason).inc()
    _safe(_peak_vram)
    _safe(_record, sender, "failed", variant, reason)


@task_retry.connect
def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    # sender is the task here too; a retry is not an end, so it stays out of the stream.
    if _ours(sender):
        JOBS.labels("retried", _spec_variant(getattr(request, "args", None))).inc()


def _safe(fn: Any, *args: Any) -> None:
    # Bookkeeping must never fail a job that succeeded.
    try:
        fn(*args)
    except Exception as exc:
        log.warning("metrics bookkeeping failed: %s", exc)


def _parse_time(value: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None
