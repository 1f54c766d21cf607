"""The producer routes each job by its variant: one queue per variant plus svdq.auto, and a
job that names none gets SVDQ_DEFAULT_VARIANT. Real Redis (its own DB, no worker) and S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from svdq.producer.client import Client
from svdq.shared.constants import queue_for
from svdq.shared.settings import Settings
from svdq.shared.storage import S3Store
from svdq.shared.variants import VARIANTS
from tests.conftest import next_db
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_db(redis_url: str) -> Iterator[redis_lib.Redis]:
    """The DB after the session's (tests/conftest.py: next_db): no worker consumes it."""
    r = redis_lib.Redis.from_url(next_db(redis_url))
    r.flushdb()
    yield r
    r.flushdb()


def queued_ids(r: redis_lib.Redis) -> dict[str, set[str]]:
    """Job ids waiting in each svdq queue (kombu keeps a list per priority: `queue:N`)."""
    out: dict[str, set[str]] = {}
    for key in r.scan_iter("svdq.*"):
        if r.type(key) != b"list":
            continue
        queue = key.decode().split(":", 1)[0]
        for raw in r.lrange(key, 0, -1):
            out.setdefault(queue, set()).add(json.loads(raw)["headers"]["id"])
    return out


def test_each_variant_lands_on_its_own_queue(
    svdq_env: dict[str, str], store: S3Store, empty_db: redis_lib.Redis, tmp_path: Path
) -> None:
    url = next_db(svdq_env["SVDQ_REDIS_URL"])  # empty_db's
    settings = Settings.from_env({**svdq_env, "SVDQ_REDIS_URL": url, "SVDQ_DEFAULT_VARIANT": "svd"})
    client = Client(settings, store)
    image = make_image(tmp_path / "route.png", (128, 96), color=5)
    expected: dict[str, set[str]] = {}
    for variant in VARIANTS:
        handle = client.submit(str(image), variant=variant, num_inference_steps=2)
        expected.setdefault(queue_for(variant), set()).add(handle.job_id)
    # No variant named: SVDQ_DEFAULT_VARIANT (svd here) decides, not `auto`.
    default = client.submit(str(image), num_inference_steps=3)
    assert default.spec.variant == "svd"
    expected[queue_for("svd")].add(default.job_id)
    assert queued_ids(empty_db) == expected
