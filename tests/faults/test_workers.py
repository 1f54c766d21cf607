"""Real workers, real faults: killed pool children, a poison job, a hung job, flaky and bad
input, a whole worker killed. After each scenario the suite's invariants hold
(tests/faults/conftest.py: check_end_state)."""

from __future__ import annotations

import json
import os
import time

import pytest

from svdq.producer.client import Client
from svdq.shared.constants import TASK_GENERATE, deliveries_key, queue_for
from svdq.shared.settings import Settings
from tests.faults.conftest import OVERLAP, check_end_state, shared_losses
from tests.integration.helpers import FAST, make_image

pytestmark = pytest.mark.integration

FAULT = "svdq_test_fault"
# 20 jobs, 5 SIGKILLs: 17 good ones, 2 whose child dies once, and a poison job that kills 3
# children (about 40 s here; SVDQ_FAULT_GOOD_JOBS=2 for a quicker local run).
KILLS, GOOD = 2, int(os.environ.get("SVDQ_FAULT_GOOD_JOBS", "17"))
MAX_DELIVERIES = 3  # the suite's SVDQ_MAX_DELIVERIES (the default)


def submit(client, image, job_id: str, fault: str | None = None):  # type: ignore[no-untyped-def]
    meta = {FAULT: fault} if fault else {}
    return client.submit(str(image), job_id=job_id, metadata=meta, **FAST)


