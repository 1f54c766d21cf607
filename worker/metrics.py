"""Prometheus metrics for one worker: the series, and `WorkerMetrics`, which the job's
lifecycle (worker/lifecycle.py) tells what happened. Nothing here listens to Celery.

Where the metrics live: in the prefork pool *child*, which is where jobs run and the model
is loaded (concurrency is 1, so one child per worker). The runtime (worker/runtime.py) starts
the HTTP server there on SVDQ_METRICS_PORT + the GPU index. We chose this over
prometheus_client's multiprocess mode because the child is the only process that sees the job,
its result record and its CUDA memory; multiprocess mode would add a shared directory, file
cleanup and no Info metric for nothing, with one child per worker. The cost: counters restart
at 0 when the child is replaced (a crash, a lost worker), which Prometheus' rate()/increase()
treat as a counter reset (and `svdq_gpu_busy_ratio` starts again from the new child's ready
moment, worker/gpuclock.py). Failures only the parent sees (a killed child, a hard time limit)
still reach `svdq stats` and the exporter through the Redis stream FINISHED_STREAM
(worker/heartbeat.py), which both processes write to.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from svdq.shared.scores import SCORES
from svdq.shared.states import Outcome
from svdq.worker.gpuclock import GpuClock
from svdq.worker.identity import Identity

log = logging.getLogger("svdq.metrics")

PHASES = ("load", "fetch", "preprocess", "denoise", "decode", "score", "encode", "upload", "total")
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)

JOBS = Counter(
    "svdq_jobs", "Jobs this worker finished, by outcome", ["status", "variant"]
)  # status: the Outcome table (shared/states.py)
FAILURES = Counter("svdq_job_failures", "Failed jobs by reason (exception class)", ["reason"])
PHASE_SECONDS = Histogram(
    "svdq_job_phase_seconds",
    "Seconds per job phase (load is the model load, once per process)",
    ["phase", "variant", "profile"],
    buckets=SECONDS_BUCKETS,
)
FRAMES = Counter(
    "svdq_frames_generated",
    "Video frames generated, every generation's (candidates and repairs too), kept or not",
    ["variant"],
)
OOM_STEPDOWNS = Counter(
    "svdq_oom_stepdowns",
    "CUDA out-of-memory step-downs, from one profile to the next",
    ["from_profile", "to_profile"],
)
PEAK_VRAM = Gauge(
    "svdq_job_peak_vram_bytes", "torch.cuda.max_memory_allocated during the last job (CUDA only)"
)
# One histogram per clip score (shared/scores.py), svdq_clip_<score>: a fleet whose clips
# turn static or start to flicker shows as a shift in these.
CLIP_SCORES = {
    name: Histogram(f"svdq_clip_{name}", f"Clip score: {text}", ["variant"], buckets=buckets)
    for name, (text, buckets) in SCORES.items()
}
# Quality repair (worker/quality.py): each problem a job asked to repair, by whether the
# clip it kept still has it; and the generations candidates and repairs cost.
REPAIRS = Counter(
    "svdq_clip_repairs",
    "Clip problems found on jobs that asked for repair, by problem and outcome",
    ["problem", "outcome"],
)
EXTRA_GENERATIONS = Counter(
    "svdq_extra_generations",
    "Clips generated beyond the first for a job (candidates, repairs)",
    ["reason"],
)
BUSY = Gauge(
    "svdq_worker_busy",
    "Jobs running on this worker now: 0 or 1, up to SVDQ_OVERLAP with overlap on",
)
LEASE_RENEWALS = Counter("svdq_lease_renewals", "Job leases this worker renewed")
REAPED = Counter(
    "svdq_jobs_reaped",
    "Jobs of dead hosts (lease expired, heartbeat gone) this worker's reaper queued again",
)
DEAD_LETTERS = Counter(
    "svdq_dead_letters",
    "Jobs this worker sent to the dead-letter list, by why: deliveries (too many, none "
    "finished) or transient (a fault that kept coming back)",
    ["reason"],
)


def metrics_port(base: int, gpu: int) -> int:
    """The port the worker for GPU `gpu` serves /metrics on: base + GPU index."""
    return base + gpu


def _cuda() -> Any:
    """torch.cuda if torch is loaded and CUDA is there; metrics never import torch."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def _parse_time(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


class _WorkerInfo(Collector):
    """Read at scrape time, so a profile change after an OOM step-down shows at once."""

    def __init__(self, identity: Identity, model: Callable[[], Any]) -> None:
        self.identity, self.model = identity, model

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("svdq_worker", "The loaded model on this worker")
        model = self.model()
        labels = {
            "worker": self.identity.hostname,
            "gpu": str(self.identity.gpu_index),
            "queues": ",".join(self.identity.queues),
            "variant": model.info.name if model else "",
            "profile": model.profile.name if model else "",
            "device": model.profile.device if model else "",
        }
        info.add_metric([], labels)
        yield info
        loaded = GaugeMetricFamily("svdq_model_loaded", "1 once the model is loaded")
        loaded.add_metric([], 1.0 if model else 0.0)
        yield loaded


