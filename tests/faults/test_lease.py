"""The lease and the delivery bookkeeping against a real Redis (the test DB), no worker."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
from typing import Any

import pytest
import redis as redis_lib
from prometheus_client import REGISTRY

from svdq.shared.constants import lease_key
from svdq.shared.errors import (
    AlreadyFailedError,
    DeadLetteredError,
    InvalidJobError,
    LeaseBusy,
    RetryLater,
    TransientError,
)
from svdq.shared.limits import time_limits
from svdq.shared.retry import compute_backoff, with_retries
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker.delivery import attempts, deliver
from svdq.worker.lease import Lease
from svdq.worker.metrics import WorkerMetrics

# The worker's counters, handed to the lease and the delivery code as the worker does.
COUNTS = WorkerMetrics()


def metric(name: str, **labels: str) -> float:
    """A sample of this process's worker metrics (the delivery code counts into them)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def r(redis_url: str) -> redis_lib.Redis:
    client = redis_lib.Redis.from_url(redis_url)
    client.delete(lease_key("L1"))
    return client


def test_second_delivery_is_refused_while_the_first_is_alive(r: redis_lib.Redis) -> None:
    first = Lease.acquire(r, "L1", 5, "a@host")
    assert first is not None
    assert Lease.acquire(r, "L1", 5, "b@host") is None
    assert 0 < r.ttl(lease_key("L1")) <= 5
    first.release()
    assert not r.exists(lease_key("L1"))
    assert Lease.acquire(r, "L1", 5, "b@host") is not None


def test_lease_is_renewed_while_held_and_only_by_its_holder(r: redis_lib.Redis) -> None:
    renewals = metric("svdq_lease_renewals_total")
    lease = Lease.acquire(r, "L1", 1, "a@host", COUNTS.lease_renewed)
    assert lease is not None
    with lease:
        time.sleep(1.6)  # past the TTL: only the renewal thread keeps it
        assert json.loads(r.get(lease_key("L1")))["worker"] == "a@host"
    assert not r.exists(lease_key("L1"))
    assert metric("svdq_lease_renewals_total") >= renewals + 2  # every 1/3 s, for 1.6 s
    # A lease that expired and was taken over is not released by its old holder.
    stale = Lease.acquire(r, "L1", 1, "a@host")
    assert stale is not None
    r.delete(lease_key("L1"))
    fresh = Lease.acquire(r, "L1", 5, "b@host")
    assert fresh is not None
    stale.release()
    assert r.get(lease_key("L1")) == fresh.value.encode()
    assert stale.renew() is False


def test_a_dead_process_lease_on_this_host_is_taken_over_at_once(r: redis_lib.Redis) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    holder = {"token": "x", "worker": "old@h", "host": socket.gethostname(), "pid": gone.pid}
    r.set(lease_key("L1"), json.dumps(holder), ex=60)
    taken = Lease.acquire(r, "L1", 5, "new@h")
    assert taken is not None and json.loads(taken.value)["pid"] == os.getpid()
    # A holder on another host is left to its TTL.
    r.set(lease_key("L1"), json.dumps({**holder, "host": "elsewhere"}), ex=60)
    assert Lease.acquire(r, "L1", 5, "new@h") is None


