"""worker.metrics decisions with no services: the port per GPU, and what a job's start and end
and the step-down hook record. CUDA memory readings are the one thing faked (no GPU here): a
stand-in `torch` module whose cuda reports a peak."""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.exceptions import TimeLimitExceeded
from prometheus_client import REGISTRY

from svdq.shared.constants import TASK_GENERATE
from svdq.shared.settings import Settings
from svdq.worker import metrics
from svdq.worker.identity import Identity

GIB = 1024**3


@pytest.mark.parametrize(
    ("env", "index"),
    [
        ({}, 0),
        ({"CUDA_VISIBLE_DEVICES": "3"}, 3),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 0),
        ({"CUDA_VISIBLE_DEVICES": "GPU-5d2c9a"}, 0),
        ({"CUDA_VISIBLE_DEVICES": "3", "SVDQ_GPU_INDEX": "5"}, 5),
    ],
)
def test_gpu_index_and_port(env: dict[str, str], index: int) -> None:
    gpu = Identity.of(Settings.from_env(env), "w@h", (), env).gpu_index
    assert gpu == index
    assert metrics.metrics_port(9810, gpu) == 9810 + index


class _Task:
    name = TASK_GENERATE
    request = types.SimpleNamespace(id="job-1", hostname="gpu0@test")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A `torch` whose CUDA is there and peaked at 7 GiB (metrics do no Redis bookkeeping)."""
    calls = {"reset": 0}
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        reset_peak_memory_stats=lambda: calls.__setitem__("reset", calls["reset"] + 1),
        max_memory_allocated=lambda: 7 * GIB,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    return calls


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _result(**kw: Any) -> dict[str, Any]:
    return {
        "variant": "svd-xt",
        "profile": {"name": "xt-16g"},
        "num_frames": 25,
        "timings": {"denoise": 30.0, "decode": 4.0, "total": 40.0, "other": 1.0},
        "finished_at": datetime.now(UTC).isoformat(),
        **kw,
    }


def test_a_job_records_peak_vram_phases_frames_and_stepdowns(fake_cuda: dict[str, int]) -> None:
    before = {
        "ok": sample("svdq_jobs_total", status="succeeded", variant="svd-xt"),
        "frames": sample("svdq_frames_generated_total", variant="svd-xt"),
        "oom": sample("svdq_oom_stepdowns_total", from_profile="xt-24g", to_profile="xt-16g"),
        "denoise": sample(
            "svdq_job_phase_seconds_sum", phase="denoise", variant="svd-xt", profile="xt-16g"
        ),
    }
    counted = metrics.WorkerMetrics()
    counted.job_started()
    assert fake_cuda["reset"] == 1 and sample("svdq_worker_busy") == 1
    attempts = [{"profile": "xt-24g", "outcome": "oom"}, {"profile": "xt-16g", "outcome": "ok"}]
    counted.stepped_down("xt-24g", "xt-16g")  # what worker.stepdown does as it steps down
    assert counted.succeeded(_result(attempts=attempts)) == "succeeded"
    counted.job_ended()

    assert sample("svdq_job_peak_vram_bytes") == 7 * GIB
    assert sample("svdq_worker_busy") == 0
    assert sample("svdq_jobs_total", status="succeeded", variant="svd-xt") == before["ok"] + 1
    assert sample("svdq_frames_generated_total", variant="svd-xt") == before["frames"] + 25
    oom = sample("svdq_oom_stepdowns_total", from_profile="xt-24g", to_profile="xt-16g")
    assert oom == before["oom"] + 1
    denoise = sample(
        "svdq_job_phase_seconds_sum", phase="denoise", variant="svd-xt", profile="xt-16g"
    )
    assert denoise == before["denoise"] + 30.0
    # Only the known phases become series.
    assert sample("svdq_job_phase_seconds_count", phase="other", variant="svd-xt", profile="") == 0


def test_a_result_finished_before_the_task_started_counts_as_skipped(
    fake_cuda: dict[str, int],
) -> None:
    skipped = sample("svdq_jobs_total", status="skipped", variant="svd-xt")
    ok = sample("svdq_jobs_total", status="succeeded", variant="svd-xt")
    counted = metrics.WorkerMetrics()
    counted.job_started()
    old = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert counted.succeeded(_result(finished_at=old)) == "skipped"
    assert sample("svdq_jobs_total", status="skipped", variant="svd-xt") == skipped + 1
    assert sample("svdq_jobs_total", status="succeeded", variant="svd-xt") == ok


def test_failures_count_by_reason(fake_cuda: dict[str, int]) -> None:
    failed = sample("svdq_jobs_total", status="failed", variant="tiny")
    reason = sample("svdq_job_failures_total", reason="ResourceError")
    counted = metrics.WorkerMetrics()
    assert counted.failed("tiny", RuntimeError()) == "RuntimeError"

    class ResourceError(Exception):
        pass

    metrics.PEAK_VRAM.set(0)
    assert counted.failed("tiny", ResourceError()) == "ResourceError"
    assert sample("svdq_job_peak_vram_bytes") == 7 * GIB  # a failed job's peak counts too
    assert sample("svdq_jobs_total", status="failed", variant="tiny") == failed + 2
    assert sample("svdq_job_failures_total", reason="ResourceError") == reason + 1


def test_the_parent_records_the_failures_only_it_sees_of_its_own_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hard time limit reaches the finished-jobs stream from the parent; another task's
    failure, or one in a pool child (the lifecycle recorded it there), is left alone."""
    from svdq.worker import tasks

    recorded: list[tuple[Any, ...]] = []
    presence = types.SimpleNamespace(finished=lambda *entry: recorded.append(entry))
    monkeypatch.setattr(tasks._here, "presence", presence)
    monkeypatch.setattr(tasks._here, "runtime", None)  # the parent has no runtime
    other = types.SimpleNamespace(name="svdq.callback")
    tasks._failure_seen_by_parent(
        sender=other, task_id="cb-1", exception=ValueError(), args=["http://x", {}]
    )
    limit = TimeLimitExceeded(25)
    tasks._failure_seen_by_parent(
        sender=_Task(), task_id="job-1", exception=limit, args=[{"variant": "tiny"}]
    )
    assert recorded == [("job-1", "failed", "tiny", "TimeLimitExceeded")]
    monkeypatch.setattr(tasks._here, "runtime", object())  # a pool child
    tasks._failure_seen_by_parent(
        sender=_Task(), task_id="job-2", exception=limit, args=[{"variant": "tiny"}]
    )
    assert len(recorded) == 1


