"""Adversarial review of the orphan reaper (issue 11 item 1: worker/reaper.py,
shared/orphans.py). Each test is one finding of the review, written as the behaviour the issue
promises and marked xfail(strict=True) until it is fixed: a dead host's job runs elsewhere
within two minutes, effects stay exactly once, a live worker's job is never reaped, and
`svdq status` / `svdq stats` never lie.

Most tests build the Redis state a worker leaves (kombu's unacked hash and index, the job's
attempt list, heartbeat, lease, Celery state) with the helpers of tests/faults/test_reaper.py;
the first runs real `svdq worker` processes and pauses one with SIGSTOP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_lib

from svdq.producer.client import Client
from svdq.producer.stats import snapshot
from svdq.shared.celery_app import make_celery, send_job
from svdq.shared.constants import (
    LAST_SEEN_KEY,
    QUEUE_CALLBACKS,
    REQUEUED_FIELD,
    TASK_GENERATE,
    deliveries_key,
    job_key,
    lease_key,
    worker_key,
)
from svdq.shared.errors import ConfigError
from svdq.shared.orphans import orphans
from svdq.shared.retry import NEXT_TRY_AT, WAITING
from svdq.shared.settings import Settings
from svdq.shared.storage import S3Store
from svdq.worker.heartbeat import Presence
from svdq.worker.identity import Identity
from svdq.worker.reaper import HOST_GONE, Broker, requeue, scan
from tests.faults.test_reaper import (
    QUEUE,
    hold,
    open_attempt,
    queued_copies,
    spec,
    take_and_die,
)
from tests.faults.test_workers import FAULT
from tests.integration.helpers import FAST, make_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow (CI runs it)

DEAD = "gpu0@gone-host"
PROGRESS = {"status": "PROGRESS", "result": {"phase": "denoise", "step": 2, "steps": 40}}


def progress_meta(rdb: redis_lib.Redis, job_id: str) -> None:
    """The Celery state a run leaves while it denoises (task.update_state)."""
    rdb.set(f"celery-task-meta-{job_id}", json.dumps({**PROGRESS, "task_id": job_id}))


def held(rdb: redis_lib.Redis) -> list[str]:
    """Job ids of the messages in kombu's unacked hash."""
    return sorted(json.loads(v)[0]["headers"]["id"] for v in rdb.hvals("unacked"))


def callbacks_queued(rdb: redis_lib.Redis) -> int:
    lists = [k for k in rdb.scan_iter(match=f"{QUEUE_CALLBACKS}*") if rdb.type(k) == b"list"]
    return sum(int(rdb.llen(k)) for k in lists)


