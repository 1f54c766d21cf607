"""With overlap (SVDQ_OVERLAP ≥ 2) the worker keeps the time limits Celery's threads pool does
not (worker/overlap.py), runs a suspect job alone (worker/sharing.py RunGate), and turns
Flower's Terminate into a cancel (worker/threadpool.py). Real threads, no services."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from svdq.worker.overlap import EXIT_HARD_LIMIT, InFlight, Watchdog
from svdq.worker.sharing import RunGate, suspect
from svdq.worker.threadpool import TaskPool


def test_inflight_lists_the_gpu_job_first_and_forgets_ended_ones() -> None:
    held = InFlight()
    held.begin("a")
    time.sleep(0.01)
    held.begin("b")
    assert held.fields()["jobs"] == "b,a"  # newest first when none is on the GPU
    with held.on_gpu("a"):
        assert held.fields()["job_id"] == "a"
        assert held.fields()["jobs"] == "a,b"
    held.end("a")
    assert held.holds("b") and not held.holds("a")
    held.end("b")
    assert held.fields() == {"job_id": "", "job_started_at": "", "jobs": ""}


def test_inflight_overdue_only_past_the_hard_limit() -> None:
    held = InFlight()
    started = held.begin("slow", hard_limit=10)
    held.begin("free")  # no limit: never overdue
    assert held.late(started + 9) is None
    assert held.late(started + 11) == ("slow", 10)


def test_watchdog_raises_the_soft_limit_in_the_jobs_thread_once() -> None:
    held, seen, began = InFlight(), [], threading.Event()

    def job() -> None:
        held.begin("hung", hard_limit=60, soft_limit=0.2)
        began.set()
        try:
            while True:  # Python-level work: the exception lands at its next bytecode
                time.sleep(0.01)
        except SoftTimeLimitExceeded as exc:
            seen.append(exc)
        finally:
            held.end("hung")

    thread = threading.Thread(target=job)
    thread.start()
    began.wait(5)
    dog = Watchdog(held, end=lambda status: pytest.fail("the hard limit is not due"))
    deadline = time.monotonic() + 5
    while thread.is_alive() and time.monotonic() < deadline:
        dog.check()
        time.sleep(0.05)
    thread.join(1)
    assert not thread.is_alive() and len(seen) == 1
    assert not dog.check()  # the job ended: nothing left to raise or end


def test_watchdog_names_its_culprit_then_ends_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held, calls = InFlight(), []
    held.begin("innocent", hard_limit=600)
    started = held.begin("hung", hard_limit=0.01)
    while time.time() <= started + 0.01:
        time.sleep(0.005)
    dog = Watchdog(
        held,
        end=lambda status: calls.append(("end", status)),
        culprit=lambda job_id, limit: calls.append((job_id, limit)),
    )
    with caplog.at_level(logging.CRITICAL, logger="svdq.worker"):
        assert dog.check()
    assert calls == [("hung", 0.01), ("end", EXIT_HARD_LIMIT)]  # recorded before the end
    assert "job hung ran past its hard time limit" in caplog.text


def test_watchdog_ends_the_process_even_when_the_record_fails() -> None:
    held, ended = InFlight(), []
    started = held.begin("hung", hard_limit=0.01)
    while time.time() <= started + 0.01:
        time.sleep(0.005)

    def redis_away(job_id: str, limit: float | None) -> None:
        raise ConnectionError("Redis away")

    assert Watchdog(held, end=ended.append, culprit=redis_away).check()
    assert ended == [EXIT_HARD_LIMIT]


def test_terminate_is_a_cancel_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    pool = TaskPool(limit=1)
    with caplog.at_level(logging.WARNING, logger="svdq.worker"):
        pool.terminate_job(1234, "SIGTERM")  # the stock threads pool raises here
    assert "a thread cannot be killed; the job is cancelled" in caplog.text


def test_a_suspect_runs_alone_and_the_next_job_waits_for_it() -> None:
    gate, order = RunGate(), []
    companion_in, companion_go, suspect_in = threading.Event(), threading.Event(), threading.Event()

    def companion() -> None:
        with gate.shared():
            companion_in.set()
            companion_go.wait(5)
            order.append("companion ends")

    def suspect_job() -> None:
        with gate.shared(), gate.alone():
            suspect_in.set()
            order.append("suspect runs")
            time.sleep(0.2)
            order.append("suspect ends")

    def next_job() -> None:
        with gate.shared():
            order.append("next runs")

    first = threading.Thread(target=companion)
    first.start()
    companion_in.wait(5)
    second = threading.Thread(target=suspect_job)
    second.start()
    time.sleep(0.3)
    assert not suspect_in.is_set()  # waits for the job beside it to end
    companion_go.set()
    suspect_in.wait(5)
    third = threading.Thread(target=next_job)
    third.start()  # arrives while the suspect is alone: waits
    for t in (first, second, third):
        t.join(5)
    assert order == ["companion ends", "suspect runs", "suspect ends", "next runs"]


def test_only_a_shared_last_loss_makes_a_suspect() -> None:
    lost = "worker lost during this attempt (process killed or crashed)"
    shared = {"reason": lost + "; beside job x: not charged, runs alone next", "beside": ["x"]}
    alone = {"reason": lost, "charged": True}
    transient = {"reason": "transient: S3 down"}
    assert suspect([shared])
    assert suspect([shared, transient])  # a transient fault is no loss
    assert not suspect([shared, alone])  # ran alone since, and was charged
    assert not suspect([alone, transient])
    assert not suspect([])
