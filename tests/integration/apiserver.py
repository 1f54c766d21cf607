"""One `svdq api` process for the API and console tests (tests/integration/conftest.py starts it
once for the session, on a loopback port, next to the session's worker), and the small helpers
both test modules call it with."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from svdq.shared.storage import S3Store
from tests.conftest import REPO, TEST_BUCKET, run_svdq
from tests.integration.helpers import free_port_block, make_image


@dataclass
class Api:
    url: str
    env: dict[str, str]
    log: Path

    def token(self, name: str, *flags: str) -> str:
        done = run_svdq(["token", "create", name, "--json", *flags], self.env, timeout=60)
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def serve_api(svdq_env: dict[str, str], folder: Path) -> Iterator[Api]:
    """Start `svdq api` on a free loopback port; yield it once /healthz answers; stop it and
    check its log has no traceback."""
    port = free_port_block(1)
    env = {
        **svdq_env,
        "SVDQ_API_PORT": str(port),
        "SVDQ_API_MAX_BODY_BYTES": str(256 * 1024),
        "SVDQ_ALLOW_URLS": "1",  # so hostile URLs meet the URL rules, not just "off"
    }
    log = folder / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "svdq.producer.cli", "api"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"svdq api did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield Api(url, env, log)
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def events(api: Api, token: str, job_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Every SSE event of the job until the server ends the stream."""
    out: list[dict[str, Any]] = []
    with requests.get(
        f"{api.url}/v1/jobs/{job_id}/events", headers=auth(token), stream=True, timeout=timeout
    ) as r:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


def upload(store: S3Store, name: str, color: int, tmp_path: Path) -> str:
    data = make_image(tmp_path / name, (192, 128), color).read_bytes()
    store.put_bytes(f"uploads/{name}", data, "image/png")
    return f"s3://{TEST_BUCKET}/uploads/{name}"
