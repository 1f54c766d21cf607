"""shared.net: which addresses and URLs are refused, and that every redirect is checked again.
No network: resolution is injected and the connection is a stand-in that answers in memory."""

from __future__ import annotations

import http.client
import re
from typing import Any

import pytest

from svdq.shared.errors import InvalidJobError, TransientError
from svdq.shared.net import check_url, fetch_https, public_address


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
    ],
)
def test_public_address(address: str, public: bool) -> None:
    assert public_address(address) is public


def fixed(*addresses: str) -> Any:
    return lambda host, port: list(addresses)


def test_a_name_resolving_to_private_is_refused_even_if_one_answer_is_public() -> None:
    with pytest.raises(InvalidJobError, match=re.escape("resolves to 10.0.0.7")):
        check_url("https://images.example/a.png", fixed("8.8.8.8", "10.0.0.7"))


def test_a_public_name_passes_and_the_checked_address_is_used() -> None:
    assert check_url("https://images.example:8443/a.png?x=1", fixed("8.8.8.8")) == (
        "images.example",
        8443,
        "/a.png?x=1",
        "8.8.8.8",
    )


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.status, self.headers, self.body = status, headers, body

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name)

    def read(self, n: int) -> bytes:
        return self.body[:n]


def fake_server(answers: dict[str, FakeResponse], seen: list[str]) -> Any:
    class Conn(http.client.HTTPSConnection):
        def __init__(self, host: str, port: int, address: str, **kw: Any) -> None:
            self.target = (host, address)

        def request(self, method: str, path: str, headers: Any = None) -> None:  # type: ignore[override]
            seen.append(f"{self.target[0]}{path}@{self.target[1]}")
            self.path = path

        def getresponse(self) -> Any:
            return answers[f"{self.target[0]}{self.path}"]

        def close(self) -> None:
            pass

    return Conn


def test_redirect_to_the_metadata_service_is_refused() -> None:
    seen: list[str] = []
    answers = {"a.example/x": FakeResponse(302, {"Location": "https://169.254.169.254/latest"})}
    with pytest.raises(InvalidJobError, match=re.escape("169.254.169.254")):
        fetch_https(
            "https://a.example/x",
            max_bytes=1000,
            timeout=5,
            resolver=fixed("8.8.8.8"),
            connection=fake_server(answers, seen),
        )
    assert seen == ["a.example/x@8.8.8.8"]  # the refused hop was never contacted


def test_redirect_to_a_name_resolving_to_loopback_is_refused() -> None:
    answers = {"a.example/x": FakeResponse(301, {"Location": "https://evil.example/y"})}

    def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "evil.example" else ["8.8.8.8"]

    with pytest.raises(InvalidJobError, match=re.escape("resolves to 127.0.0.1")):
        fetch_https(
            "https://a.example/x",
            max_bytes=1000,
            timeout=5,
            resolver=resolver,
            connection=fake_server(answers, []),
        )


def test_redirects_are_followed_to_a_bounded_depth_and_size_is_capped() -> None:
    seen: list[str] = []
    answers = {
        "a.example/1": FakeResponse(302, {"Location": "/2"}),
        "a.example/2": FakeResponse(200, {"Content-Length": "5"}, b"hello"),
        "a.example/big": FakeResponse(200, {}, b"x" * 2000),
        "a.example/loop": FakeResponse(302, {"Location": "/loop"}),
        "a.example/down": FakeResponse(503, {}),
    }
    kw: dict[str, Any] = {"max_bytes": 1000, "timeout": 5, "resolver": fixed("8.8.8.8")}
    conn = fake_server(answers, seen)
    assert fetch_https("https://a.example/1", connection=conn, **kw) == b"hello"
    with pytest.raises(InvalidJobError, match="allowed up to 1,000"):
        fetch_https("https://a.example/big", connection=conn, **kw)
    with pytest.raises(InvalidJobError, match="more than 3 redirects"):
        fetch_https("https://a.example/loop", connection=conn, **kw)
    with pytest.raises(TransientError, match="503"):
        fetch_https("https://a.example/down", connection=conn, **kw)
