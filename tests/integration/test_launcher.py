"""`svdq worker --gpus all` on a host that reads as two GPUs (24 GiB and 6 GiB), each worker
serving its queues with the tiny pipeline: routing by variant, out-of-memory step-down, restart
of a killed worker, warm shutdown. The cards, the tiny weights and the faults are wired in from
the test side (`python -m tests.fixtures.launcher`, tests/fixtures/)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures.gpus import FAKE_GPUS
from tests.integration.helpers import free_port_block, make_image

pytestmark = pytest.mark.integration

HOST = socket.gethostname()
GPU0, GPU1 = f"gpu0@{HOST}", f"gpu1@{HOST}"
SMALL = {"width": 128, "height": 64, "num_inference_steps": 2, "num_frames": 6}


class Fleet:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.text())) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {count}x {pattern!r} in the launcher log:\n{self.text()[-4000:]}")
            time.sleep(0.2)

    def pid(self, name: str) -> int:
        return int(re.findall(rf"started {re.escape(name)} \(pid (\d+)\)", self.text())[-1])


@pytest.fixture(scope="module")
def fleet(svdq_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    log = tmp_path_factory.mktemp("fleet") / "launcher.log"
    env = {
        **svdq_env,
        FAKE_GPUS: "24GiB,6GiB",
        "SVDQ_METRICS_PORT": str(free_port_block(2)),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fixtures.launcher", "worker", "--gpus", "all"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,  # its own process group: teardown reaches every child
        )
    fleet = Fleet(proc, log)
    try:
        fleet.wait_for(r"loaded svd-xt .* with profile xt-24g")
        fleet.wait_for(r"loaded svd .* with profile svd-low")
        yield fleet
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of this launcher's group


def test_a_job_no_worker_can_take_says_so_until_one_starts(client, tmp_path, request) -> None:  # type: ignore[no-untyped-def]
    # Before the fleet starts nobody consumes svdq.svd-xt-1-1 (the session's CPU worker, if
    # any, takes svdq.tiny only): status says why the job waits instead of looking stuck.
    handle = client.submit(
        str(make_image(tmp_path / "early.png", color=5)), variant="svd-xt-1-1", **SMALL
    )
    status = client.status(handle.job_id)
    assert status["state"] == "queued"
    assert status["waiting_for"].startswith("no running worker consumes svdq.svd-xt-1-1")
    request.getfixturevalue("fleet")
    assert handle.wait(timeout=120)["worker"] == GPU0


def test_each_gpu_gets_its_plan(fleet: Fleet) -> None:
    text = fleet.text()
    assert f"worker name: {GPU0}" in text and f"worker name: {GPU1}" in text
    assert "queues: svdq.svd, svdq.svd-xt, svdq.svd-xt-1-1, svdq.auto" in text
    assert "queues: svdq.svd, svdq.auto" in text


def _two_at_once(client, tmp_path: Path, tag: str) -> set[str]:  # type: ignore[no-untyped-def]
    """Two slow auto jobs at once: with one job per worker, each worker takes one."""
    handles = [
        client.submit(
            str(make_image(tmp_path / f"{tag}{i}.png", color=40 + i)),
            variant="auto",
            metadata={"svdq_test_fault": "sleep:2"},
            **SMALL,
        )
        for i in range(2)
    ]
    results = [h.wait(timeout=120) for h in handles]
    for r in results:  # auto ran each worker's best variant
        assert r["variant"] == {GPU0: "svd-xt", GPU1: "svd"}[r["worker"]]
    return {r["worker"] for r in results}


def test_xt_jobs_only_on_the_big_gpu_auto_on_both(fleet, client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    xt = [
        client.submit(str(make_image(tmp_path / f"xt{i}.png", color=i)), variant="svd-xt", **SMALL)
        for i in range(2)
    ]
    assert {h.wait(timeout=120)["worker"] for h in xt} == {GPU0}
    assert _two_at_once(client, tmp_path, "auto") == {GPU0, GPU1}


def test_out_of_memory_steps_down_and_is_recorded(fleet, client, store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from svdq.shared.constants import result_key

    handle = client.submit(
        str(make_image(tmp_path / "oom.png", color=90)),
        variant="svd-xt",
        metadata={"svdq_test_fault": "oom_once"},
        **SMALL,
    )
    result = handle.wait(timeout=120)
    stored = json.loads(store.get_bytes(result_key(handle.job_id)))
    assert [(a["profile"], a["outcome"]) for a in stored["attempts"]] == [
        ("xt-24g", "oom"),
        ("xt-16g", "succeeded"),
    ]
    assert stored["profile"]["name"] == "xt-16g" and stored["profile"]["offload"] == "model"
    assert stored["decode_chunk_size"] == 4 and result["worker"] == GPU0


def test_a_killed_worker_is_relaunched_and_consumes_again(fleet, client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = fleet.pid(GPU1)
    os.kill(old, signal.SIGKILL)
    fleet.wait_for(rf"started {re.escape(GPU1)} \(pid \d+\)", count=2, timeout=30)
    assert fleet.pid(GPU1) != old
    assert re.search(
        rf"{re.escape(GPU1)} exited with -9 after \d+s; restarting in 1s", fleet.text()
    )
    fleet.wait_for(r"loaded svd .* with profile svd-low", count=2)
    assert _two_at_once(client, tmp_path, "again") == {GPU0, GPU1}


def test_sigterm_lets_the_running_job_finish(fleet, client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    handle = client.submit(
        str(make_image(tmp_path / "last.png", color=77)),
        variant="svd-xt",
        metadata={"svdq_test_fault": "sleep:3"},
        **SMALL,
    )
    deadline = time.monotonic() + 60
    while client.status(handle.job_id)["state"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    fleet.proc.send_signal(signal.SIGTERM)
    assert fleet.proc.wait(60) == 0
    assert client.status(handle.job_id)["state"] == "succeeded"
    assert "warm shutdown (running jobs finish) of 2 workers" in fleet.text()


# --- the supervisor on its own: plain child processes, no Celery ------------------------------

# A child that behaves like a Celery worker busy with a job: SIGTERM (warm shutdown) waits for
# the job, SIGQUIT (cold shutdown) ends it at once.
BUSY_CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: print("warm", flush=True))
print("up", flush=True)
time.sleep(60)
"""


