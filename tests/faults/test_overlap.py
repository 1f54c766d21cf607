"""Overlap (SVDQ_OVERLAP=2, worker/overlap.py): while one job encodes and uploads, the next
one is already generating; with 1 (prefork) it waits. Real worker, tiny model, real Redis and
S3; the first job's encode is slowed from the test side (tests/fixtures/faults.py SlowEncode)."""

from __future__ import annotations

import socket
import time
from datetime import datetime

import pytest

from svdq.shared.constants import worker_key
from tests.faults.conftest import check_end_state
from tests.integration.helpers import FAST, make_image

# slow: two real workers with slowed encodes (~35 s); also run by `make test-overlap`.
pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLOW = 4.0  # seconds the first job's encode sleeps (after its GPU phase)


def _t(record: dict, field: str) -> float:
    return datetime.fromisoformat(record[field]).timestamp()


def gpu_began(record: dict) -> float:
    """When the job's GPU phase began: its start plus its fetch and fit (result.json)."""
    timings = record["timings"]
    return _t(record, "started_at") + timings["fetch"] + timings["preprocess"]


@pytest.mark.parametrize("overlap", [1, 2])
def test_the_next_job_generates_while_the_last_one_encodes(
    fault_client, store, rdb, workers, tmp_path, overlap
):
    image = make_image(tmp_path / "o.png", (160, 96))
    w = workers.start(f"ov{overlap}", SVDQ_OVERLAP=str(overlap))
    beat = worker_key(f"{w.name}@{socket.gethostname()}")
    slow = {"svdq_test_fault": f"slow_encode:{SLOW}"}
    first = fault_client.submit(str(image), job_id=f"slow-first-{overlap}", metadata=slow, **FAST)
    second = fault_client.submit(str(image), job_id=f"then-second-{overlap}", seed=2, **FAST)
    most_held = 0  # jobs the heartbeat listed at once
    deadline = time.monotonic() + 90
    while fault_client.status(first.job_id)["state"] != "succeeded":
        held = [j for j in (rdb.hget(beat, "jobs") or b"").decode().split(",") if j]
        most_held = max(most_held, len(held))
        assert time.monotonic() < deadline, w.text()[-3000:]
        time.sleep(0.1)
    states = check_end_state(fault_client, store, rdb, {first.job_id: 0, second.job_id: 0}, 60)
    a, b = states[first.job_id]["result"], states[second.job_id]["result"]
    # result.json is written right after its finished_at (worker/jobs.py): the marker's moment.
    if overlap == 2:
        assert gpu_began(b) < _t(a, "finished_at") - SLOW / 2, (a["timings"], b["timings"])
        assert _t(b, "finished_at") < _t(a, "finished_at")  # queued second, done first
        assert most_held == 2  # the heartbeat listed both jobs (`svdq stats`: the GPU's one)
    else:
        assert gpu_began(b) >= _t(a, "finished_at"), (a["timings"], b["timings"])
        assert most_held == 1
    idle = time.monotonic() + 10
    while rdb.hget(beat, "jobs") not in (b"", None):  # both ended: none listed
        assert time.monotonic() < idle, rdb.hgetall(beat)
        time.sleep(0.1)
    assert rdb.hget(beat, "job_id") == b""