def test_backoff_grows_is_capped_and_jittered() -> None:
    rnd = random.Random(7)
    waits = [compute_backoff(n, 2, 30, rnd=rnd) for n in range(1, 8)]
    for n, wait in enumerate(waits, start=1):
        ceiling = min(30, 2 * 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert len({round(w, 6) for w in waits}) == len(waits)


def test_upload_retries_only_the_upload_and_gives_up_bounded() -> None:
    settings = Settings.from_env({"SVDQ_RETRY_BACKOFF": "1", "SVDQ_RETRY_BACKOFF_MAX": "4"})
    calls, slept = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("S3 put_object failed: connection refused")
        return "ok"

    assert with_retries(flaky, "upload of k", settings, sleep=slept.append) == "ok"
    assert len(calls) == 3 and len(slept) == 2 and 0.5 <= slept[0] <= 1 <= slept[1] <= 2

    def down() -> None:
        calls.append(1)
        raise TransientError("S3 put_object failed: connection refused")

    calls.clear()
    with pytest.raises(TransientError, match="upload of k failed 5 times"):
        with_retries(down, "upload of k", settings, sleep=slept.append)
    assert len(calls) == 5


def test_uploads_retry_on_a_time_budget_not_a_count() -> None:
    """Review finding 7: with tries=None and a budget, with_retries goes on past five tries
    while the next one would start within the budget, then says how long it tried."""
    settings = Settings.from_env({"SVDQ_RETRY_BACKOFF": "1", "SVDQ_RETRY_BACKOFF_MAX": "1"})
    now = [0.0]
    calls: list[int] = []

    def down_for_nine() -> str:
        calls.append(1)
        if len(calls) <= 9:
            raise TransientError("S3 put_object failed: connection refused")
        return "ok"

    def sleep(seconds: float) -> None:
        now[0] += seconds

    clock = lambda: now[0]  # noqa: E731
    assert with_retries(down_for_nine, "k", settings, None, sleep, 60, clock) == "ok"
    assert len(calls) == 10
    calls.clear()
    now[0] = 0.0
    with pytest.raises(TransientError, match=r"k failed \d+ times in \d+s"):
        with_retries(down_for_nine, "k", settings, None, sleep, 3, clock)
    assert 3 <= len(calls) <= 7 and now[0] <= 3  # waits of 0.5-1 s, none past the 3 s budget


def test_time_limits_sit_below_the_visibility_timeout() -> None:
    settings = Settings.from_env(
        {"SVDQ_TASK_TIME_LIMIT": "3600", "SVDQ_VISIBILITY_TIMEOUT": "7200"}
    )
    assert time_limits("svd-xt", settings) == (3540, 3600)
    assert time_limits("svd", settings) == (2100, 2160)
    assert time_limits("tiny", Settings.from_env({"SVDQ_TASK_TIME_LIMIT": "6"})) == (5, 6)


JOB = "deliver-1"


@pytest.fixture
def fresh(redis_url: str) -> redis_lib.Redis:
    from svdq.shared.constants import DEAD_LETTER_KEY, deliveries_key, generations_key

    client = redis_lib.Redis.from_url(redis_url)
    client.delete(lease_key(JOB), deliveries_key(JOB), generations_key(JOB))
    client.hdel(DEAD_LETTER_KEY, JOB)
    return client


def job() -> JobSpec:
    return JobSpec.from_dict({"image": "s3://b/inputs/x.png", "job_id": JOB, "seed": 1})


SETTINGS = Settings.from_env({"SVDQ_RETRY_BACKOFF": "1", "SVDQ_RETRY_BACKOFF_MAX": "2"})


def never() -> dict[str, Any]:
    raise AssertionError("must not run")


def test_a_done_job_returns_its_record_and_runs_nothing(fresh: redis_lib.Redis) -> None:
    record = {"job_id": JOB, "status": "succeeded"}
    assert deliver(fresh, job(), SETTINGS, "w@h", lambda: record, never, counts=COUNTS) == record
    assert fresh.keys(f"svdq:*{JOB}*") == []  # no lease left, no attempt, no generation


def test_a_live_holder_makes_the_second_delivery_wait(fresh: redis_lib.Redis) -> None:
    holder = {"token": "t", "worker": "a@h", "host": socket.gethostname(), "pid": os.getppid()}
    fresh.set(lease_key(JOB), json.dumps(holder), ex=30)
    with pytest.raises(LeaseBusy):
        deliver(fresh, job(), SETTINGS, "b@h", lambda: None, never, counts=COUNTS)
    assert attempts(fresh, JOB) == []  # a wait is not a delivery


def test_transient_faults_retry_on_their_own_budget_then_dead_letter(
    fresh: redis_lib.Redis,
) -> None:
    """Transient faults are not deliveries (issue 10, defect 3): five in a row leave the job
    retrying; once SVDQ_TRANSIENT_BUDGET has passed since the first, it is dead-lettered."""

    def flaky() -> dict[str, Any]:
        raise TransientError("S3 get_object failed: SlowDown")

    dead = metric("svdq_dead_letters_total", reason="transient")
    waits = []
    for _ in range(5):  # more than SVDQ_MAX_DELIVERIES (3)
        with pytest.raises(RetryLater) as later:
            deliver(fresh, job(), SETTINGS, "w@h", lambda: None, flaky, counts=COUNTS)
        waits.append(later.value.wait)
    assert 0.5 <= waits[0] <= 1 and all(1 <= w <= 2 for w in waits[1:])  # capped
    assert not fresh.hexists("svdq:dead", JOB)
    # The first fault, back-dated past the budget (900 s by default): the next one is the last.
    first = json.loads(fresh.lindex(f"svdq:deliveries:{JOB}", 0))
    first["started_at"] -= SETTINGS.transient_budget + 1
    fresh.lset(f"svdq:deliveries:{JOB}", 0, json.dumps(first))
    with pytest.raises(DeadLetteredError, match="SVDQ_TRANSIENT_BUDGET=900s"):
        deliver(fresh, job(), SETTINGS, "w@h", lambda: None, flaky, counts=COUNTS)
    record = json.loads(fresh.hget("svdq:dead", JOB))
    assert [a["reason"] for a in record["attempts"]] == [
        "transient: S3 get_object failed: SlowDown"
    ] * 6
    with pytest.raises(DeadLetteredError, match="is dead-lettered"):
        deliver(fresh, job(), SETTINGS, "w@h", lambda: None, never, counts=COUNTS)
    assert int(fresh.get(f"svdq:generations:{JOB}")) == 6
    assert not fresh.exists(lease_key(JOB))
    assert metric("svdq_dead_letters_total", reason="transient") == dead + 1


def test_a_killed_delivery_still_counts_between_transient_faults(fresh: redis_lib.Redis) -> None:
    """Deliveries lost with their process count toward SVDQ_MAX_DELIVERIES; transient faults
    in between do not."""

    def flaky() -> dict[str, Any]:
        raise TransientError("S3 put_object failed: 503")

    for _ in range(3):  # three lost deliveries (their attempts left open), transient between
        with pytest.raises(RetryLater):
            deliver(fresh, job(), SETTINGS, "w@h", lambda: None, flaky, counts=COUNTS)
        fresh.rpush(f"svdq:deliveries:{JOB}", json.dumps({"worker": "x@h", "reason": None}))
    with pytest.raises(DeadLetteredError, match="3 deliveries, none finished"):
        deliver(fresh, job(), SETTINGS, "w@h", lambda: None, never, counts=COUNTS)


def test_bad_input_fails_once_and_a_late_copy_runs_nothing(fresh: redis_lib.Redis) -> None:
    def bad() -> dict[str, Any]:
        raise InvalidJobError("image='s3://b/inputs/x.png' does not exist", field="image")

    with pytest.raises(InvalidJobError):
        deliver(fresh, job(), SETTINGS, "w@h", lambda: None, bad, counts=COUNTS)
    with pytest.raises(AlreadyFailedError, match="already failed: invalid: image="):
        deliver(fresh, job(), SETTINGS, "w@h", lambda: None, never, counts=COUNTS)
    assert [a["final"] for a in attempts(fresh, JOB)] == [True]
