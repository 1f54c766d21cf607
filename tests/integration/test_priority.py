"""Priority on a real worker: a priority 9 job submitted behind 100 queued priority 0 jobs is
the next one a free worker takes. Its own redis-server, so no other worker takes anything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from svdq.producer.client import Client
from svdq.producer.services import free_port, redis_server
from svdq.shared.constants import result_key
from svdq.shared.settings import Settings
from tests.conftest import REPO
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration

WORKER = [
    sys.executable,
    "-m",
    "svdq.producer.cli",
    "worker",
    "--gpus",
    "none",
    "--variant",
    "tiny",
]
QUICK = {"variant": "tiny", "num_frames": 2, "num_inference_steps": 1, "width": 64, "height": 64}


def test_priority_9_overtakes_100_queued_priority_0_jobs(svdq_env, store, tmp_path):
    image = str(make_image(tmp_path / "prio.png", color=91))
    with redis_server(f"redis://127.0.0.1:{free_port()}/0") as url:
        env = {**svdq_env, "SVDQ_REDIS_URL": url}
        client = Client(Settings.from_env(env), store)
        low = client.submit_many(
            [{"image": image, "seed": 1000 + i, "priority": 0, **QUICK} for i in range(100)]
        )
        high = client.submit(image, seed=2000, priority=9, **QUICK)
        assert len({h.job_id for h in low}) == 100 and not any(h.skipped for h in low)

        log = tmp_path / "worker.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*WORKER, "--name", "prio@%h"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        try:
            high.wait(timeout=120)
            # Let it finish one more, to see which low one came next.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = [h for h in low if store.exists(result_key(h.job_id))]
                if done:
                    break
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert done, log.read_text()[-3000:]
        started = {
            h.job_id: json.loads(store.get_bytes(result_key(h.job_id)))["started_at"]
            for h in [high, *done]
        }
        assert min(started, key=lambda j: started[j]) == high.job_id
        # The first low one the worker took is the oldest: FIFO within a priority.
        assert done[0].job_id == low[0].job_id