def test_second_signal_stops_children_at_once(tmp_path: Path) -> None:
    log = tmp_path / "sup.log"
    script = (
        "import sys\n"
        "from svdq.worker.supervisor import Child, Supervisor\n"
        f"argv = [sys.executable, '-c', {BUSY_CHILD!r}]\n"
        "kids = [Child(f'c{i}', argv, {}) for i in range(2)]\n"
        "sys.exit(Supervisor(kids, poll=0.05).run())\n"
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while log.read_text().count("up") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert proc.poll() is None  # warm: the children's "jobs" are still running
        assert log.read_text().splitlines().count("warm") == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 1  # children ended by SIGQUIT: not a clean exit
        assert "stop now of 2 workers" in log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_backoff_doubles_while_a_worker_keeps_dying() -> None:
    from svdq.worker.supervisor import BACKOFF_MAX, BACKOFF_START, HEALTHY_AFTER, Child, Supervisor

    class Dead:  # a child process that has exited
        returncode = 1

        def poll(self) -> int:
            return 1

    now = [0.0]
    child = Child("c", ["true"], {})
    supervisor = Supervisor([child], clock=lambda: now[0])
    supervisor.start = lambda c: (setattr(c, "proc", Dead()), setattr(c, "started", now[0]))  # type: ignore[method-assign]

    def dies_after(lived: float) -> float:
        supervisor.start(child)
        now[0] += lived
        supervisor.check()  # reaps it and sets its restart wait
        return child.backoff

    waits = [dies_after(2.0) for _ in range(9)]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60] and BACKOFF_MAX == 60
    assert dies_after(HEALTHY_AFTER) == BACKOFF_START