def wait_for(what: Any, seconds: float, why: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


# --- finding 1: a worker that is merely paused is reaped, then finishes the job anyway -------


def test_worker_paused_past_its_ttls_does_not_finish_the_reaped_job_too(
    fault_env: dict[str, str], store: Any, rdb: redis_lib.Redis, workers: Any, tmp_path: Any
) -> None:
    quick = {
        "SVDQ_VISIBILITY_TIMEOUT": "7200",
        "SVDQ_TASK_TIME_LIMIT": "3600",
        "SVDQ_LEASE_TTL": "2",
        "SVDQ_HEARTBEAT_TTL": "2",
        "SVDQ_REAP_INTERVAL": "1",
    }
    client = Client(Settings.from_env({**fault_env, **quick}), store)
    image = make_image(tmp_path / "p.png", (160, 96))
    pair = [workers.start(n, wait=False, **quick) for n in ("pa", "pb")]
    for w in pair:
        w.wait_ready(150)
        wait_for(lambda w=w: "loaded tiny" in w.text(), 90, w.text()[-2000:])
    job = "paused"
    client.submit(
        str(image),
        job_id=job,
        metadata={FAULT: "sleep_once:5"},  # the first run is still sleeping when it is paused
        callback_url="http://127.0.0.1:9/hook",
        **FAST,
    )
    key = deliveries_key(job)
    wait_for(lambda: rdb.llen(key), 60, "the job never started")
    first = json.loads(rdb.lindex(key, 0))["worker"]
    [paused] = [w for w in pair if first.startswith(w.name + "@")]
    os.killpg(paused.proc.pid, signal.SIGSTOP)  # the whole worker stops: no beat, no renewal
    try:
        # The other worker's reaper takes the job (lease and heartbeat lapsed) and runs it.
        wait_for(lambda: rdb.llen(key) == 2, 60, "the paused worker's job was never requeued")
    finally:
        os.killpg(paused.proc.pid, signal.SIGCONT)
    # Wait until both workers are idle again: the copy finished, and whatever the resumed
    # worker does with the run it was in the middle of is over.
    names = [json.loads(a)["worker"] for a in rdb.lrange(key, 0, -1)]

    def settled() -> bool:
        open_ = [a for a in rdb.lrange(key, 0, -1) if json.loads(a)["reason"] is None]
        return not open_ and all(rdb.hget(worker_key(n), "job_id") == b"" for n in names)

    wait_for(settled, 150, "the workers never finished the job")
    assert client.status(job)["state"] == "succeeded"
    attempts = [json.loads(a) for a in rdb.lrange(key, 0, -1)]
    reasons = [a["reason"] for a in attempts]
    seen = {"reasons": reasons, "callbacks": callbacks_queued(rdb)}
    # One finished run, one callback, and the lost attempt keeps the reaper's story.
    assert reasons[0].startswith(HOST_GONE), seen
    assert reasons.count("succeeded") == 1, seen
    assert seen["callbacks"] == 1, seen


# --- finding 2: a dead host's retry, waiting out its countdown, waits for the visibility timeout


def test_dead_hosts_retry_waiting_on_its_countdown_is_requeued(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    job, now = "eta", time.time()
    # Its first run ended with a transient fault on the host (worker/delivery.py _transient):
    # attempt closed, job record says when it is tried again, and task.retry published a copy
    # with a countdown, which that same host took and held (Celery keeps ETA tasks unacked).
    entry = {"worker": DEAD, "pid": 999_999, "started_at": now - 125, "n": 1}
    entry.update(reason="transient: storage unavailable", ended_at=now - 124)
    rdb.rpush(deliveries_key(job), json.dumps(entry))
    rdb.hset(job_key(job), mapping={"queue": QUEUE, WAITING: "transient fault"})
    rdb.hset(job_key(job), NEXT_TRY_AT, now - 118)
    eta = datetime.now(UTC) - timedelta(seconds=118)
    app.send_task(TASK_GENERATE, args=[spec(job).to_dict()], task_id=job, queue=QUEUE, eta=eta)
    take_and_die(app, 1)
    [tag] = rdb.hkeys("unacked")
    rdb.zadd("unacked_index", {tag: now - 120})  # taken two minutes ago; the host died then
    hold(rdb, DEAD, "dead-boot")  # the holder entry its worker wrote as it took the message
    # No worker anywhere beats: nobody can be holding that message for later.
    assert not list(rdb.scan_iter(match=worker_key("*")))
    snap = snapshot(rdb)
    assert snap["queues"][QUEUE]["in_flight"] == 0 or snap["lost"], snap["queues"][QUEUE]
    scan(Broker(app), store, "reviewer")
    assert queued_copies(rdb, job) == 1
    assert held(rdb) == []


# --- finding 3: a worker restarted in a container gets its old pid back --------------------


def test_restarted_worker_with_the_same_pid_does_not_keep_its_predecessors_job(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    job, name, pid = "samepid", "gpu0@box", os.getpid()
    send_job(app, spec(job), settings)
    take_and_die(app, 1)
    # The run began in the pool child with pid `pid`; then the host went down.
    open_attempt(rdb, job, name, pid)
    progress_meta(rdb, job)
    # The host reboots; its container starts again: same hostname, so same worker name, and
    # the same pid for the pool child. The new process is idle (it never ran that job), and
    # the job's lease lapsed long ago.
    Presence(rdb, Identity(name, (QUEUE,), 0, "tiny"), 30).beat({"job_id": ""})
    assert not rdb.exists(lease_key(job))
    assert [o.held.job_id for o in orphans(rdb)] == [job]


# --- finding 4: a host dead between its attempt's end and the ack --------------------------


def test_host_dead_after_its_attempt_ended_is_not_shown_running(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    job, now = "ended", time.time()
    send_job(app, spec(job), settings)
    take_and_die(app, 1)
    hold(rdb, DEAD, "dead-boot")  # the holder entry its worker wrote as it took the message
    entry = {"worker": DEAD, "pid": 999_999, "started_at": now + 0.01, "n": 1}
    entry.update(reason="succeeded", ended_at=now + 5)
    rdb.rpush(deliveries_key(job), json.dumps(entry))
    rdb.hset(job_key(job), mapping={"queue": QUEUE, "submitted_at": now})
    progress_meta(rdb, job)  # the last state the run stored; Celery's SUCCESS never came
    status = Client(settings, store).status(job)
    # No worker is alive anywhere, its lease and heartbeat are gone.
    assert status["state"] != "running" or "lost" in status, status
    scan(Broker(app), store, "reviewer")
    assert held(rdb) == []


# --- finding 5: the requeue acts on a decision that went stale --------------------------------


def test_requeue_does_nothing_once_a_live_delivery_holds_the_lease(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    job = "stale"
    send_job(app, spec(job), settings)
    send_job(app, spec(job), settings)  # a second copy of the job (a duplicate message)
    take_and_die(app, 1)  # the first, on the host that died
    open_attempt(rdb, job, DEAD, 999_999)
    rdb.hset(job_key(job), mapping={"queue": QUEUE, "submitted_at": time.time()})
    [stale] = orphans(rdb)  # what a scan decided; then it waits on the store (result_written)
    # Meanwhile a live worker takes the second copy and runs it (worker/delivery.py): the
    # lease, the dead attempt marked lost, its own attempt, its heartbeat, its progress.
    take_and_die(app, 1)
    rdb.set(lease_key(job), json.dumps({"worker": "gpu0@live", "pid": 4242}), ex=60)
    lost = {**json.loads(rdb.lindex(deliveries_key(job), 0)), "reason": "worker lost"}
    rdb.lset(deliveries_key(job), 0, json.dumps(lost))
    open_attempt(rdb, job, "gpu0@live", 4242)
    rdb.hset(worker_key("gpu0@live"), mapping={"pid": "4242", "job_id": job})
    progress_meta(rdb, job)
    assert orphans(rdb) == []
    broker = Broker(app)
    requeue(broker, stale, f"{HOST_GONE}: requeued by reviewer")
    assert queued_copies(rdb, job) == 0
    assert rdb.exists(f"celery-task-meta-{job}")
    assert not rdb.hexists(job_key(job), REQUEUED_FIELD)


# --- finding 6: one unreadable unacked entry stops the reaper and `svdq stats` ---------------


def test_one_malformed_unacked_entry_stops_neither_the_reaper_nor_stats(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    now = time.time()
    # First in the hash: a tampered entry (the message alone) for a job left open by a dead host.
    bad = json.dumps([{"headers": {"id": "bad", "task": TASK_GENERATE}}])
    rdb.hset("unacked", "tampered-tag", bad)
    rdb.zadd("unacked_index", {"tampered-tag": now - 10})
    open_attempt(rdb, "bad", DEAD, 999_999, started=now - 5)
    # Then a real orphan.
    send_job(app, spec("good"), settings)
    take_and_die(app, 1)
    open_attempt(rdb, "good", DEAD, 999_999)
    reaped = [r.job_id for r in scan(Broker(app), store, "reviewer")]
    assert "good" in reaped
    assert snapshot(rdb)["queues"][QUEUE]


# --- finding 7: a resubmitted job shows the last run's "requeued by a reaper" note -----------


def test_resubmitted_job_does_not_show_an_old_requeue_note(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any, tmp_path: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    client = Client(settings, store)
    image = make_image(tmp_path / "r.png", (160, 96))
    handle = client.submit(str(image), job_id="again", **FAST)
    # Its run died with its host and a reaper queued it again (the real requeue).
    take_and_die(app, 1)
    open_attempt(rdb, "again", DEAD, 999_999)
    assert [r.job_id for r in scan(Broker(app), store, "reviewer")] == ["again"]
    assert "requeued" in client.status("again")
    # ...it then ran to its end on another worker (Celery's state, the attempt closed)...
    rdb.delete(*rdb.keys(f"{QUEUE}*"))
    rdb.set(
        "celery-task-meta-again",
        json.dumps({"status": "FAILURE", "result": {"exc_type": "X", "exc_message": ["x"]}}),
    )
    # ...and is submitted again, days later: it waits in the queue, lost by nobody.
    client.submit(str(image), job_id=handle.job_id, force=True, **FAST)
    status = client.status("again")
    assert status["state"] == "queued", status
    assert "requeued" not in status, status


# --- finding 8: svdq:seen keeps every worker name forever ------------------------------------


def test_last_seen_forgets_workers_gone_for_days(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    app = make_celery(Settings.from_env(fault_env))
    month_ago = time.time() - 30 * 86400
    rdb.hset(LAST_SEEN_KEY, "gpu0@spot-1234", json.dumps({"pid": 7, "at": month_ago}))
    scan(Broker(app), store, "reviewer")
    assert not rdb.hexists(LAST_SEEN_KEY, "gpu0@spot-1234")
    assert rdb.ttl(LAST_SEEN_KEY) != -1 or rdb.hlen(LAST_SEEN_KEY) == 0


# --- finding 9: a huge SVDQ_REAP_INTERVAL is accepted and kills the reaper thread ------------


def test_huge_reap_interval_is_refused_with_a_clear_error(fault_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="SVDQ_REAP_INTERVAL"):
        Settings.from_env({**fault_env, "SVDQ_REAP_INTERVAL": "100000000000"})


# --- finding 10: a store that hangs holds every requeue up for minutes -----------------------


def test_a_hanging_store_does_not_hold_up_the_requeue(
    fault_env: dict[str, str], rdb: redis_lib.Redis
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    send_job(app, spec("hang"), settings)
    take_and_die(app, 1)
    open_attempt(rdb, "hang", DEAD, 999_999)
    blackhole = socket.socket()  # accepts connections (the kernel's backlog), never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    endpoint = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
    hanging = S3Store(settings.s3_bucket, endpoint, settings.s3_region)
    thread = threading.Thread(target=scan, args=(Broker(app), hanging, "reviewer"), daemon=True)
    thread.start()
    try:
        wait_for(lambda: queued_copies(rdb, "hang") == 1, 5, "not requeued while the store hangs")
    finally:
        blackhole.close()  # the scan's connections are reset: it ends, and the test with it
        thread.join(90)


# --- finding 11: status calls a job lost that a live worker took again ------------------------


def test_status_does_not_call_a_retaken_job_lost(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    job, name = "retaken", "gpu0@live"
    send_job(app, spec(job), settings)
    # The pool child (pid 111) ran it and was killed (OOM killer, segfault); Celery put the
    # message back and the same worker took it again at once, for its new child (pid 222),
    # which is still loading the model when the killed child's lease runs out.
    open_attempt(rdb, job, name, 111, started=time.time())
    take_and_die(app, 1)
    progress_meta(rdb, job)
    Presence(rdb, Identity(name, (QUEUE,), 0, "tiny"), 30).beat({"pid": 222})
    assert orphans(rdb) == []  # the reaper rightly leaves it: received after that run began
    status = Client(settings, store).status(job)
    assert "lost" not in status, status


# --- finding 12: the silence of a worker restarted under the same name ------------------------


def test_silence_is_counted_from_the_lost_process_not_its_successor(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    job, name, now = "silent", "gpu0@box", time.time()
    send_job(app, spec(job), settings)
    take_and_die(app, 1)
    [tag] = rdb.hkeys("unacked")
    rdb.zadd("unacked_index", {tag: now - 101})
    open_attempt(rdb, job, name, 111, started=now - 100)
    rdb.hset(LAST_SEEN_KEY, name, json.dumps({"pid": 111, "at": now - 95}))  # its last beat
    Presence(rdb, Identity(name, (QUEUE,), 0, "tiny"), 30).beat()  # the restarted worker
    [orphan] = orphans(rdb)
    assert orphan.silent_for(time.time()) >= 90
