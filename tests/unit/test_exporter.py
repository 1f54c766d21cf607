"""The exporter's pure parts and its behaviour when Redis is away (no Redis needed)."""

from __future__ import annotations

import pytest
import redis as redis_lib
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from svdq.producer.exporter import registry_for
from svdq.producer.services import free_port
from svdq.producer.stats import known_queues, split_list_key


@pytest.mark.parametrize(
    ("key", "queue", "priority"),
    [
        ("svdq.tiny", "svdq.tiny", 9),  # kombu priority 0: svdq's highest
        ("svdq.tiny:1", "svdq.tiny", 8),
        ("svdq.svd-xt:9", "svdq.svd-xt", 0),
        ("svdq.svd-xt-1-1:4", "svdq.svd-xt-1-1", 5),
    ],
)
def test_priority_sub_queue_names(key: str, queue: str, priority: int) -> None:
    assert split_list_key(key) == (queue, priority)


def test_every_variant_queue_is_reported() -> None:
    assert {"svdq.auto", "svdq.svd", "svdq.svd-xt", "svdq.svd-xt-1-1", "svdq.tiny"} <= set(
        known_queues()
    )


def test_a_scrape_without_redis_says_so_instead_of_failing() -> None:
    conn = redis_lib.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    text = generate_latest(registry_for(conn)).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples == {"svdq_exporter_redis_up": 0.0}