class Evil:
    """Unpickling this runs a shell command: what a JSON-only worker must never do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def push_pickled(redis_url: str, marker) -> None:  # type: ignore[no-untyped-def]
    """Publish a pickled svdq.generate message straight into the tiny queue."""
    from kombu import Exchange, Producer

    from svdq.shared.celery_app import make_celery

    queue = queue_for("tiny")
    app = make_celery(Settings.from_env({"SVDQ_REDIS_URL": redis_url}))
    with app.connection_for_write() as conn:  # svdq's transport options (binding separator)
        Producer(conn.channel()).publish(
            Evil(str(marker)),
            serializer="pickle",
            exchange=Exchange(queue, type="direct"),
            routing_key=queue,
            headers={"task": TASK_GENERATE, "id": "pickled", "lang": "py"},
        )


def test_killed_children_and_a_poison_job(fault_client, store, rdb, workers, tmp_path):
    """Good jobs, 2 that kill their pool child once and a poison one that kills it every time
    (5 SIGKILLs): the 2 are redelivered and succeed, the poison one is dead-lettered after 3
    deliveries, the good ones run once each."""
    image = make_image(tmp_path / "a.png", (160, 96))
    workers.start("kids")
    faults = {f"kill-{i}": "kill_once" for i in range(KILLS)} | {"poison": "kill"}
    specs = {f"good-{i}": 0 for i in range(GOOD)} | {j: 1 for j in faults if j != "poison"}
    specs["poison"] = 3
    for job_id in specs:
        submit(fault_client, image, job_id, faults.get(job_id))
    # With overlap a poison delivery kills the job beside it too, and each comes back through
    # the reaper: more deliveries, more time.
    states = check_end_state(fault_client, store, rdb, specs, seconds=420 if OVERLAP > 1 else 240)

    assert {j for j, s in states.items() if s["state"] == "succeeded"} == set(specs) - {"poison"}
    assert "DeadLetteredError" in states["poison"]["error"]
    dead = json.loads(rdb.hget("svdq:dead", "poison"))
    assert all(a["worker"].startswith("kids@") for a in dead["attempts"])
    if OVERLAP > 1:
        # Threads pool (SVDQ_OVERLAP=2): the poison's kill takes the job beside it with it, and
        # the process comes back under the same name, so its lost attempts are closed by the
        # reaper ("worker lost (process gone…): requeued by …") or by the next delivery, with
        # worker/sharing.py's "beside job X: not charged" on a shared one. What must hold: every
        # lost attempt is recorded as lost, the dead-letter counted only the charged ones (a
        # shared loss is not the poison's proof), and it came after MAX_DELIVERIES of them.
        lost, last = dead["attempts"][:-1], dead["attempts"][-1]
        assert [a["n"] for a in dead["attempts"]] == list(range(1, len(lost) + 2))
        assert last["reason"] == "not run: too many deliveries", last
        assert all(a["reason"].startswith("worker lost") for a in lost), lost
        charged = [a for a in lost if a.get("charged", True)]
        assert len(charged) == MAX_DELIVERIES, lost
        assert all(a.get("beside") for a in lost if a not in charged), lost
        assert dead["reason"].startswith(f"{len(lost)} deliveries, none finished"), dead
        for job_id in faults:
            if job_id != "poison":
                # Its own kill, then a success; any other loss is a recorded shared one.
                history = [json.loads(a) for a in rdb.lrange(deliveries_key(job_id), 0, -1)]
                assert history[-1]["reason"] == "succeeded", history
                assert all(a["reason"].startswith("worker lost") for a in history[:-1]), history
                assert len(history) - 2 <= shared_losses(rdb, job_id), history
                assert int(rdb.get(f"svdq:generations:{job_id}")) >= 2
    else:
        # Prefork: a killed pool child takes only its own job, and the next delivery says so.
        assert [a["n"] for a in dead["attempts"]] == [1, 2, 3, 4]
        assert [a["reason"] for a in dead["attempts"][:3]] == [
            "worker lost during this attempt (process killed or crashed)"
        ] * 3
        for job_id in faults:
            if job_id != "poison":
                assert int(rdb.get(f"svdq:generations:{job_id}")) == 2
                assert rdb.llen(deliveries_key(job_id)) == 2


def test_hung_flaky_and_bad_jobs_end_and_the_worker_goes_on(
    fault_client, fault_env, store, rdb, workers, tmp_path
):
    """A pickled message is refused and logged; a hung job is failed at its soft time limit; a
    transient fault is retried and succeeds; a missing input object fails at once with 0
    retries; the next job still runs."""
    image = make_image(tmp_path / "b.png", (160, 96))
    hang = workers.start("hang")
    marker = tmp_path / "pickle-ran"
    push_pickled(fault_env["SVDQ_REDIS_URL"], marker)
    short = Client(Settings.from_env({**fault_env, "SVDQ_TASK_TIME_LIMIT": "6"}), store)
    submit(short, image, "hung", "hang")
    submit(fault_client, image, "flaky", "transient_once")
    missing = fault_client.prepare({"image": str(image), "job_id": "missing", **FAST})
    bad = missing.replace(image=f"s3://{store.bucket}/inputs/{'0' * 64}.png").to_dict()
    fault_client.app.send_task(
        TASK_GENERATE, args=[bad], task_id="missing", queue=queue_for("tiny")
    )
    submit(fault_client, image, "after")
    started = time.monotonic()
    states = check_end_state(
        fault_client, store, rdb, {"hung": 1, "flaky": 1, "missing": 0, "after": 0}, 120
    )

    assert "JobTimeoutError" in states["hung"]["error"]
    assert "soft time limit of 5s" in states["hung"]["error"]
    assert states["flaky"]["state"] == "succeeded"
    assert rdb.llen(deliveries_key("flaky")) == 2
    assert "does not exist" in states["missing"]["error"]
    assert rdb.llen(deliveries_key("missing")) == 1  # failed at once: no retry
    assert states["after"]["state"] == "succeeded"
    # The pickled message was refused unread, logged, and the worker went on.
    assert not marker.exists()
    assert "Refusing to deserialize untrusted content of type pickle" in hang.text()
    assert time.monotonic() - started < 60


def test_whole_worker_killed_job_comes_back_on_another(fault_env, store, rdb, workers, tmp_path):
    """SIGKILL of the whole worker mid-job: after the visibility timeout the job is restored
    and completes on a second worker."""
    quick = {"SVDQ_VISIBILITY_TIMEOUT": "20", "SVDQ_TASK_TIME_LIMIT": "18"}
    fault_client = Client(Settings.from_env({**fault_env, **quick}), store)
    image = make_image(tmp_path / "c.png", (160, 96))
    first = workers.start("first", **quick)
    submit(fault_client, image, "orphan", "sleep:2")
    deadline = time.monotonic() + 60
    while not rdb.llen(deliveries_key("orphan")):  # its attempt is on record: kill it now
        assert time.monotonic() < deadline, first.text()[-2000:]
        time.sleep(0.1)
    first.kill()
    workers.start("second", **quick)
    states = check_end_state(fault_client, store, rdb, {"orphan": 1}, 90)

    assert states["orphan"]["state"] == "succeeded"
    assert states["orphan"]["result"]["worker"].startswith("second@")
    attempts = [json.loads(a) for a in rdb.lrange(deliveries_key("orphan"), 0, -1)]
    assert [a["worker"].split("@")[0] for a in attempts] == ["first", "second"]
    assert attempts[0]["reason"].startswith("worker lost")
