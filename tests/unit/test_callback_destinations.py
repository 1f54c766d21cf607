"""Where `svdq callbacks` may POST: SVDQ_CALLBACK_NETWORKS, and redirects never followed."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from svdq.shared.errors import CallbackRefused
from svdq.worker.callbacks import check_destination, destination_allowed, post


@pytest.mark.parametrize(
    ("address", "public", "private", "any_"),
    [
        ("93.184.216.34", True, True, True),
        ("2606:2800:220:1:248:1893:25c8:1946", True, True, True),
        ("10.1.2.3", False, True, True),
        ("172.16.0.9", False, True, True),
        ("192.168.1.20", False, True, True),
        ("fd12:3456::1", False, True, True),
        ("127.0.0.1", False, False, True),
        ("::1", False, False, True),
        ("::ffff:127.0.0.1", False, False, True),  # IPv6-mapped loopback is loopback
        ("169.254.169.254", False, False, False),  # cloud metadata: never
        ("::ffff:169.254.169.254", False, False, False),
        ("fe80::1", False, False, False),
        ("0.0.0.0", False, False, False),
        ("224.0.0.1", False, False, False),
        ("240.0.0.1", False, False, False),
    ],
)
def test_destination_policy(address: str, public: bool, private: bool, any_: bool) -> None:
    got = [destination_allowed(address, n) for n in ("public", "private", "any")]
    assert got == [public, private, any_]


def test_a_url_resolving_to_a_refused_address_is_refused_with_the_reason() -> None:
    with pytest.raises(CallbackRefused, match=r"resolves to 127\.0\.0\.1.*=private"):
        check_destination("http://127.0.0.1:9/hook", "private")
    check_destination("http://127.0.0.1:9/hook", "any")  # allowed: nothing raised


class Redirecting(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        Redirecting.hits.append(self.path)
        self.send_response(307)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_a_redirect_is_answered_as_its_status_and_never_followed(redirecting: str) -> None:
    Redirecting.hits.clear()
    assert post(redirecting, {"job_id": "j"}, "secret", 1, 5) == 307
    assert Redirecting.hits == ["/hook"]  # /elsewhere was never asked for
