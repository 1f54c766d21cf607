"""SVDQ_REDIS_MIN_REPLICAS: a WAIT longer than the client's socket timeout is not cut by it
(shared/replication.read_wait_reply). Against the suite's private Redis, which has no replica,
so every WAIT runs to its full timeout and answers 0: the submit must fail as a replication
shortfall, its messages taken back, not as a broken connection."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis as redis_lib

from svdq.shared.celery_app import make_celery, send_job
from svdq.shared.replication import ReplicationShortfall, execute_confirmed
from svdq.shared.settings import Settings
from tests.faults.test_reaper import queued, spec

pytestmark = [pytest.mark.integration]

SHORT_SOCKET = 0.5  # seconds: well under one WAIT (SVDQ_REDIS_WAIT_TIMEOUT=1)


def settings_of(fault_env: dict[str, str]) -> Settings:
    return Settings.from_env(
        {
            **fault_env,
            "SVDQ_REDIS_MIN_REPLICAS": "1",
            "SVDQ_REDIS_WAIT_TIMEOUT": "1",
            "SVDQ_RETRY_BACKOFF": "1",
            "SVDQ_RETRY_BACKOFF_MAX": "1",
        }
    )


def test_records_wait_outlasts_the_clients_socket_timeout(
    fault_env: dict[str, str], rdb: redis_lib.Redis
) -> None:
    settings = settings_of(fault_env)
    client = redis_lib.Redis.from_url(fault_env["SVDQ_REDIS_URL"], socket_timeout=SHORT_SOCKET)
    pipe = client.pipeline(transaction=False)
    pipe.set("svdq:test:record", "1")
    pipe.incr("svdq:test:count")
    started = time.monotonic()
    with pytest.raises(ReplicationShortfall, match="only 0 replica"):
        execute_confirmed(pipe, settings, "the records")
    assert time.monotonic() - started >= 3  # the whole WAIT: 3 × SVDQ_REDIS_WAIT_TIMEOUT
    assert rdb.get("svdq:test:record") == b"1" and rdb.get("svdq:test:count") == b"1"
    assert client.ping()  # the pool is usable: the socket's own timeout is back
    # With replicas not asked for, the pipeline is executed as it is, replies and all.
    pipe = client.pipeline(transaction=False)
    pipe.incr("svdq:test:count")
    plain = Settings.from_env(fault_env)
    assert execute_confirmed(pipe, plain, "the records") == [2]


def test_publish_wait_outlasts_the_brokers_socket_timeout(
    fault_env: dict[str, str], rdb: redis_lib.Redis
) -> None:
    settings = settings_of(fault_env)
    app: Any = make_celery(settings)
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "socket_timeout": SHORT_SOCKET,
    }
    with pytest.raises(ReplicationShortfall, match="every message was taken back") as raised:
        send_job(app, spec("waited"), settings)
    assert "SVDQ_REDIS_MIN_REPLICAS=1" in str(raised.value)
    assert queued(rdb) == []  # not reported queued, and nothing left for a worker
