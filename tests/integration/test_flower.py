"""Flower, as deployed, watching `svdq worker --gpus all` on a host that reads as two GPUs
(made-up cards; the workers serve the tiny weights under the real variant names: both wired in
from the test side by `python -m tests.fixtures.launcher`).

Flower's API must refuse a caller without credentials and, with them, list both workers and
the task with the columns on-call reads (job id, state, what the job is, the worker).
Each worker serves /metrics on SVDQ_METRICS_PORT + its GPU index."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from svdq.producer.client import Client
from svdq.producer.services import free_port, redis_server
from svdq.shared.settings import Settings
from svdq.shared.storage import S3Store
from tests.conftest import REPO
from tests.fixtures.gpus import FAKE_GPUS
from tests.integration.helpers import free_port_block, make_image

pytestmark = pytest.mark.integration
USER, PASSWORD = "oncall", "flower-test-pw"
HOST = socket.gethostname()
SMALL = {"width": 128, "height": 64, "num_inference_steps": 2, "num_frames": 6}


def get(url: str, auth: bool) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = resp.read().decode()
            return resp.status, json.loads(body) if body.startswith(("{", "[")) else body
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _start(argv: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def flower(
    svdq_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Own Redis; Flower with basic auth and persistent state; a two-GPU worker fleet joins."""
    tmp = tmp_path_factory.mktemp("flower")
    with (
        redis_server(f"redis://127.0.0.1:{free_port()}/0") as url,
        open(tmp / "flower.log", "wb") as flower_log,
        open(tmp / "worker.log", "wb") as worker_log,
    ):
        metrics_base = free_port_block(2)
        env = {
            **svdq_env,
            "SVDQ_REDIS_URL": url,
            "SVDQ_METRICS_PORT": str(metrics_base),
            FAKE_GPUS: "24GiB,6GiB",
        }
        port = free_port()
        flower_argv = [sys.executable, "-m", "celery", "-A", "svdq.producer.flower"]
        flower_argv += ["flower", f"--port={port}", "--address=127.0.0.1"]
        flower_argv += [f"--basic-auth={USER}:{PASSWORD}", "--persistent=True"]
        flower_argv += [f"--db={tmp / 'flower.db'}", "--state_save_interval=1000"]
        procs = [_start(flower_argv, env, flower_log)]
        worker_argv = [sys.executable, "-m", "tests.fixtures.launcher", "worker", "--gpus", "all"]
        # Its own process group, so teardown reaches every worker the launcher started.
        fleet = subprocess.Popen(
            worker_argv,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait(lambda: _answers(f"{base}/healthcheck"), 30, "Flower to answer", tmp)
            log = tmp / "worker.log"
            _wait(lambda: log.read_bytes().count(b" ready.") >= 2, 120, "both workers", tmp)
            settings = Settings.from_env(env)
            store = S3Store(settings.s3_bucket, settings.s3_endpoint, settings.s3_region)
            client = Client(settings, store)
            yield {"base": base, "client": client, "tmp": tmp, "metrics_base": metrics_base}
        finally:
            fleet.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                fleet.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(fleet.pid, signal.SIGKILL)
            for proc in reversed(procs):
                _stop(proc)


def _answers(url: str) -> bool:
    try:
        return get(url, auth=False)[0] == 200
    except OSError:
        return False


def _wait(check: Any, seconds: float, what: str, tmp: Any) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            logs = {p.name: p.read_text(errors="replace")[-1500:] for p in tmp.glob("*.log")}
            pytest.fail(f"timed out waiting for {what}: {logs}")
        time.sleep(0.2)


def test_flower_refuses_without_credentials_and_shows_workers_and_task(
    flower: dict[str, Any],
) -> None:
    base, client = flower["base"], flower["client"]
    image = make_image(flower["tmp"] / "f.png", color=33)
    # Only the 24 GiB card's worker consumes svdq.svd-xt: the job cannot go elsewhere.
    job = client.submit(str(image), variant="svd-xt", **SMALL)
    result = job.wait(timeout=120)

    for path in ("/api/workers", "/api/tasks", f"/api/task/info/{job.job_id}", "/"):
        assert get(base + path, auth=False)[0] == 401, path

    status, workers = get(base + "/api/workers?refresh=1", auth=True)
    assert status == 200
    assert {f"gpu0@{HOST}", f"gpu1@{HOST}"} <= set(workers)
    small_queues = {q["name"] for q in workers[f"gpu1@{HOST}"]["active_queues"]}
    assert small_queues == {"svdq.svd", "svdq.auto"}

    def task_seen() -> bool:
        code, tasks = get(base + "/api/tasks", auth=True)
        return code == 200 and tasks.get(job.job_id, {}).get("state") == "SUCCESS"

    _wait(task_seen, 20, "Flower to see the task succeed", flower["tmp"])
    status, task = get(base + f"/api/task/info/{job.job_id}", auth=True)
    assert status == 200
    assert (task["uuid"], task["name"], task["state"]) == (job.job_id, "svdq.generate", "SUCCESS")
    assert task["worker"] == result["worker"] == f"gpu0@{HOST}"
    # What the Tasks page shows for the job: the message's argsrepr (shared/celery_app.py).
    assert task["args"] == "svd-xt 128x64 6f 2 steps motion 127 f.png"
    # Flower shows the returned record (saferepr, nested values cut short as the record grows).
    assert f"'job_id': '{job.job_id}'" in task["result"]
    assert "'status': 'succeeded'" in task["result"]


def test_each_gpu_worker_serves_metrics_on_base_port_plus_its_index(
    flower: dict[str, Any],
) -> None:
    expected = {0: (f"gpu0@{HOST}", "svd-xt", "xt-24g"), 1: (f"gpu1@{HOST}", "svd", "svd-low")}
    for index, (name, variant, profile) in expected.items():
        url = f"http://127.0.0.1:{flower['metrics_base'] + index}/metrics"
        _wait(lambda url=url: _answers(url), 20, f"{name} to serve {url}", flower["tmp"])
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        [info] = [
            s.labels
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "svdq_worker_info"
        ]
        assert (info["worker"], info["gpu"], info["variant"], info["profile"]) == (
            name,
            str(index),
            variant,
            profile,
        )
