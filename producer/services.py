"""Starting the services a one-machine run needs: a Redis server and an S3 server (moto).

Used by `svdq demo`, the integration tests and the benchmarks. Each helper is a context
manager that stops what it started and leaves alone what was already there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator

from svdq.shared.errors import ConfigError
from svdq.shared.poll import poll


def free_port() -> int:
    """A TCP port on loopback nobody is listening on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at `url`."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


@contextlib.contextmanager
def redis_server(url: str) -> Iterator[str]:
    """Yield a Redis URL that answers: `url` if it does, else a redis-server we start."""
    if redis_answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            f"nothing answers at SVDQ_REDIS_URL={url} and there is no redis-server on PATH "
            "to start: install Redis or point SVDQ_REDIS_URL at one"
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="svdq-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until(lambda: redis_answers(started, 0.2), 10, "redis-server did not start")
        yield started
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Run moto's S3-compatible HTTP server on a free loopback port; yield its endpoint URL.

    Sets dummy AWS_* credentials when none are set: moto accepts any.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "svdq-local"),
        ("AWS_SECRET_ACCESS_KEY", "svdq-local"),
    ):
        os.environ.setdefault(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _wait_until(check: Callable[[], bool], seconds: float, message: str) -> None:
    for _ in poll(step=0.05, timeout=seconds):
        if check():
            return
    raise ConfigError(message)
