"""What Flower shows of a job: the `argsrepr` header of the message svdq publishes, from both
publish paths (Client.submit → shared/celery_app.send_job; `svdq bulk` →
producer/publish.publish_jobs). Read back from the queue's Redis list, on a variant's queue no
test worker consumes, then removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from svdq.producer.bulk import BulkSubmitter
from svdq.producer.manifest import iter_source
from svdq.shared.celery_app import ARGSREPR_MAX
from svdq.shared.constants import job_key
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration
# svd: no test worker consumes its queue, so the messages wait there to be read.
JOB = {"variant": "svd", "width": 256, "height": 128, "num_frames": 6, "num_inference_steps": 3}
SECRET = {"metadata": {"api_key": "sk-do-not-show"}, "callback_url": "https://h.test/cb?t=s3cr3t"}


def take_messages(redis_url: str) -> dict[str, dict[str, Any]]:
    """Every message queued on svdq.svd (all its priority lists), by task id; removed."""
    r = redis_lib.Redis.from_url(redis_url)
    found = {}
    for key in [*r.scan_iter("svdq.svd:*"), b"svdq.svd"]:  # the queue and its priority lists
        if r.type(key) == b"list":
            for raw in r.lrange(key, 0, -1):
                message = json.loads(raw)
                found[message["headers"]["id"]] = message
        r.delete(key)
    return found


def check(message: dict[str, Any], expected: str) -> None:
    headers = message["headers"]
    assert headers["argsrepr"] == expected
    assert headers["kwargsrepr"] == "{}"
    assert len(headers["argsrepr"]) <= ARGSREPR_MAX
    assert "sk-do-not-show" not in json.dumps(headers) and "s3cr3t" not in json.dumps(headers)


def test_submit_and_bulk_send_a_short_description(client, redis_url, tmp_path: Path) -> None:
    take_messages(redis_url)
    image = make_image(tmp_path / "holiday photo.png", (96, 96), color=201)
    handle = client.submit(str(image), **JOB, **SECRET)
    # The file name as the submitter gave it (spaces made visible), not the content hash.
    expected = "svd 256x128 6f 3 steps motion 127 holiday_photo.png"

    long_name = "x" * 200 + ".png"
    other = make_image(tmp_path / long_name, (96, 96), color=202)
    manifest = tmp_path / "jobs.jsonl"
    row = {"image": other.name, **JOB, "motion_bucket_id": 190, **SECRET}
    manifest.write_text(json.dumps(row) + "\n")
    summary = BulkSubmitter(client.jobqueue).run(iter_source(manifest), str(manifest))
    messages = take_messages(redis_url)
    for job_id in (handle.job_id, *client.batch(summary.batch_id).job_ids()):
        client.jobqueue.redis.delete(job_key(job_id))

    check(messages[handle.job_id], expected)
    (bulk_id,) = set(messages) - {handle.job_id}
    shown = "x" * 29 + "…" + "x" * 25 + ".png"  # start and end of a long name
    check(messages[bulk_id], f"svd 256x128 6f 3 steps motion 190 {shown}")
