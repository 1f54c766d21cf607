"""Adversary tests for SVDQ_OVERLAP ≥ 2 (issue 15 item 1): the cooperative time limits, the
jobs-in-flight record and the GPU gate, with real threads and a real Redis (the test DB).

Each test is a defect found on main; it is xfail(strict) until the code is fixed, so it
fails loudly the day the fix lands (then drop the mark).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis as redis_lib
from celery.exceptions import SoftTimeLimitExceeded

from svdq.shared.constants import DEAD_LETTER_KEY, deliveries_key, generations_key, lease_key
from svdq.shared.errors import JobTimeoutError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import delivery, overlap
from svdq.worker.delivery import attempts, deliver
from svdq.worker.metrics import WorkerMetrics
from svdq.worker.overlap import GpuGate, InFlight, Watchdog
from svdq.worker.sharing import RunGate

JOB = "overlap-adv-1"
SETTINGS = Settings.from_env({"SVDQ_RETRY_BACKOFF": "1", "SVDQ_RETRY_BACKOFF_MAX": "2"})
COUNTS = WorkerMetrics()


def _never_end(status: int) -> None:
    raise AssertionError(f"the watchdog must not end the process here (status {status})")


class _WatchdogTicksOnClose(redis_lib.Redis):
    """The test DB's client, on which the watchdog's once-a-second tick (Watchdog._forever,
    `every=1.0`) happens to fall while the job's thread closes its attempt: `tick()` runs
    in its own thread, as the watchdog's does, and is joined before the close goes on."""

    tick: Any = None

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        if script == delivery._CLOSE and self.tick is not None:
            ticker = threading.Thread(target=self.tick)
            ticker.start()
            ticker.join()
        return super().eval(script, numkeys, *keys_and_args)


@pytest.fixture
def ticking(redis_url: str) -> _WatchdogTicksOnClose:
    client = _WatchdogTicksOnClose(connection_pool=redis_lib.ConnectionPool.from_url(redis_url))
    client.delete(lease_key(JOB), deliveries_key(JOB), generations_key(JOB))
    client.hdel(DEAD_LETTER_KEY, JOB)
    return client


def test_a_soft_limit_the_job_raised_itself_is_not_raised_again_in_its_handler(
    ticking: _WatchdogTicksOnClose,
) -> None:
    """The watchdog's deadline is InFlight.begin's (lifecycle._begin) and it looks once a
    second; the job's own check_soft looks at every
    step: whichever comes first, the other one follows while the job handles the first."""
    held = InFlight()
    dog = Watchdog(held, end=_never_end)
    ticking.tick = dog.check
    outcome: list[BaseException] = []
    spec = JobSpec.from_dict({"image": "s3://b/inputs/x.png", "job_id": JOB, "seed": 1})

    def run() -> dict[str, Any]:
        time.sleep(0.15)  # denoising, past the 0.1 s soft limit; the watchdog has not looked
        held.check_soft(JOB)  # progress() at the next step (lifecycle._generate): raises
        raise AssertionError("check_soft must have raised")

    def job() -> None:
        held.begin(JOB, hard_limit=600, soft_limit=0.1)  # lifecycle._begin
        try:
            deliver(ticking, spec, SETTINGS, "w@h", lambda: None, run, 0.1, counts=COUNTS)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            held.end(JOB)  # lifecycle._end: takes back a soft limit still pending

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], JobTimeoutError), outcome
    last = attempts(ticking, JOB)[-1]
    assert str(last["reason"]).startswith("timed out"), last  # closed, not left open


def test_a_second_copy_of_a_running_job_does_not_unwatch_the_first() -> None:
    held = InFlight()
    first_in, first_go = threading.Event(), threading.Event()

    def first_copy() -> None:  # runs on, hung in C, past its hard limit
        held.begin(JOB, hard_limit=0.2, soft_limit=0.1)
        first_in.set()
        first_go.wait(10)

    def second_copy() -> None:  # lifecycle.process: _begin, LeaseBusy → Retry, _end
        held.begin(JOB, hard_limit=600, soft_limit=590)
        held.end(JOB)

    one = threading.Thread(target=first_copy)
    one.start()
    first_in.wait(5)
    two = threading.Thread(target=second_copy)
    two.start()
    two.join(5)
    time.sleep(0.3)  # the first copy is now past its hard limit
    ended: list[int] = []
    try:
        assert held.holds(JOB), "the running copy vanished from the jobs in flight"
        assert JOB in held.fields()["jobs"].split(","), held.fields()  # svdq stats
        assert Watchdog(held, end=ended.append).check() and ended == [overlap.EXIT_HARD_LIMIT]
    finally:
        first_go.set()
        one.join(5)


def test_waiting_for_the_gpu_does_not_count_against_the_waiting_jobs_hard_limit() -> None:
    held, gate = InFlight(), GpuGate()
    on_gpu, done = threading.Event(), threading.Event()
    ended: list[int] = []

    def other_job() -> None:  # a legitimate 0.6 s GPU phase, within its own 1 s limit
        held.begin("other", hard_limit=1.0)
        with gate.held("other"), held.on_gpu("other"):
            on_gpu.set()
            time.sleep(0.6)
        held.end("other")

    def this_job() -> None:  # its own GPU phase is 0.1 s: fits its 0.5 s limit alone
        held.begin("this", hard_limit=0.5)
        with gate.held("this"), held.on_gpu("this"):
            time.sleep(0.1)
        held.end("this")
        done.set()

    dog = Watchdog(held, end=ended.append, every=0.05)
    a = threading.Thread(target=other_job)
    a.start()
    on_gpu.wait(5)
    b = threading.Thread(target=this_job)
    b.start()
    deadline = time.monotonic() + 5
    while not done.is_set() and time.monotonic() < deadline:
        if dog.check():
            break
        time.sleep(0.05)
    a.join(5)
    b.join(5)
    assert ended == [], "the watchdog ended the process for a job that only waited for the GPU"


def test_a_job_waiting_for_a_suspect_running_alone_is_delayed_not_failed() -> None:
    held, gate = InFlight(), RunGate()
    alone_in = threading.Event()
    outcome: list[str] = []

    def suspect() -> None:  # a suspect of the last shared loss, running alone for 0.6 s
        held.begin("suspect", hard_limit=600, soft_limit=590)
        with gate.shared(), gate.alone():
            alone_in.set()
            time.sleep(0.6)
        held.end("suspect")

    def next_job() -> None:  # the other thread's next message: lifecycle.process
        held.begin("next", hard_limit=600, soft_limit=0.3)  # _begin, before `with gate:`
        try:
            with gate.shared():
                outcome.append("ran")  # its own run is short: fits its limit alone
        except SoftTimeLimitExceeded:
            outcome.append("failed while waiting to run")
        finally:
            held.end("next")

    dog = Watchdog(held, end=_never_end, every=0.05)
    dog.start()
    try:
        a = threading.Thread(target=suspect)
        a.start()
        alone_in.wait(5)
        b = threading.Thread(target=next_job)
        b.start()
        a.join(5)
        b.join(5)
    finally:
        dog.stop()
    assert outcome == ["ran"], outcome
