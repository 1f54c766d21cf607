"""Shared fixtures: real Redis (own DB, flushed), a real S3 server (moto, server mode),
the tiny model built once per session, and a real `svdq worker` subprocess."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from svdq.producer.services import free_port, redis_server, s3_server
from svdq.shared.constants import rung_key
from svdq.shared.settings import Settings
from svdq.shared.storage import S3Store

REPO = Path(__file__).resolve().parent.parent
TEST_REDIS_DB = int(os.environ.get("SVDQ_TEST_REDIS_DB", "13"))
TEST_BUCKET = "svdq-test"
# Set by pytest-xdist in each of its worker processes ("gw0", "gw1", ...); unset in a plain run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def next_db(url: str) -> str:
    """The same Redis, the next DB number: for tests whose jobs the session worker (which
    consumes the svdq queues of `url`'s DB) must not take."""
    base, db = url.rsplit("/", 1)
    return f"{base}/{int(db) + 1}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """An empty Redis DB of this test process's own (DB 0 and 1 of a private redis-server
    under pytest-xdist, one per xdist worker; otherwise DB SVDQ_TEST_REDIS_DB, default 13,
    and the one after it, on 127.0.0.1:6379), empty before and after."""
    if XDIST_WORKER:  # nothing answers on a free port: redis_server starts one there
        with redis_server(f"redis://127.0.0.1:{free_port()}/0") as url:
            yield url
        return
    url = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
    client = redis_lib.Redis.from_url(url)
    try:
        client.ping()
    except redis_lib.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (see README: Requirements)")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, with the test bucket created."""
    with s3_server() as endpoint:
        S3Store(TEST_BUCKET, endpoint).ensure_bucket()
        yield endpoint


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with the tiny pipeline saved in it (built once per session; under
    pytest-xdist once per run, by the first worker to get here, in the run's shared folder)."""
    from svdq.worker.tiny import ensure_tiny_model

    if not XDIST_WORKER:
        root = tmp_path_factory.mktemp("models")
        ensure_tiny_model(root / "tiny")
        return root
    root = tmp_path_factory.getbasetemp().parent / "models"  # pytest-of-<user>/pytest-N
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait rather than build it again
        ensure_tiny_model(root / "tiny")
    return root


@pytest.fixture(scope="session")
def svdq_env(
    redis_url: str, s3_endpoint: str, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for every svdq process in the tests (bulk journals in a temporary folder,
    never the user's)."""
    return {
        **os.environ,
        "SVDQ_REDIS_URL": redis_url,
        "SVDQ_STORE": "s3",
        "SVDQ_S3_ENDPOINT": s3_endpoint,
        "SVDQ_S3_BUCKET": TEST_BUCKET,
        "SVDQ_MODEL_DIR": str(model_dir),
        "SVDQ_BATCH_DIR": str(tmp_path_factory.mktemp("batches")),
        "SVDQ_DEFAULT_VARIANT": "tiny",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "svdq-local"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "svdq-local"),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def settings(svdq_env: dict[str, str]) -> Settings:
    return Settings.from_env(svdq_env)


@pytest.fixture(scope="session")
def store(settings: Settings) -> S3Store:
    return S3Store(settings.s3_bucket, settings.s3_endpoint, settings.s3_region)


@pytest.fixture(scope="session")
def client(settings: Settings, store: S3Store):  # type: ignore[no-untyped-def]
    from svdq.producer.client import Client

    return Client(settings, store)


def run_svdq(
    args: list[str], env: dict[str, str], timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `svdq` command as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "svdq.producer.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def worker(svdq_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `svdq worker` (Celery, prefork, tiny model) consuming svdq.tiny."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "svdq.producer.cli",
                "worker",
                "--gpus",
                "none",
                "--variant",
                "tiny",
                "--name",
                "test@%h",
            ],
            env=svdq_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    deadline = time.monotonic() + 90
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield str(log)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(autouse=True)
def _forget_remembered_rungs(request: pytest.FixtureRequest) -> Iterator[None]:
    """A worker remembers the rung that last worked per host, GPU and variant (24 h): one
    test's out-of-memory step-down must not decide where the next test's worker starts."""
    if "unit" in request.path.parts:
        yield
        return
    url = request.getfixturevalue("redis_url")
    yield
    client = redis_lib.Redis.from_url(url)
    try:
        for key in client.scan_iter(rung_key("*", "*", "*")):  # type: ignore[arg-type]
            client.delete(key)
    except redis_lib.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _signals_as_a_fresh_process_has_them() -> Iterator[None]:
    """A subprocess inherits the blocked-signal mask and any ignored signal of the process that
    starts it. Library code run in this process (Celery, billiard, torch) may leave SIGINT or
    SIGTERM blocked or ignored; the workers and commands the tests start must get them as a
    shell would give them (in a full run, `svdq stats --watch` and the supervisor stopped
    answering SIGINT after earlier tests)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    defaults = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: signal.SIG_DFL,
        signal.SIGQUIT: signal.SIG_DFL,  # the supervisor's stop-now signal to its children
    }
    for sig, default in defaults.items():
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, default)
    yield