def test_lease_and_dead_letter_hooks() -> None:
    renewals, dead = (
        sample("svdq_lease_renewals_total"),
        sample("svdq_dead_letters_total", reason="deliveries"),
    )
    counted = metrics.WorkerMetrics()
    counted.lease_renewed()
    counted.dead_lettered("deliveries")
    assert sample("svdq_lease_renewals_total") == renewals + 1
    assert sample("svdq_dead_letters_total", reason="deliveries") == dead + 1


def test_a_cancelled_job_is_counted_cancelled() -> None:
    """Issue 10, defect 6: svdq_jobs_total{status="cancelled"} (the Outcome table's word)."""
    before = sample("svdq_jobs_total", status="cancelled", variant="tiny")
    metrics.WorkerMetrics().cancelled("tiny")
    assert sample("svdq_jobs_total", status="cancelled", variant="tiny") == before + 1


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_gpu_busy_ratio_counts_the_pipeline_call_over_wall_time_since_ready() -> None:
    from svdq.worker.gpuclock import GpuClock

    clock = _Clock()
    gpu = GpuClock(clock)
    assert gpu.ratio() is None and gpu.busy_seconds() == 0  # loading: no ratio yet
    gpu.ready()
    clock.now += 1.0  # fetch and fit
    with gpu.running():
        clock.now += 3.0
        assert gpu.busy_seconds() == 3.0  # a call still running counts up to now
        assert gpu.ratio() == 0.75
    clock.now += 1.0  # encode and upload
    assert gpu.busy_seconds() == 3.0 and gpu.ratio() == 0.6
    with pytest.raises(RuntimeError), gpu.running():  # a failed call held the GPU too
        clock.now += 5.0
        raise RuntimeError("out of memory")
    assert gpu.busy_seconds() == 8.0 and gpu.ratio() == 0.8


