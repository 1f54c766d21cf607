"""Through a real worker: a step-down whose load fails does not leave a worker that takes jobs
with no pipeline (issue 9, defect 3). The pool child exits; the job goes back to the queue and
succeeds in a fresh child; the next job runs too. Before the fix the job failed with the load's
error and every later job with "'NoneType' object is not callable"."""

from __future__ import annotations

import json

import pytest

from svdq.shared.constants import deliveries_key
from tests.faults.conftest import check_end_state
from tests.faults.test_workers import submit
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration


def test_a_failed_reload_ends_the_child_and_the_job_comes_back(
    fault_client, store, rdb, workers, tmp_path
):
    image = make_image(tmp_path / "l.png", (160, 96))
    worker = workers.start("reload")
    # First delivery: out of memory on "cpu", and the step-down's load of "cpu-lean" raises.
    submit(fault_client, image, "lost-pipe", "oom_load_fails_once")
    submit(fault_client, image, "after-lost")
    states = check_end_state(fault_client, store, rdb, {"lost-pipe": 1, "after-lost": 0}, 150)

    assert states["lost-pipe"]["state"] == "succeeded", states["lost-pipe"]
    assert states["after-lost"]["state"] == "succeeded", states["after-lost"]
    attempts = [json.loads(a) for a in rdb.lrange(deliveries_key("lost-pipe"), 0, -1)]
    assert len(attempts) == 2 and attempts[0]["reason"].startswith("worker lost")
    log = worker.text()
    assert "could not load profile cpu-lean: RuntimeError: injected load failure" in log
    assert "no pipeline could be loaded in this worker process" in log
    assert "NoneType" not in log
