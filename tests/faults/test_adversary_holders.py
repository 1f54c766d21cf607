"""Adversary tests for issue 11's holder entries and orphan rule (shared/holders.py,
shared/orphans.py, worker/reaper.py): Redis state built directly, as tests/faults/test_reaper.py
does, no worker started.

Promises attacked: nothing from outside (a tampered Redis entry) stops a scan or `svdq stats`;
a live worker's message is never reaped."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis as redis_lib

from svdq.producer.stats import snapshot
from svdq.shared import holders
from svdq.shared.celery_app import make_celery, send_job
from svdq.shared.constants import HOLDERS_KEY, LAST_SEEN_KEY, deliveries_key
from svdq.shared.orphans import orphans
from svdq.shared.settings import Settings
from svdq.worker.heartbeat import Presence
from svdq.worker.identity import Identity
from svdq.worker.reaper import Broker, scan
from tests.faults.test_reaper import QUEUE, hold, queued_copies, spec, take_and_die

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEAD = "gpu0@gone"


def one_held(fault_env: dict[str, str], job: str = "adv1") -> Any:
    """One svdq.generate message taken and left unacknowledged (in kombu's unacked hash)."""
    settings = Settings.from_env(fault_env)
    app = make_celery(settings)
    send_job(app, spec(job), settings)
    take_and_die(app, 1)
    return app


def tag_of(rdb: redis_lib.Redis) -> str:
    (tag,) = rdb.hkeys("unacked")
    return tag.decode()


def still_scans(app: Any, rdb: redis_lib.Redis, store: Any) -> None:
    """Neither `svdq stats` nor a reaper scan may raise over one tampered entry."""
    snapshot(rdb)
    orphans(rdb)
    scan(Broker(app), store, "r")


def test_a_holder_at_too_large_for_a_float_stops_neither_scan_nor_stats(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    app = one_held(fault_env)
    huge = "1" + "0" * 400
    raw = '{"worker": "' + DEAD + '", "boot": "b", "at": ' + huge + "}"
    rdb.hset(HOLDERS_KEY, tag_of(rdb), raw)
    still_scans(app, rdb, store)


def test_a_deeply_nested_holder_entry_stops_neither_scan_nor_stats(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    app = one_held(fault_env)
    rdb.hset(HOLDERS_KEY, tag_of(rdb), "[" * 100_000 + "]" * 100_000)
    still_scans(app, rdb, store)


def test_a_deeply_nested_unacked_entry_stops_neither_scan_nor_stats(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    app = one_held(fault_env)
    rdb.hset("unacked", "planted", "[" * 100_000 + "]" * 100_000)
    rdb.zadd("unacked_index", {"planted": time.time()})
    still_scans(app, rdb, store)


def test_a_last_seen_at_too_large_for_a_float_stops_neither_scan_nor_stats(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    app = one_held(fault_env)
    hold(rdb, DEAD, "dead-boot")
    rdb.hset(LAST_SEEN_KEY, DEAD, '{"boot": "dead-boot", "at": 1' + "0" * 400 + "}")
    still_scans(app, rdb, store)


def test_an_attempt_that_is_not_an_object_stops_neither_scan_nor_stats(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    app = one_held(fault_env)
    rdb.rpush(deliveries_key("adv1"), "[1, 2]")
    still_scans(app, rdb, store)


def test_an_earlier_deliverys_entry_from_a_fast_clock_does_not_reap_a_live_holder(
    fault_env: dict[str, str], rdb: redis_lib.Redis, store: Any
) -> None:
    app = one_held(fault_env)
    tag = tag_of(rdb)
    received = float(rdb.zscore("unacked_index", tag) or 0)
    # gpu0@gone took this message first, on a host whose clock runs 5 s ahead, then its warm
    # shutdown restored it (kombu's restore leaves the holder entry; only a later scan's
    # forget_released drops it). gpu1@live took it again at `received` on its own clock and
    # is alive; its task_received entry is not written yet (the moment between kombu's
    # unacked HSET and Celery's signal), or its write failed ("judged as one without an
    # entry", worker/tasks.py).
    holders.record(rdb, tag, DEAD, "dead-boot", received - 1 + 5, 7200)
    Presence(rdb, Identity("gpu1@live", (QUEUE,), 0, "tiny", boot="live"), 30).beat()
    assert orphans(rdb) == [], "a live worker's delivery was judged by an earlier one's entry"
    scan(Broker(app), store, "r")
    assert queued_copies(rdb, "adv1") == 0
