"""The reaper (worker/reaper.py, shared/orphans.py): a dead host's job is queued again from its
lease and heartbeat, once, and a live worker's job never is."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis as redis_lib

from svdq.producer.client import Client
from svdq.producer.stats import snapshot
from svdq.shared import holders
from svdq.shared.celery_app import make_celery, send_job
from svdq.shared.constants import (
    HOLDERS_KEY,
    REQUEUED_FIELD,
    deliveries_key,
    generations_key,
    job_key,
    lease_key,
    queue_for,
    worker_key,
)
from svdq.shared.orphans import orphans
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker.reaper import HOST_GONE, Broker, requeue, scan
from tests.faults.conftest import check_end_state
from tests.faults.test_workers import submit
from tests.integration.helpers import FAST, make_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow (CI runs it)

QUEUE = queue_for("tiny")


def spec(job_id: str) -> JobSpec:
    return JobSpec.from_dict(
        {"image": "s3://svdq/inputs/" + "a" * 64 + ".png", "job_id": job_id, **FAST}
    )


def take_and_die(app: Any, count: int) -> None:
    """Take `count` messages off the tiny queue as a worker does (kombu's QoS puts each in the
    unacked hash), then vanish without acknowledging or restoring them: a host that died."""
    conn = app.connection_for_write()
    channel = conn.channel()
    for _ in range(count):
        assert channel.basic_get(QUEUE, no_ack=False) is not None
    channel.qos.restore_at_shutdown = False  # a SIGKILLed host restores nothing
    conn.release()


def hold(rdb: redis_lib.Redis, worker: str, boot: str, at: float | None = None) -> list[str]:
    """Name `worker`'s start `boot` as the holder of every message in kombu's unacked hash that
    has no holder entry yet, as the worker's task_received handler does (worker/tasks.py);
    return their tags."""
    tags = [t.decode() for t in rdb.hkeys("unacked") if not rdb.hexists(HOLDERS_KEY, t)]
    for tag in tags:
        taken = rdb.zscore("unacked_index", tag) if at is None else at
        # the score the worker reads right after kombu's ZADD (`at`: an earlier delivery's)
        taken = float(taken or time.time())
        holders.record(rdb, tag, worker, boot, taken, 7200, score=taken)
    return tags


def open_attempt(
    rdb: redis_lib.Redis, job_id: str, worker: str, pid: int, started: float | None = None
) -> None:
    """The attempt a worker records when its run begins (worker/delivery.py's Attempt)."""
    at = time.time() + 0.01 if started is None else started
    entry = {"worker": worker, "pid": pid, "started_at": at, "reason": None, "n": 1}
    rdb.rpush(deliveries_key(job_id), json.dumps(entry))


def queued(rdb: redis_lib.Redis) -> list[dict[str, Any]]:
    """Every message waiting on the tiny queue's lists (one per priority step)."""
    lists = [k for k in rdb.scan_iter(match=f"{QUEUE}*") if rdb.type(k) == b"list"]
    return [json.loads(raw) for k in lists for raw in rdb.lrange(k, 0, -1)]


def queued_copies(rdb: redis_lib.Redis, job_id: str) -> int:
    return sum(m["headers"]["id"] == job_id for m in queued(rdb))


def test_racing_reapers_requeue_each_orphan_once_and_never_a_live_job(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    app = make_celery(Settings.from_env(fault_env))
    settings = Settings.from_env(fault_env)
    orphaned = [f"orphan{i}" for i in range(6)]
    # Not orphans: a live worker's job whose lease lapsed for a moment (its heartbeat names
    # that very process), a job whose lease is held, a reserved message no run began, and a
    # message taken again (by a live worker) just after its last run's pool child was killed.
    alive, leased, reserved, retaken = "alive", "leased", "reserved", "retaken"
    for job_id in [*orphaned, alive, leased, reserved, retaken]:
        send_job(app, spec(job_id), settings)
    open_attempt(rdb, retaken, "dead@host", 999_999, started=time.time())
    take_and_die(app, 10)
    for job_id in orphaned:
        open_attempt(rdb, job_id, "dead@host", 999_999)
    open_attempt(rdb, alive, "live@host", 4242)
    rdb.hset(worker_key("live@host"), mapping={"pid": "4242", "job_id": alive})
    open_attempt(rdb, leased, "dead@host", 999_999)
    rdb.set(lease_key(leased), "{}", ex=60)
    rdb.hset(job_key("orphan0"), mapping={"queue": QUEUE, "submitted_at": time.time()})
    progress = {"status": "PROGRESS", "result": {"phase": "denoise", "step": 2, "steps": 40}}
    rdb.set("celery-task-meta-orphan0", json.dumps({**progress, "task_id": "orphan0"}))
    assert sorted(o.held.job_id for o in orphans(rdb)) == orphaned
    # Before any reaper acts, nobody is shown running them: stats lists them as lost, and
    # status says the job's worker is gone.
    snap = snapshot(rdb)
    assert sorted(j["job_id"] for j in snap["lost"]) == orphaned
    assert snap["queues"][QUEUE]["in_flight"] == 4
    client = Client(settings, store)
    status = client.status("orphan0")
    assert status["state"] == "running" and "dead@host is gone" in status["lost"], status

    # Eight reapers at once, past the lock: every one finds every orphan and tries to requeue
    # it; HDEL's single winner must queue each exactly once.
    wins: list[str] = []
    start = threading.Barrier(8)

    def reap(name: str) -> None:
        broker = Broker(make_celery(settings))
        found = orphans(broker.client())
        start.wait()
        for orphan in found:
            if requeue(broker, orphan, f"{HOST_GONE}: requeued by {name}"):
                wins.append(orphan.held.job_id)
        broker.close()

    threads = [threading.Thread(target=reap, args=(f"r{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(wins) == orphaned
    for job_id in orphaned:
        assert queued_copies(rdb, job_id) == 1, job_id
        [attempt] = [json.loads(a) for a in rdb.lrange(deliveries_key(job_id), 0, -1)]
        assert attempt["reason"].startswith(f"{HOST_GONE}: requeued by r"), attempt
    assert json.loads(rdb.hget(job_key("orphan0"), REQUEUED_FIELD))["worker"] == "dead@host"
    status = client.status("orphan0")  # its stale PROGRESS state is gone: queued, and why
    assert status["state"] == "queued" and "requeued by r" in status["requeued"], status
    # The three others are still in flight, untouched; the late originals are gone.
    held = {json.loads(v)[0]["headers"]["id"] for v in rdb.hvals("unacked")}
    assert held == {alive, leased, reserved, retaken}
    assert rdb.zcard("unacked_index") == 4
    # A scan (under the lock) finds nothing more to do.
    assert scan(Broker(app), store, "late") == []
    # The requeued message is the original, marked redelivered as kombu marks a restore.
    assert all(m["headers"]["redelivered"] is True for m in queued(rdb))


def test_dead_host_job_runs_elsewhere_and_a_slow_live_job_is_never_reaped(
    fault_env: dict[str, str], store: Any, rdb: redis_lib.Redis, workers: Any, tmp_path: Any
) -> None:
    """SIGKILL of a whole worker mid-job, with the DEFAULT visibility timeout (two hours): the
    other worker's reaper queues the job again within lease TTL + scan interval, and it
    finishes there. Then a job longer than the lease TTL runs on the live worker, whose own
    reaper scans all along: never reaped."""
    lease_ttl, heartbeat_ttl, interval = 3, 3, 1
    quick = {
        "SVDQ_VISIBILITY_TIMEOUT": "7200",
        "SVDQ_TASK_TIME_LIMIT": "3600",
        "SVDQ_LEASE_TTL": str(lease_ttl),
        "SVDQ_HEARTBEAT_TTL": str(heartbeat_ttl),
        "SVDQ_REAP_INTERVAL": str(interval),
    }
    client = Client(Settings.from_env({**fault_env, **quick}), store)
    image = make_image(tmp_path / "c.png", (160, 96))
    first = workers.start("first", **quick)
    # Slow on its first delivery only: it is still running when `first` dies.
    submit(client, image, "orphan", "sleep_once:120")
    deadline = time.monotonic() + 60
    while not rdb.llen(deliveries_key("orphan")):  # its run began on `first`
        assert time.monotonic() < deadline, first.text()[-2000:]
        time.sleep(0.05)
    second = workers.start("second", **quick)
    while "loaded tiny" not in second.text():  # "ready." comes before the child's model load
        assert time.monotonic() < deadline + 60, second.text()[-2000:]
        time.sleep(0.1)
    killed_at = time.time()
    first.kill()
    # Until it is requeued (the reaper closes the lost attempt), no live worker is shown
    # running the dead one's job. The snapshot is read first: if the attempt is still open
    # after it, the snapshot saw the state before the requeue.
    while True:
        live = [w for w in snapshot(rdb)["workers"] if w["name"].startswith("second@")]
        if json.loads(rdb.lindex(deliveries_key("orphan"), 0))["reason"] is not None:
            break
        assert all(w["job_id"] != "orphan" for w in live), live
        assert time.time() - killed_at < 60, second.text()[-3000:]
        time.sleep(0.2)
    states = check_end_state(client, store, rdb, {"orphan": 1}, 60)

    assert states["orphan"]["state"] == "succeeded"
    assert states["orphan"]["result"]["worker"].startswith("second@")
    lost, done = [json.loads(a) for a in rdb.lrange(deliveries_key("orphan"), 0, -1)]
    assert lost["worker"].startswith("first@") and done["worker"].startswith("second@")
    assert lost["reason"].startswith(f"{HOST_GONE}: requeued by second@"), lost
    assert done["reason"] == "succeeded"
    # The lease and the heartbeat lapse within their TTLs and a scan follows within an
    # interval: that is when the reaper closed the lost attempt. The job then takes its own
    # time on `second`. (3 s allowed for a busy 2-core machine.)
    bound = max(lease_ttl, heartbeat_ttl) + interval
    assert lost["ended_at"] - killed_at <= bound + 3, lost["ended_at"] - killed_at
    job_s = states["orphan"]["result"]["timings"]["total"]
    assert done["ended_at"] - killed_at <= bound + job_s + 3, (done, killed_at, job_s)
    # One GPU run lost with `first`, one finished: exactly one result.json (check_end_state).
    assert int(rdb.get(generations_key("orphan"))) == 2

    # A slow job (three lease TTLs long) on the live worker, its reaper scanning every second.
    submit(client, image, "slow", f"sleep:{3 * lease_ttl}")
    states = check_end_state(client, store, rdb, {"slow": 0}, 60)
    assert states["slow"]["state"] == "succeeded"
    [attempt] = [json.loads(a) for a in rdb.lrange(deliveries_key("slow"), 0, -1)]
    assert attempt["reason"] == "succeeded"
    assert not rdb.hexists(job_key("slow"), REQUEUED_FIELD)
