"""Result callbacks: when a job ends, `svdq callbacks` (its own queue, no GPU) POSTs the result
JSON, signed with HMAC-SHA256, to a receiver on loopback; a 500 is retried with backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration

SECRET = "test-callback-secret"
QUICK = {"variant": "tiny", "num_frames": 2, "num_inference_steps": 1, "width": 64, "height": 64}


class Receiver(ThreadingHTTPServer):
    """Records every POST; answers 500 to the first `fail_first` of them."""

    def __init__(self, fail_first: int) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.fail_first = fail_first
        self.posts: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            n = len(self.server.posts)
            self.server.posts.append(
                {"at": time.monotonic(), "body": body, "headers": dict(self.headers)}
            )
        self.send_response(500 if n < self.server.fail_first else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail_first=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def callbacks(svdq_env, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real `svdq callbacks` consumer: 1 s first backoff so the retry comes quickly."""
    env = {**svdq_env, "SVDQ_CALLBACK_SECRET": SECRET, "SVDQ_CALLBACK_BACKOFF": "1"}
    env["SVDQ_CALLBACK_NETWORKS"] = "any"  # the test receiver listens on loopback
    log = tmp_path_factory.mktemp("callbacks") / "callbacks.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "svdq.producer.cli", "callbacks", "--concurrency", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    deadline = time.monotonic() + 60
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"svdq callbacks did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield str(log)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_callback_is_signed_and_retried_after_a_500(client, worker, callbacks, receiver, tmp_path):
    image = make_image(tmp_path / "cb.png", color=77)
    handle = client.submit(str(image), callback_url=receiver.url, **QUICK)
    result = handle.wait(timeout=60)

    deadline = time.monotonic() + 30
    while len(receiver.posts) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # a delivered callback must not be sent again
    assert len(receiver.posts) == 2, receiver.posts
    first, second = receiver.posts
    assert first["body"] == second["body"]
    assert second["at"] - first["at"] >= 0.9  # SVDQ_CALLBACK_BACKOFF=1: waited before retrying
    assert (first["headers"]["X-Svdq-Attempt"], second["headers"]["X-Svdq-Attempt"]) == ("1", "2")
    body = second["body"]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert second["headers"]["X-Svdq-Signature"] == expected
    assert second["headers"]["Content-Type"] == "application/json"
    assert json.loads(body) == result  # the result JSON itself, as in result.json
    assert second["headers"]["X-Svdq-Status"] == "succeeded"


def test_cancelled_job_calls_back_too(client, worker, callbacks, receiver, tmp_path):
    receiver.fail_first = 0
    # Hold the worker with a long job, so the second one is still queued when cancelled.
    long = {**QUICK, "num_inference_steps": 150, "num_frames": 4}
    busy = client.submit(str(make_image(tmp_path / "busy.png", color=78)), **long)
    queued = client.submit(
        str(make_image(tmp_path / "q.png", color=79)), callback_url=receiver.url, **QUICK
    )
    assert queued.cancel() == "cancelled"
    busy.cancel()
    deadline = time.monotonic() + 60
    while not receiver.posts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(receiver.posts) == 1
    payload = json.loads(receiver.posts[0]["body"])
    assert (payload["job_id"], payload["status"]) == (queued.job_id, "cancelled")
    assert payload["spec"]["callback_url"] == receiver.url
