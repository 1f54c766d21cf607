"""`svdq exporter`: what Flower does not show, for Prometheus — queue depth per queue and
priority, jobs in flight, the oldest waiting job's age, workers per queue, the dead-letter
size, open batches, and recent throughput. Producer side: Redis only, never torch.

Every scrape reads Redis afresh (producer.stats.snapshot); nothing is cached between scrapes,
so several exporters can run side by side and agree.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svdq.producer.stats import snapshot
from svdq.shared.settings import Settings

log = logging.getLogger("svdq.exporter")
DEFAULT_PORT = 9800


class FleetCollector(Collector):
    """Turns one Redis snapshot into gauges on every scrape."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("svdq_exporter_redis_up", "1 if the last Redis read worked")
        try:
            snap = snapshot(self.redis)
        except Exception as exc:  # a scrape during a Redis outage says so instead of failing
            log.warning("cannot read Redis: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families(snap)


def families(snap: dict[str, Any]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The metric families for one snapshot (see producer.stats.snapshot)."""
    depth = GaugeMetricFamily(
        "svdq_queue_depth",
        "Jobs waiting, by queue and svdq priority (9 runs first)",
        labels=["queue", "priority"],
    )
    flight = GaugeMetricFamily(
        "svdq_queue_in_flight", "Jobs delivered to a worker, not yet acknowledged", labels=["queue"]
    )
    oldest = GaugeMetricFamily(
        "svdq_queue_oldest_age_seconds",
        "Age of the oldest waiting job (0 when none waits)",
        labels=["queue"],
    )
    consumers = GaugeMetricFamily(
        "svdq_queue_workers", "Live workers consuming the queue", labels=["queue"]
    )
    for name, q in snap["queues"].items():
        by_priority = q["waiting_by_priority"]
        # Every priority gets a series, so sum() and alerts never see a gap.
        for priority in range(10):
            depth.add_metric([name, str(priority)], float(by_priority.get(str(priority), 0)))
        flight.add_metric([name], float(q["in_flight"]))
        oldest.add_metric([name], float(q["oldest_age_seconds"] or 0.0))
        consumers.add_metric([name], float(q["workers"]))
    yield from (depth, flight, oldest, consumers)

    alive = GaugeMetricFamily(
        "svdq_worker_up",
        "Workers with a fresh heartbeat",
        labels=["worker", "gpu", "variant", "profile"],
    )
    for w in snap["workers"]:
        alive.add_metric([w["name"], str(w["gpu"]), w["variant"], w["profile"]], 1.0)
    yield alive

    recent = GaugeMetricFamily(
        "svdq_recent_jobs", "Jobs finished in the window", labels=["status", "window"]
    )
    for window, counts in snap["throughput"].items():
        for status, n in counts.items():
            recent.add_metric([status, window], float(n))
    yield recent
    dead = GaugeMetricFamily("svdq_dead_letter_size", "Jobs in the dead-letter list")
    dead.add_metric([], float(snap["dead_letter"]))
    yield dead
    dropped = CounterMetricFamily(
        "svdq_dead_letter_dropped",
        "Unreadable messages dropped from the dead-letter list past SVDQ_DEAD_LETTER_MAX",
    )
    dropped.add_metric([], float(snap["dead_letter_dropped"]))
    yield dropped
    # One label, one count per value: read from the snapshot as (name, help, label, counts).
    by_one_label: list[tuple[type[Any], str, str, str, dict[str, Any]]] = [
        (
            GaugeMetricFamily,
            "svdq_recent_failures",
            "Failed jobs in the last 60 minutes by reason",
            "reason",
            snap["failures_60m"],
        ),
        (
            GaugeMetricFamily,
            "svdq_batches",
            "Bulk submissions Redis still holds",
            "state",
            snap["batches"],
        ),
        (
            CounterMetricFamily,
            "svdq_callbacks",
            "Result callbacks ended, by outcome (gave_up: refused, or out of retries)",
            "outcome",
            snap.get("callbacks", {}),
        ),
    ]
    for kind, name, text, label, counts in by_one_label:
        family = kind(name, text, labels=[label])
        for value, n in counts.items():
            family.add_metric([value], float(n))
        yield family


def registry_for(redis: Any) -> CollectorRegistry:
    """A registry holding only the fleet collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(redis))
    return registry


def serve(
    settings: Settings, port: int = DEFAULT_PORT, once: bool = False, host: str = "127.0.0.1"
) -> int:
    """Serve /metrics on `host`:`port` until interrupted; with `once`, print one scrape and
    return."""
    from svdq.shared.redisconn import redis_client

    registry = registry_for(redis_client(settings, timeout=5))
    if once:
        print(generate_latest(registry).decode(), end="")
        return 0
    start_http_server(port, addr=host, registry=registry)
    print(f"svdq exporter on http://{host}:{port}/metrics", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)