def test_start_seconds_and_busy_are_exported_and_beaten() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    counted = metrics.WorkerMetrics()
    clock = _Clock()
    counted.gpu = metrics.GpuClock(clock)
    registry = CollectorRegistry()
    registry.register(metrics._Duty(counted))
    before = generate_latest(registry).decode()
    assert "svdq_gpu_busy_seconds_total 0.0" in before
    assert "svdq_gpu_busy_ratio" not in before and "svdq_worker_load_seconds" not in before
    empty = {"load_s": "", "warmup_s": "", "compile_cache": "", "gpu_busy_ratio": ""}
    assert counted.beat_fields() == empty
    counted.ready(12.34567, 61.5)
    clock.now += 10
    with counted.gpu.running():
        clock.now += 10
    assert registry.get_sample_value("svdq_gpu_busy_seconds_total") == 10
    assert registry.get_sample_value("svdq_gpu_busy_ratio") == 0.5
    assert registry.get_sample_value("svdq_worker_load_seconds") == 12.346
    assert registry.get_sample_value("svdq_worker_warmup_seconds") == 61.5
    assert counted.beat_fields() == {
        "load_s": 12.346,
        "warmup_s": 61.5,
        "compile_cache": "",  # this model does not compile
        "gpu_busy_ratio": 0.5,
    }
    assert "svdq_compile_cache" not in generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("cache", "hits", "beat"),
    [
        ({"state": "hit", "hits": 2, "misses": 0}, 2.0, "hit"),
        ({"state": "miss", "hits": 0, "misses": 3}, 0.0, "miss"),
        ({"state": "off"}, None, "off"),  # compiled, SVDQ_COMPILE_CACHE unset: no series
    ],
)
def test_a_compiled_start_exports_what_its_compile_cache_did(
    cache: dict[str, Any], hits: float | None, beat: str
) -> None:
    from prometheus_client import CollectorRegistry

    counted = metrics.WorkerMetrics()
    registry = CollectorRegistry()
    registry.register(metrics._Duty(counted))
    counted.ready(3.0, 4.5, cache)
    assert registry.get_sample_value("svdq_compile_cache_hits") == hits
    misses = registry.get_sample_value("svdq_compile_cache_misses")
    assert misses == (None if hits is None else float(cache["misses"]))
    assert counted.beat_fields()["compile_cache"] == beat
    assert registry.get_sample_value("svdq_worker_warmup_seconds") == 4.5


def test_stats_shows_the_start_cost_and_busy_ratio() -> None:
    from svdq.producer.stats import render

    worker = {
        "name": "gpu0@a",
        "gpu": 0,
        "device": "cuda",
        "variant": "svd-xt",
        "profile": "xt-40g",
        "job_id": None,
        "load_s": 41.2,
        "warmup_s": 95.0,
        "gpu_busy_ratio": 0.7412,
    }
    loading = {**worker, "name": "gpu1@a", "load_s": None, "warmup_s": None, "gpu_busy_ratio": None}
    snap = {
        "queues": {},
        "workers": [worker, loading],
        "throughput": {
            w: {"succeeded": 0, "failed": 0, "cancelled": 0, "skipped": 0} for w in ("5m", "60m")
        },
        "failures_60m": {},
        "dead_letter": 0,
        "batches": {"submitting": 0, "submitted": 0},
    }
    lines = render(snap).splitlines()
    [busy] = [line for line in lines if "gpu0@a" in line]
    assert busy.endswith("idle  (busy 74%, start: load 41.2s, warm-up 95.0s)")
    [still] = [line for line in lines if "gpu1@a" in line]
    assert still.endswith("idle")
    snap["workers"] = [{**worker, "warmup_s": 4.2, "compile_cache": "hit"}]
    [cached] = [line for line in render(snap).splitlines() if "gpu0@a" in line]
    assert cached.endswith("(busy 74%, start: load 41.2s, warm-up 4.2s, compile cache hit)")

    # Overlap: a worker holding two jobs names both (the heartbeat's `jobs`, GPU one first).
    two = {**worker, "name": "gpu2@a", "job_id": "b", "job_seconds": 3, "jobs": ["b", "a"]}
    one = {**worker, "name": "gpu3@a", "job_id": "c", "job_seconds": 3, "jobs": ["c"]}
    lines = render({**snap, "workers": [two, one]}).splitlines()
    [held] = [line for line in lines if "gpu2@a" in line]
    assert "job b 3s + 1 more held: a" in held
    [alone] = [line for line in lines if "gpu3@a" in line]
    assert "more held" not in alone
