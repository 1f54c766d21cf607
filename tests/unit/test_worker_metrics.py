"""worker.metrics decisions with no services: the port per GPU, and what the signal handlers
and the step-down hook record. CUDA memory readings are the one thing faked
(no GPU here): a stand-in `torch` module whose cuda reports a peak."""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from svdq.shared.constants import TASK_GENERATE
from svdq.worker import metrics

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
    assert metrics.gpu_index(env) == index
    assert metrics.metrics_port(9810, env) == 9810 + index


class _Task:
    name = TASK_GENERATE
    request = types.SimpleNamespace(id="job-1", hostname="gpu0@test")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A `torch` whose CUDA is there and peaked at 7 GiB; Redis bookkeeping switched off."""
    calls = {"reset": 0}
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        reset_peak_memory_stats=lambda: calls.__setitem__("reset", calls["reset"] + 1),
        max_memory_allocated=lambda: 7 * GIB,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(metrics, "_beat", lambda *a: None)
    monkeypatch.setattr(metrics, "_record", lambda *a: None)
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
    metrics._on_prerun(sender=_Task(), task_id="job-1", args=[{"variant": "svd-xt"}])
    assert fake_cuda["reset"] == 1 and sample("svdq_worker_busy") == 1
    attempts = [{"profile": "xt-24g", "outcome": "oom"}, {"profile": "xt-16g", "outcome": "ok"}]
    metrics.stepped_down("xt-24g", "xt-16g")  # what worker.stepdown does as it steps down
    metrics._on_success(sender=_Task(), result=_result(attempts=attempts))
    metrics._on_postrun(sender=_Task())

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
    metrics._on_prerun(sender=_Task(), task_id="job-1", args=[{}])
    old = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    metrics._on_success(sender=_Task(), result=_result(finished_at=old))
    assert sample("svdq_jobs_total", status="skipped", variant="svd-xt") == skipped + 1
    assert sample("svdq_jobs_total", status="succeeded", variant="svd-xt") == ok


def test_failures_count_by_reason_and_other_tasks_are_ignored(fake_cuda: dict[str, int]) -> None:
    failed = sample("svdq_jobs_total", status="failed", variant="tiny")
    reason = sample("svdq_job_failures_total", reason="ResourceError")
    metrics._on_failure(sender=_Task(), exception=RuntimeError(), args=[{"variant": "tiny"}])

    class ResourceError(Exception):
        pass

    metrics.PEAK_VRAM.set(0)
    metrics._on_failure(sender=_Task(), exception=ResourceError(), args=[{"variant": "tiny"}])
    assert sample("svdq_job_peak_vram_bytes") == 7 * GIB  # a failed job's peak counts too
    other = types.SimpleNamespace(name="svdq.callback")
    metrics._on_failure(sender=other, exception=ResourceError(), args=[{"variant": "tiny"}])
    assert sample("svdq_jobs_total", status="failed", variant="tiny") == failed + 2
    assert sample("svdq_job_failures_total", reason="ResourceError") == reason + 1


def test_lease_and_dead_letter_hooks() -> None:
    renewals, dead = (
        sample("svdq_lease_renewals_total"),
        sample("svdq_dead_letters_total", reason="deliveries"),
    )
    metrics.lease_renewed()
    metrics.dead_lettered("deliveries")
    assert sample("svdq_lease_renewals_total") == renewals + 1
    assert sample("svdq_dead_letters_total", reason="deliveries") == dead + 1
