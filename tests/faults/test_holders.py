"""Holder entries (shared/holders.py): a message with no open attempt is judged by the worker
start that took it. A live worker's reserved ETA retry is never reaped; a dead or restarted
worker's is queued again, once; an unreadable entry stops neither a scan nor `svdq stats`."""

from __future__ import annotations

import json
import os
import signal
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
    job_key,
    worker_key,
)
from svdq.shared.orphans import orphans
from svdq.shared.settings import Settings
from svdq.worker.heartbeat import Presence
from svdq.worker.identity import Identity
from svdq.worker.reaper import HOST_GONE, PROCESS_GONE, Broker, requeue, scan
from tests.faults.test_reaper import QUEUE, hold, queued_copies, spec, take_and_die
from tests.faults.test_workers import submit
from tests.integration.helpers import make_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow (CI runs it)

NAME = "gpu0@box"


def beat(rdb: redis_lib.Redis, boot: str) -> None:
    """A heartbeat of worker start `boot` under NAME, as the beating process writes it."""
    Presence(rdb, Identity(NAME, (QUEUE,), 0, "tiny", boot=boot), 30).beat({"job_id": ""})


def wait_for(what: Any, seconds: float, why: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def test_restarted_worker_new_boot_makes_its_predecessors_messages_orphans(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    for job in ("j1", "j2"):
        send_job(app, spec(job), settings)
    take_and_die(app, 2)
    hold(rdb, NAME, "boot-1")  # the worker start that took both (no run began: ETA retries)
    beat(rdb, "boot-1")
    # That start is alive: its reserved messages are its own, whatever the TTLs say.
    assert orphans(rdb) == []
    assert snapshot(rdb)["queues"][QUEUE]["in_flight"] == 2
    assert scan(Broker(app), store, "r") == []
    # The host reboots; the worker starts again under the same name, with a new boot id (its
    # first beat, the same pid and all): the old start's messages have no holder any more.
    beat(rdb, "boot-2")
    assert sorted(o.held.job_id for o in orphans(rdb)) == ["j1", "j2"]
    snap = snapshot(rdb)
    assert snap["queues"][QUEUE]["in_flight"] == 0
    assert sorted(j["job_id"] for j in snap["lost"]) == ["j1", "j2"]
    assert {j["worker"] for j in snap["lost"]} == {NAME}
    reaped = scan(Broker(app), store, "r")
    assert sorted(r.job_id for r in reaped) == ["j1", "j2"]
    # The worker beats again under its name: its old process is what was lost, and the reason
    # says so (PROCESS_GONE; HOST_GONE is for a name nothing beats under any more).
    assert all(r.reason.startswith(f"{PROCESS_GONE}: requeued by r") for r in reaped)
    assert queued_copies(rdb, "j1") == queued_copies(rdb, "j2") == 1
    assert rdb.hlen("unacked") == 0 and rdb.zcard("unacked_index") == 0
    assert rdb.hlen(HOLDERS_KEY) == 0  # each entry went with its message
    assert scan(Broker(app), store, "r") == []


def test_two_reapers_race_on_holder_orphans_each_is_requeued_once(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    jobs = [f"h{i}" for i in range(5)]
    for job in jobs:
        send_job(app, spec(job), settings)
        rdb.hset(job_key(job), "queue", QUEUE)
    take_and_die(app, len(jobs))
    hold(rdb, "gpu0@gone", "dead-boot")
    found = [orphans(rdb) for _ in range(2)]  # both reapers decided before either acted
    wins: list[str] = []
    start = threading.Barrier(2)

    def reap(name: str, mine: list[Any]) -> None:
        broker = Broker(make_celery(settings))
        start.wait()
        wins.extend(o.held.job_id for o in mine if requeue(broker, o, f"{HOST_GONE}: {name}"))
        broker.close()

    threads = [threading.Thread(target=reap, args=(f"r{i}", found[i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(wins) == jobs
    for job in jobs:
        assert queued_copies(rdb, job) == 1, job
        note = json.loads(rdb.hget(job_key(job), REQUEUED_FIELD))
        assert note["worker"] == "gpu0@gone" and note["reason"].startswith(HOST_GONE), note


def test_requeue_does_nothing_when_the_holder_beats_again(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    """A worker paused past its heartbeat TTL (SIGSTOP, a VM migration) that beats again before
    the requeue: the script sees its boot in the heartbeat and leaves the message to it."""
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    send_job(app, spec("paused"), settings)
    take_and_die(app, 1)
    hold(rdb, NAME, "boot-1")
    [stale] = orphans(rdb)
    beat(rdb, "boot-1")
    assert not requeue(Broker(app), stale, f"{HOST_GONE}: requeued by r")
    assert queued_copies(rdb, "paused") == 0 and rdb.hlen("unacked") == 1
    assert rdb.hlen(HOLDERS_KEY) == 1


def test_an_earlier_deliverys_entry_names_nobody_and_released_entries_go(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    send_job(app, spec("again"), settings)
    take_and_die(app, 1)
    [tag] = [t.decode() for t in rdb.hkeys("unacked")]
    received = float(rdb.zscore("unacked_index", tag))
    # The entry a dead host wrote for this tag an hour before: the message came back (kombu's
    # restore keeps the tag) and a live worker took it now, its own entry not yet written.
    hold(rdb, "gpu0@gone", "dead-boot", at=received - 3600)
    assert orphans(rdb) == []
    assert snapshot(rdb)["queues"][QUEUE]["in_flight"] == 1
    # Entries of messages acknowledged since go at the next scan; a held message's stays.
    holders.record(rdb, "acked-tag", "gpu0@gone", "dead-boot", time.time(), 60)
    assert scan(Broker(app), store, "r") == []
    assert [t.decode() for t in rdb.hkeys(HOLDERS_KEY)] == [tag]


@pytest.mark.parametrize(
    "entry",
    [
        b"not json",
        b"[1, 2]",
        b'{"worker": "gpu0@gone", "at": 1}',
        b'{"worker": "gpu0@gone", "boot": 7, "at": 1}',
        b'{"worker": "gpu0@gone", "boot": "b", "at": "soon"}',
        b'{"worker": "", "boot": "b", "at": 1}',
        b"\xff\xfe",
    ],
)
def test_an_unreadable_holder_entry_stops_neither_the_scan_nor_stats(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any, entry: bytes
) -> None:
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    send_job(app, spec("tampered"), settings)
    take_and_die(app, 1)
    [tampered] = rdb.hkeys("unacked")
    rdb.hset(HOLDERS_KEY, tampered, entry)
    send_job(app, spec("dead"), settings)
    take_and_die(app, 1)
    hold(rdb, "gpu0@gone", "dead-boot")  # the other message: a real dead holder's
    # The tampered entry's message is judged as one without an entry: left to the visibility
    # timeout, still counted in flight; the real orphan beside it is listed and requeued.
    snap = snapshot(rdb)
    assert [j["job_id"] for j in snap["lost"]] == ["dead"]
    assert snap["queues"][QUEUE]["in_flight"] == 1
    assert "lost" not in Client(settings, store).status("tampered")
    assert [r.job_id for r in scan(Broker(app), store, "r")] == ["dead"]
    assert queued_copies(rdb, "dead") == 1 and queued_copies(rdb, "tampered") == 0


def test_live_workers_eta_retry_is_never_reaped_and_is_requeued_once_it_dies(
    fault_env: dict[str, str], store: Any, rdb: redis_lib.Redis, workers: Any, tmp_path: Any
) -> None:
    """A real worker: its job's first run hits a transient fault, and the retry waits out a
    20-40 s countdown reserved in the worker's main process (an ETA task, unacknowledged, no
    open attempt). Its own reaper scans every second with TTLs of 2 s: never reaped. Then the
    whole worker is SIGKILLed: its message is an orphan as soon as the heartbeat lapses."""
    quick = {
        "SVDQ_VISIBILITY_TIMEOUT": "7200",
        "SVDQ_TASK_TIME_LIMIT": "3600",
        "SVDQ_LEASE_TTL": "2",
        "SVDQ_HEARTBEAT_TTL": "2",
        "SVDQ_REAP_INTERVAL": "1",
        "SVDQ_RETRY_BACKOFF": "40",
        "SVDQ_RETRY_BACKOFF_MAX": "40",
    }
    client = Client(Settings.from_env({**fault_env, **quick}), store)
    image = make_image(tmp_path / "e.png", (160, 96))
    worker = workers.start("eta", **quick)
    submit(client, image, "eta", "transient_once")
    key = deliveries_key("eta")

    def waiting_retry() -> Any:
        """The retry's tag once it alone is held, with its holder entry (the first delivery's
        message is acknowledged only after task.retry published the retry)."""
        closed = rdb.llen(key) == 1 and json.loads(rdb.lindex(key, 0))["reason"] is not None
        held = rdb.hgetall("unacked")
        if not closed or len(held) != 1:
            return None
        [(tag, raw)] = held.items()
        eta = json.loads(raw)[0]["headers"].get("eta")
        return eta and rdb.hexists(HOLDERS_KEY, tag) and tag.decode()

    tag = wait_for(waiting_retry, 90, worker.text()[-3000:])
    assert json.loads(rdb.lindex(key, 0))["reason"].startswith("transient")
    entry = holders.parse(rdb.hget(HOLDERS_KEY, tag))
    assert entry is not None and entry.worker.startswith("eta@")
    # Written by the main process, beaten by the pool child: one boot id for the worker start.
    wait_for(lambda: rdb.hget(worker_key(entry.worker), "boot"), 30, "no heartbeat")
    assert rdb.hget(worker_key(entry.worker), "boot").decode() == entry.boot
    assert int(rdb.hget(worker_key(entry.worker), "pid")) != worker.proc.pid
    # Several lease and heartbeat TTLs, a scan every second: the live holder keeps it.
    for _ in range(6):
        time.sleep(1)
        assert orphans(rdb) == []
        snap = snapshot(rdb)
        assert snap["queues"][QUEUE]["in_flight"] == 1 and snap["lost"] == [], snap
    assert [t.decode() for t in rdb.hkeys("unacked")] == [tag]
    assert queued_copies(rdb, "eta") == 0 and rdb.llen(key) == 1
    os.killpg(worker.proc.pid, signal.SIGKILL)  # the whole host: no goodbye, no restore
    worker.proc.wait(10)
    killed_at = time.monotonic()
    found = wait_for(lambda: orphans(rdb), 10, "the dead worker's ETA retry was never seen as lost")
    assert time.monotonic() - killed_at <= 2 + 3  # the heartbeat TTL (+3 s for a busy machine)
    assert [(o.held.job_id, o.worker) for o in found] == [("eta", entry.worker)]
    assert snapshot(rdb)["lost"][0]["job_id"] == "eta"
    [reaped] = scan(Broker(make_celery(Settings.from_env(fault_env))), store, "r")
    assert reaped.job_id == "eta" and reaped.worker == entry.worker
    assert queued_copies(rdb, "eta") == 1 and rdb.hlen("unacked") == 0
    assert not rdb.hexists(HOLDERS_KEY, tag)
