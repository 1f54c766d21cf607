"""The services go away mid-run: the S3 server stops during uploads and comes back; Redis
(the suite's own, AOF on) restarts with a job running and one queued."""

from __future__ import annotations

import time

import pytest

from svdq.producer.client import Client
from svdq.shared.constants import deliveries_key, generations_key
from svdq.shared.settings import Settings
from tests.faults.conftest import check_end_state
from tests.faults.test_workers import submit
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration

QUICK = {"SVDQ_VISIBILITY_TIMEOUT": "20", "SVDQ_TASK_TIME_LIMIT": "18"}


def wait_phase(client: Client, job_id: str, phases: set[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while client.status(job_id).get("phase") not in phases:
        assert time.monotonic() < deadline, client.status(job_id)
        time.sleep(0.05)


def test_s3_down_during_upload_retries_the_upload_not_the_generation(
    fault_env, store, rdb, workers, tmp_path
):
    from moto.server import ThreadedMotoServer

    from svdq.producer.services import free_port

    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()  # same process as the session's server: same buckets and objects
    try:
        slow = {"SVDQ_VISIBILITY_TIMEOUT": "90", "SVDQ_TASK_TIME_LIMIT": "80"}
        worker = workers.start("s3", SVDQ_S3_ENDPOINT=f"http://127.0.0.1:{port}", **slow)
        client = Client(Settings.from_env({**fault_env, **slow}), store)
        image = make_image(tmp_path / "s.png", (160, 96))
        submit(client, image, "upload", "sleep:3")
        wait_phase(client, "upload", {"denoise", "decode", "encode"})
        s3.stop()  # generation is under way; its uploads will find nobody there
        deadline = time.monotonic() + 60
        while "failed (S3 put_object failed" not in worker.text():  # an upload retry, logged
            assert time.monotonic() < deadline, worker.text()[-3000:]
            time.sleep(0.2)
        s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        s3.start()
        states = check_end_state(client, store, rdb, {"upload": 1}, 90)
    finally:
        s3.stop()
    assert states["upload"]["state"] == "succeeded"
    assert int(rdb.get(generations_key("upload"))) == 1  # the generation ran once
    assert rdb.llen(deliveries_key("upload")) == 1
    assert "upload of results/upload/" in worker.text()


def test_redis_restart_keeps_queued_jobs_and_workers_reconnect(
    fault_env, private_redis, store, rdb, workers, tmp_path
):
    """Jobs queued before a Redis restart survive it (AOF), and a connected worker reconnects
    after a restart and goes on consuming. (A job *running* during a restart: the next test.)"""
    client = Client(Settings.from_env({**fault_env, **QUICK}), store)
    image = make_image(tmp_path / "r.png", (160, 96))
    submit(client, image, "before-1")
    submit(client, image, "before-2")
    private_redis.restart()  # nobody has taken them yet: only AOF can keep them
    worker = workers.start("redis", **QUICK)
    check_end_state(client, store, rdb, {"before-1": 0, "before-2": 0}, 90)
    private_redis.restart()  # with the worker connected and idle
    submit(client, image, "after")
    states = check_end_state(client, store, rdb, {"after": 0}, 90)
    assert states["after"]["result"]["worker"].startswith("redis@")
    assert "Connection to broker lost" in worker.text()


def test_redis_restart_with_a_job_running_ends_with_the_job_done(
    fault_env, private_redis, store, rdb, workers, tmp_path
):
    """Redis restarts (AOF on) while a job is generating: Celery cancels the running job
    (worker_cancel_long_running_tasks_on_connection_loss), its unacknowledged message outlives
    the restart, comes back after the visibility timeout, and the same, reconnected worker
    runs it to the end: one result.json, at most one generation more than faults injected."""
    client = Client(Settings.from_env({**fault_env, **QUICK}), store)
    image = make_image(tmp_path / "m.png", (160, 96))
    worker = workers.start("midrun", **QUICK)
    submit(client, image, "midrun", "sleep:6")
    wait_phase(client, "midrun", {"denoise"})
    private_redis.restart()
    states = check_end_state(client, store, rdb, {"midrun": 1}, 150)
    assert states["midrun"]["state"] == "succeeded"
    assert "Connection to broker lost" in worker.text()
