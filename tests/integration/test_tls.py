"""Redis over TLS (rediss://): a real redis-server with a TLS port and a self-signed
certificate; the broker and the result backend both go through it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from svdq.producer.services import free_port
from svdq.shared.celery_app import make_celery
from svdq.shared.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A redis-server answering only TLS on a free port; yields (port, CA certificate)."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
            *("--requirepass", "tls-pw", "--save", "", "--appendonly", "no", "--dir", str(tmp)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:tls-pw@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis_lib.Redis.from_url(url, socket_connect_timeout=0.5).ping()
                break
            except redis_lib.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port, cert
    finally:
        proc.terminate()
        proc.wait(10)


def test_broker_and_backend_work_over_rediss(tls_redis: tuple[int, Path]) -> None:
    port, cert = tls_redis
    url = f"rediss://:tls-pw@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    app = make_celery(Settings.from_env({"SVDQ_REDIS_URL": url}))
    backend = app.backend  # Celery refuses a rediss:// URL it cannot verify
    assert backend.client.ping()
    assert "SSL" in type(backend.client.connection_pool.get_connection()).__name__
    backend.client.set("svdq:tls-test", "ok", ex=30)
    assert backend.get_task_meta("no-such-job")["status"] == "PENDING"  # a read through it
    assert backend.client.get("svdq:tls-test") == b"ok"
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("svdq.tls-test")
        queue.put({"job": "over tls"})
        message = queue.get(timeout=5)
        assert message.payload == {"job": "over tls"}
        message.ack()
        queue.close()


def test_rediss_checks_the_server_certificate(tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    # Without our CA the self-signed server is not trusted: refused, not silently accepted.
    url = f"rediss://:tls-pw@127.0.0.1:{port}/0"
    app = make_celery(Settings.from_env({"SVDQ_REDIS_URL": url}))
    with pytest.raises(redis_lib.ConnectionError, match="certificate verify failed"):
        app.backend.client.ping()
