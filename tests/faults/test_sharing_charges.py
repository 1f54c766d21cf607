"""Shared-loss charging with overlap on (worker/sharing.py classify, the dead-letter count in
worker/delivery.py), on real Redis with real process deaths: each lost delivery runs in a
forked child that is SIGKILLed mid-run, with or without a second job running in its threads,
as a threads-pool worker's process dies; the next delivery reads what the dead process left.

- a job lost beside another is not charged (and runs alone next);
- a job lost alone is charged: SVDQ_MAX_DELIVERIES charged losses dead-letter it;
- more than 2 × SVDQ_MAX_DELIVERIES losses in all, charged or not, dead-letter it too.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest
import redis as redis_lib

from svdq.shared.constants import (
    DEAD_LETTER_KEY,
    deliveries_key,
    generations_key,
    lease_key,
    proc_key,
)
from svdq.shared.errors import DeadLetteredError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import sharing
from svdq.worker.delivery import attempts, deliver
from svdq.worker.identity import process_id

pytestmark = pytest.mark.integration

SETTINGS = Settings.from_env({"SVDQ_LEASE_TTL": "3"})
MAX = SETTINGS.max_deliveries
JOBS = ("victim", "culprit", "loner", "waiter", *(f"killer-{i}" for i in range(2 * MAX)))


class Counts:
    """What deliver() reports, kept to be checked (worker.metrics.WorkerMetrics's part)."""

    def __init__(self) -> None:
        self.dead: list[str] = []

    def lease_renewed(self) -> None:
        pass

    def dead_lettered(self, kind: str) -> None:
        self.dead.append(kind)


def spec(job_id: str) -> JobSpec:
    return JobSpec.from_dict({"image": "s3://b/inputs/x.png", "job_id": job_id, "seed": 1})


@pytest.fixture
def r(redis_url: str) -> redis_lib.Redis:
    client = redis_lib.Redis.from_url(redis_url)
    for job in JOBS:
        client.delete(lease_key(job), deliveries_key(job), generations_key(job))
        client.hdel(DEAD_LETTER_KEY, job)
    return client


def _forever() -> dict[str, Any]:
    while True:
        time.sleep(0.05)


def die_in_a_child(redis_url: str, job: str, beside: str | None) -> None:
    """One threads-pool process, forked: `job` is delivered in it (beside `beside`, delivered
    first in a thread of its own, when given), and the process is SIGKILLed once `job`'s
    attempt is open in it. `beside` is the killer: it runs; `job` runs too, or (a suspect)
    waits at the gate to run alone."""
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's Redis connections is used here
        try:
            client = redis_lib.Redis.from_url(redis_url)
            shared = sharing.Sharing(client, process_id(), 600)
            key = proc_key(process_id())

            def kill_once_open() -> dict[str, Any]:
                while not client.hexists(key, job):
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)
                raise AssertionError("unreachable")

            def one(job_id: str, run: Any) -> None:
                with shared.gate.shared():
                    deliver(client, spec(job_id), SETTINGS, "w@h", lambda: None, run,
                            counts=Counts(), shared=shared)  # fmt: skip

            if beside is None:
                threading.Thread(target=kill_once_open, daemon=True).start()
            else:
                running = threading.Event()

                def killer() -> dict[str, Any]:
                    running.set()
                    return kill_once_open()

                threading.Thread(target=one, args=(beside, killer), daemon=True).start()
                running.wait(20)
            one(job, _forever)
        finally:
            os._exit(3)  # never reached after the kill: anything else is a failure
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def lost(r: redis_lib.Redis, job: str) -> list[dict[str, Any]]:
    """The job's attempts as its next delivery left them (classified: `charged`, `beside`)."""
    result = deliver(
        r, spec(job), SETTINGS, "w@h", lambda: None, lambda: {"ok": job}, counts=Counts()
    )
    assert result == {"ok": job}
    return attempts(r, job)


def test_a_job_lost_beside_another_is_not_charged_one_lost_alone_is(
    r: redis_lib.Redis, redis_url: str
) -> None:
    die_in_a_child(redis_url, "victim", beside="culprit")
    die_in_a_child(redis_url, "loner", beside=None)
    victim, culprit, loner = (lost(r, j) for j in ("victim", "culprit", "loner"))

    first = victim[0]
    assert first["charged"] is False and first["beside"] == ["culprit"], first
    assert first["reason"] == (
        "worker lost during this attempt (process killed or crashed); "
        "beside job culprit: not charged, runs alone next"
    )
    assert victim[-1]["reason"] == "succeeded"  # a shared loss does not use up the job
    # Both ran; neither can be told from the other by the process's death: both uncharged.
    assert culprit[0]["charged"] is False and culprit[0]["beside"] == ["victim"], culprit
    # Alone in its process: the loss is its own, charged as under prefork.
    assert loner[0]["charged"] is True and "beside" not in loner[0], loner
    assert loner[0]["reason"] == "worker lost during this attempt (process killed or crashed)"


def test_charged_losses_dead_letter_at_the_limit_shared_ones_at_twice_it(
    r: redis_lib.Redis, redis_url: str
) -> None:
    # Alone: SVDQ_MAX_DELIVERIES charged losses, and the next delivery dead-letters it.
    for _ in range(MAX):
        die_in_a_child(redis_url, "loner", beside=None)
    counts = Counts()
    with pytest.raises(DeadLetteredError, match=f"after {MAX} deliveries, none finished"):
        deliver(r, spec("loner"), SETTINGS, "w@h", lambda: None, _forever, counts=counts)
    assert counts.dead == ["deliveries"]
    record = json.loads(r.hget(DEAD_LETTER_KEY, "loner"))
    assert [a.get("charged") for a in record["attempts"][:MAX]] == [True] * MAX

    # Beside a different killer each time: first running with it, then (a suspect) waiting at
    # the gate to run alone. None of these losses is charged, and a waiting job is nobody's
    # suspect (the killers are charged). The hard cap ends it: after 2 × MAX losses in all.
    for i in range(2 * MAX):
        # The kill comes once the waiter's attempt is open: that delivery was not refused.
        die_in_a_child(redis_url, "waiter", beside=f"killer-{i}")
    counts = Counts()
    with pytest.raises(DeadLetteredError, match=f"after {2 * MAX} deliveries, none finished"):
        deliver(r, spec("waiter"), SETTINGS, "w@h", lambda: None, _forever, counts=counts)
    assert counts.dead == ["deliveries"]
    record = json.loads(r.hget(DEAD_LETTER_KEY, "waiter"))
    losses = record["attempts"][:-1]
    assert len(losses) == 2 * MAX
    assert [a["beside"] for a in losses] == [[f"killer-{i}"] for i in range(2 * MAX)], losses
    assert all(a["charged"] is False for a in losses), losses
    # The killers: the first ran beside the waiter (a shared loss for both); every later one
    # ran while the waiter only waited at the gate, so its loss is its own, charged.
    killers = [lost(r, f"killer-{i}")[0] for i in range(2 * MAX)]
    assert killers[0]["charged"] is False, killers[0]
    assert all(k["charged"] is True and "beside" not in k for k in killers[1:]), killers
