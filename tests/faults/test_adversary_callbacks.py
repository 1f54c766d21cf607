"""The adversary's slow callback receiver (issue 10, defect 8): it answers one byte every
0.3 s, forever. Each POST must end at SVDQ_CALLBACK_TIMEOUT in all (it was a per-read timeout:
a dribbling receiver held a delivery thread 150 s), and a callback given up is recorded on the
job's status and in svdq_callbacks_total, not only in a log line."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

from svdq.shared.celery_app import make_celery
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker.callbacks import dispatch, post
from tests.conftest import REPO

pytestmark = pytest.mark.integration


class Dribbler:
    """Accepts POSTs, reads them, then sends a status line and a header one byte at a time."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.posts: list[tuple[float, float]] = []  # (accepted, hung up on) per connection
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn: socket.socket) -> None:
        accepted = time.monotonic()
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                conn.sendall(bytes([byte]))
                if self.stop.wait(0.3):
                    break
        self.posts.append((accepted, time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def dribbler() -> Iterator[Dribbler]:
    server = Dribbler()
    yield server
    server.close()


def test_one_post_ends_at_its_deadline_in_all(dribbler: Dribbler) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="took over 1s in all"):
        post(dribbler.url, {"job_id": "j"}, "secret", 1, timeout=1.0)
    assert time.monotonic() - started < 2.5  # not 100 bytes × 0.3 s


def test_a_slow_receiver_is_given_up_and_recorded(fault_env, tmp_path, dribbler) -> None:  # type: ignore[no-untyped-def]
    """Through a real `svdq callbacks`: two tries of 1 s each, then given up; `svdq status`
    (Client.status) shows it, and the exporter counts it."""
    from svdq.producer.client import Client
    from svdq.producer.stats import snapshot

    env = {
        **fault_env,
        "SVDQ_CALLBACK_SECRET": "s",
        "SVDQ_CALLBACK_NETWORKS": "any",  # the receiver listens on loopback
        "SVDQ_CALLBACK_TIMEOUT": "1",
        "SVDQ_CALLBACK_RETRIES": "1",
        "SVDQ_CALLBACK_BACKOFF": "1",
    }
    log = tmp_path / "callbacks.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "svdq.producer.cli", "callbacks", "--concurrency", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        settings = Settings.from_env(env)
        client = Client(settings)
        redis = client.jobqueue.redis
        redis.hset("svdq:job:cb-slow", "queue", "svdq.tiny")  # a job the producer recorded
        with warnings.catch_warnings():  # Celery's Redis backend calls the deprecated setex
            warnings.simplefilter("ignore", DeprecationWarning)
            client.app.backend.store_result("cb-slow", RuntimeError("failed"), "FAILURE")
        sent = time.monotonic()
        # What a worker does when the job ends: records the callback, queues its job id.
        job = JobSpec.from_dict(
            {"image": "s3://b/k.png", "job_id": "cb-slow", "callback_url": dribbler.url}
        )
        dispatch(make_celery(settings), job, {"job_id": "cb-slow", "status": "failed"})
        while "callback" not in client.status("cb-slow"):
            assert time.monotonic() - sent < 30, log.read_text()[-3000:]
            time.sleep(0.2)
        took = time.monotonic() - sent
    finally:
        proc.terminate()
        proc.wait(20)
    callback = client.status("cb-slow")["callback"]
    assert callback["gave_up"] and callback["attempts"] == 2, callback
    assert "took over 1s in all" in callback["error"]
    assert took < 10, took  # two 1 s tries and a 1 s wait, not 2 × 300 s of dribbling
    assert snapshot(redis)["callbacks"]["gave_up"] == 1
    assert "callback for cb-slow failed 2 times" in log.read_text()
