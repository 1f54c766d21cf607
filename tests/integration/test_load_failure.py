"""A pipeline that does not load again never leaves a worker without one (issue 9, defect 3).

Before the fix, `swap` evicted, the load raised, and the process went on with `pipe = None`:
every later job failed with "'NoneType' object is not callable". Now a rung that does not load
is recorded and the next one down is tried; when none is left the process exits (the job goes
back to the queue) instead of taking another job. Through a real worker:
tests/faults/test_lost_pipeline.py.
"""

from __future__ import annotations

import dataclasses

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from svdq.shared.errors import WorkerFatalError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import models, resident, stepdown
from svdq.worker.profiles import CPU_LEAN, CPU_PROFILE
from tests.fixtures.faults import FaultyPipeline

pytestmark = pytest.mark.integration

IMAGE = Image.new("RGB", (64, 64), (200, 80, 30))
MIDDLE = dataclasses.replace(CPU_LEAN, name="cpu-middle", decode_chunk_size=4)


@pytest.fixture(scope="module")
def tiny_settings(model_dir):  # type: ignore[no-untyped-def]
    return dataclasses.replace(Settings.from_env({}), model_dir=model_dir)


def _spec(job_id: str) -> JobSpec:
    return JobSpec.from_dict(
        {
            "image": "x.png",
            "variant": "tiny",
            "width": 64,
            "height": 64,
            "num_frames": 4,
            "num_inference_steps": 2,
            "seed": 7,
            "job_id": job_id,
            "metadata": {"svdq_test_fault": "oom_once"},
        }
    )


@pytest.fixture
def failing_loads(monkeypatch):  # type: ignore[no-untyped-def]
    """The profiles whose load raises (as an OOM in `.to()` or unreadable files would)."""
    failing: set[str] = set()
    real = models.load_model

    def load(settings, profile, lower=()):  # type: ignore[no-untyped-def]
        if profile.name in failing:
            raise RuntimeError(f"injected: {profile.name} does not load")
        return real(settings, profile, lower)

    monkeypatch.setattr(models, "load_model", load)
    return failing


def test_a_rung_that_does_not_load_is_skipped_for_the_next(tiny_settings, failing_loads) -> None:
    model = models.load_model(tiny_settings, CPU_PROFILE, (MIDDLE, CPU_LEAN))
    spec = _spec("skip")
    model.pipe = FaultyPipeline(model.pipe, job=spec.to_dict)  # out of memory once
    failing_loads.add("cpu-middle")
    frames, _, params, attempts = stepdown.generate(model, tiny_settings, spec, IMAGE)
    assert [(a["profile"], a["outcome"]) for a in attempts] == [
        ("cpu", "oom"),
        ("cpu-middle", "load_failed"),
        ("cpu-lean", "succeeded"),
    ]
    assert attempts[1]["error"] == "RuntimeError: injected: cpu-middle does not load"
    assert model.profile == CPU_LEAN and model.pipe is not None
    assert frames.shape == (4, 64, 64, 3) and params.decode_chunk_size == 2


def test_no_rung_left_that_loads_ends_the_process(tiny_settings, failing_loads, monkeypatch):
    exits: list[int] = []

    def fake_exit(code: int) -> None:  # the real one would end pytest too
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(stepdown.os, "_exit", fake_exit)
    model = models.load_model(tiny_settings, CPU_PROFILE, (CPU_LEAN,))
    spec = _spec("lost")
    model.pipe = FaultyPipeline(model.pipe, job=spec.to_dict)
    failing_loads.add("cpu-lean")
    with pytest.raises(SystemExit):
        stepdown.generate(model, tiny_settings, spec, IMAGE)
    assert exits == [stepdown.EXIT_POISONED]  # the job goes back to the queue, a fresh child
    assert model.pipe is None  # ...and this process never runs another job


def test_load_first_names_every_rung_and_why(tiny_settings, failing_loads) -> None:
    failing_loads.update({"cpu", "cpu-lean"})
    tried: list[dict[str, object]] = []
    with pytest.raises(WorkerFatalError) as lost:
        models.load_first(tiny_settings, (CPU_PROFILE, CPU_LEAN), tried)
    assert str(lost.value) == (
        "no pipeline could be loaded in this worker process: "
        "cpu (RuntimeError: injected: cpu does not load); "
        "cpu-lean (RuntimeError: injected: cpu-lean does not load)"
    )
    assert [t["outcome"] for t in tried] == ["load_failed", "load_failed"]
    failing_loads.clear()
    failing_loads.add("cpu")
    assert models.load_first(tiny_settings, (CPU_PROFILE, CPU_LEAN)).profile == CPU_LEAN


def test_a_time_limit_in_a_reload_times_the_job_out_and_the_next_job_reloads(
    tiny_settings, monkeypatch
) -> None:
    """Review finding 2: the job's soft time limit landing in a step-down's reload is the
    job's end (worker/delivery.py records it as timed out), not a rung that failed to load.
    The eviction has happened by then: the next job loads the pipeline again first."""
    real = models.load_model
    model = real(tiny_settings, CPU_PROFILE, (CPU_LEAN,))
    spec = _spec("time-up")
    model.pipe = FaultyPipeline(model.pipe, job=spec.to_dict)  # out of memory once

    def time_up(*_: object, **__: object) -> models.LoadedModel:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(models, "load_model", time_up)
    with pytest.raises(SoftTimeLimitExceeded):
        stepdown.generate(model, tiny_settings, spec, IMAGE)
    assert model.pipe is None  # evicted before the reload the time limit ended
    monkeypatch.setattr(models, "load_model", real)
    again = resident.ensure_variant(model, tiny_settings, "tiny", "tiny", "next")
    assert again is model and model.pipe is not None
    frames, _, _, attempts = stepdown.generate(model, tiny_settings, _spec("next"), IMAGE)
    assert frames.shape == (4, 64, 64, 3)
    assert [a["outcome"] for a in attempts] == ["succeeded"]