class _Duty(Collector):
    """How busy the GPU is kept and what this start cost, read at scrape time."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        gpu, start = self.metrics.gpu, self.metrics.start_seconds
        busy = CounterMetricFamily(
            "svdq_gpu_busy_seconds",
            "Seconds inside the pipeline call (denoise and decode) since the worker was ready; "
            "rate() of it is the busy ratio over a window",
        )
        busy.add_metric([], gpu.busy_seconds())
        yield busy
        if (ratio := gpu.ratio()) is not None:
            gauge = GaugeMetricFamily(
                "svdq_gpu_busy_ratio",
                "Seconds inside the pipeline call over wall seconds since the worker was ready",
            )
            gauge.add_metric([], ratio)
            yield gauge
        for phase, help_ in (
            ("load", "Seconds this worker process took to load its model at start"),
            ("warmup", "Seconds this worker process spent warming up (compiling) at start"),
        ):
            if phase in start:
                family = GaugeMetricFamily(f"svdq_worker_{phase}_seconds", help_)
                family.add_metric([], start[phase])
                yield family
        cache = self.metrics.compile_cache
        # SVDQ_COMPILE_CACHE set, trusted, and a rung compiled
        if cache.get("state", "off") not in ("off", "refused"):
            for name, help_ in (
                ("hits", "Graphs this start's warm-up took from SVDQ_COMPILE_CACHE"),
                ("misses", "Graphs this start's warm-up compiled (not in SVDQ_COMPILE_CACHE)"),
            ):
                family = GaugeMetricFamily(f"svdq_compile_cache_{name}", help_)
                family.add_metric([], float(cache.get(name, 0)))
                yield family


class WorkerMetrics:
    """What one worker process counts. One per process; the series are process-wide."""

    def __init__(self) -> None:
        self.started = 0.0  # when the running job started (time.time())
        self._load_seen: tuple[Any, ...] | None = None
        self._info: _WorkerInfo | None = None
        self.gpu = GpuClock()  # time inside the pipeline call, wall time since ready
        self.start_seconds: dict[str, float] = {}  # this start's "load" and "warmup" seconds
        self.compile_cache: dict[str, Any] = {}  # what SVDQ_COMPILE_CACHE did for this start

    def ready(
        self,
        load_seconds: float,
        warmup_seconds: float,
        compile_cache: dict[str, Any] | None = None,
    ) -> None:
        """The model is loaded and warmed up: record what that cost (and, for a compiled
        model, what its compile cache saved: worker/compilecache.py), and start the GPU's wall
        clock (the busy ratio counts from here)."""
        self.start_seconds = {
            "load": round(load_seconds, 3),
            "warmup": round(warmup_seconds, 3),
        }
        self.compile_cache = dict(compile_cache or {})
        self.gpu.ready()

    def beat_fields(self) -> dict[str, Any]:
        """What the heartbeat carries for `svdq stats`: this start's load and warm-up seconds
        and the busy ratio so far ("" until the worker is ready)."""
        ratio = self.gpu.ratio()
        return {
            "load_s": self.start_seconds.get("load", ""),
            "warmup_s": self.start_seconds.get("warmup", ""),
            # off | refused | hit | partial | miss | unused (compilecache.CompileCache.state);
            # "" before ready and for a model that does not compile.
            "compile_cache": self.compile_cache.get("state", ""),
            "gpu_busy_ratio": "" if ratio is None else round(ratio, 4),
        }

    def serve(
        self, port: int, identity: Identity, model: Callable[[], Any], host: str = "127.0.0.1"
    ) -> bool:
        """Serve /metrics on `host`:`port` (SVDQ_METRICS_HOST), with the Info metric read from
        `model()` at scrape time; False when the port is taken (the jobs run anyway, without
        metrics)."""
        if self._info is None:
            self._info = _WorkerInfo(identity, model)
            REGISTRY.register(self._info)
            REGISTRY.register(_Duty(self))
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            log.warning(
                "no metrics: cannot listen on %s:%d (SVDQ_METRICS_HOST/PORT): %s",
                host,
                port,
                exc,
            )
            return False
        log.info("metrics on http://%s:%d/metrics", host, port)
        return True

    def job_started(self, reset_peak: bool = True) -> float:
        """A job starts: busy, and (one job at a time) the GPU's peak memory counts from here.
        Returns the time. With overlap the peak is reset at the GPU phase (`gpu_phase`)
        instead: another job may be on the GPU now."""
        self.started = time.time()
        BUSY.inc()
        cuda = _cuda()
        if cuda is not None and reset_peak:
            cuda.reset_peak_memory_stats()
        return self.started

    @contextmanager
    def gpu_phase(self) -> Iterator[None]:
        """Around one job's GPU phase (held under the GPU lock, worker/overlap.py): the peak
        memory is this job's alone, whatever ends the block."""
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        try:
            yield
        finally:
            if cuda is not None:
                PEAK_VRAM.set(cuda.max_memory_allocated())

    def model_loaded(self, model: Any) -> None:
        """Count each pipeline load once: the first, and any swap (OOM step-down, variant
        switch), which reloads into the same object with a new profile and load time."""
        if model is None or model.pipe is None:
            return
        seen = (id(model), model.info.name, model.profile.name, model.load_seconds)
        if self._load_seen != seen:
            self._load_seen = seen
            PHASE_SECONDS.labels("load", model.info.name, model.profile.name).observe(
                model.load_seconds
            )

    def succeeded(self, result: dict[str, Any], started: float | None = None) -> str:
        """Count a job that returned `result`: "skipped" when result.json was already there
        (it finished before this job `started`; default: the last job_started, right when one
        job runs at a time), else "succeeded" with its phases and frames."""
        variant = str(result.get("variant", "unknown"))
        finished = _parse_time(result.get("finished_at"))
        if finished is not None and finished < (self.started if started is None else started):
            JOBS.labels(Outcome.SKIPPED, variant).inc()
            return Outcome.SKIPPED
        profile = str((result.get("profile") or {}).get("name", ""))
        JOBS.labels(Outcome.SUCCEEDED, variant).inc()
        for phase, seconds in (result.get("timings") or {}).items():
            if phase in PHASES:
                PHASE_SECONDS.labels(phase, variant, profile).observe(float(seconds))
        FRAMES.labels(variant).inc(int(result.get("num_frames") or 0) * _generations(result))
        for name, value in (result.get("scores") or {}).items():
            if name in CLIP_SCORES and value is not None:
                CLIP_SCORES[name].labels(variant).observe(float(value))
        self._repairs(result)
        self._peak_vram()
        return Outcome.SUCCEEDED

    @staticmethod
    def _repairs(result: dict[str, Any]) -> None:
        """Count what a job's repairs found and fixed, and its extra generations."""
        quality = result.get("quality") or {}
        left = set(quality.get("left") or ())
        for problem in quality.get("found") or ():
            REPAIRS.labels(problem, "left" if problem in left else "fixed").inc()
        for t in (result.get("tries") or ())[1:]:
            reason = "candidate" if t.get("reason") == "candidate" else "repair"
            EXTRA_GENERATIONS.labels(reason).inc()

    def failed(self, variant: str, exc: BaseException) -> str:
        """Count a job that failed with `exc`; return the reason it is counted under (the
        exception's class name: a short label, one time series each)."""
        reason = type(exc).__name__
        JOBS.labels(Outcome.FAILED, variant).inc()
        FAILURES.labels(reason).inc()
        self._peak_vram()
        return reason

    def cancelled(self, variant: str) -> None:
        """Count a job stopped by `svdq cancel` (an end: it never runs again)."""
        JOBS.labels(Outcome.CANCELLED, variant).inc()

    def retried(self, variant: str) -> None:
        """Count a job sent back to its queue for later (not an end)."""
        JOBS.labels(Outcome.RETRIED, variant).inc()

    def job_ended(self) -> None:
        """The job is over, whatever its outcome."""
        BUSY.dec()

    def lease_renewed(self) -> None:
        """Count one lease renewal (worker.lease)."""
        LEASE_RENEWALS.inc()

    def reaped(self, _job: object = None) -> None:
        """Count one job of a dead host queued again by this worker's reaper."""
        REAPED.inc()

    def stepped_down(self, before: str, after: str) -> None:
        """Count one out-of-memory step-down from profile `before` to `after`."""
        OOM_STEPDOWNS.labels(before, after).inc()

    def dead_lettered(self, kind: str) -> None:
        """Count one job sent to the dead-letter list; `kind` is a short label, never free
        text (each distinct value is a time series)."""
        DEAD_LETTERS.labels(reason=kind).inc()

    @staticmethod
    def _peak_vram() -> None:
        """The job's peak GPU memory, whatever its outcome (an out-of-memory one most of all)."""
        cuda = _cuda()
        if cuda is not None:
            PEAK_VRAM.set(cuda.max_memory_allocated())


def _generations(result: dict[str, Any]) -> int:
    """The clips a job generated: one per entry of `tries` (worker/quality.py lists every
    candidate and repair there), one for a plain job (`tries` empty). Every clip has the
    job's frame count, so frames per GPU-second counts the work the GPU did."""
    tries = result.get("tries")
    return max(1, len(tries)) if isinstance(tries, list) else 1
