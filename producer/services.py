"""The services svdq needs: saying in a sentence when one is down (`outage`, `require`),
and starting those a one-machine run needs: a Redis server and an S3 server (moto).

Every `svdq` command that needs Redis or the store ends, when one cannot be reached, with one
sentence naming the service, its address (password masked) and what to check, and exit code
1 (producer/cli.py asks `outage` about any error). The starters are used by `svdq demo`, the
integration tests and the benchmarks; each is a context manager that stops what it started and
leaves alone what was already there.
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
from svdq.shared.redisurl import redact_url
from svdq.shared.settings import Settings

REDIS_CHECK = (
    "Check that Redis is running, that this machine reaches that host and port, and the "
    "password, database number and TLS settings in the URL."
)
STORE_CHECK = (
    "Check that the S3 server is running and reachable from here, SVDQ_S3_ENDPOINT, "
    "SVDQ_S3_REGION and the AWS_* credentials."
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# Redis answered, but refused: what the reply starts with -> what it refused.
_REDIS_REFUSALS = {
    "NOAUTH": "refused the password",
    "WRONGPASS": "refused the password",
    "DB index": "refused the database number",
}


def _redis_problem(exc: BaseException) -> str | None:
    """How Redis failed us, in words, when `exc` says it is down or refused us; else None."""
    import redis
    from kombu.exceptions import OperationalError

    if isinstance(exc, redis.AuthenticationError):
        return "refused the password"
    # kombu raises OperationalError for a broker it could not reach after its retries; redis-py
    # raises ConnectionError and TimeoutError.
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OperationalError)):
        return next((w for k, w in _REDIS_REFUSALS.items() if k in str(exc)), "is unreachable")
    if isinstance(exc, redis.ResponseError):
        return next((w for k, w in _REDIS_REFUSALS.items() if str(exc).startswith(k)), None)
    return None


def _store_problem(exc: BaseException) -> str | None:
    """How the object store failed us, when `exc` says it is down; else None."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import NoCredentialsError, ReadTimeoutError

    if isinstance(exc, NoCredentialsError):
        return "has no credentials to use"
    # EndpointConnectionError and ConnectTimeoutError are botocore ConnectionErrors.
    if isinstance(exc, (BotoConnectionError, ReadTimeoutError)):
        return "is unreachable"
    return None


def outage(exc: BaseException, settings: Settings | None = None) -> str | None:
    """One sentence for an error that means Redis or the object store could not be reached
    or refused us (which one, where, what to check), or None for any other error."""
    for link in _chain(exc):
        problem = _redis_problem(link)
        if problem:
            url = settings.redis_url if settings else "(SVDQ_REDIS_URL)"
            return (
                f"Redis (the queue and job states) {problem} at {redact_url(url)}, set by "
                f"SVDQ_REDIS_URL: {_reason(link)}. {REDIS_CHECK}"
            )
        problem = _store_problem(link)
        if problem:
            where = (settings.s3_endpoint or "AWS") if settings else "(SVDQ_S3_ENDPOINT)"
            bucket = f" bucket {settings.s3_bucket!r}" if settings else ""
            return (
                f"the object store (S3{bucket}) {problem} at {redact_url(where)}, set by "
                f"SVDQ_S3_ENDPOINT: {_reason(link)}. {STORE_CHECK}"
            )
    return None


def outage_service(exc: BaseException) -> str | None:
    """Which service an outage error is about, in words fit for any caller (no address,
    bucket or key: `outage` gives the operator those), or None for any other error."""
    for link in _chain(exc):
        if _redis_problem(link):
            return "the queue (Redis) is not reachable"
        if _store_problem(link):
            return "the object store is not reachable"
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def require(settings: Settings, *, store: bool = True) -> None:
    """Raise the error `outage` describes when Redis (and, with `store`, the object store)
    cannot be reached now: for commands that run for long, checked before they start."""
    from svdq.shared.redisconn import redis_client

    client = redis_client(settings, timeout=5)
    try:
        client.ping()
    finally:
        client.close()
    if store:
        from svdq.shared.storage import open_store

        open_store(settings).exists("inputs/.svdq-reachable")


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
