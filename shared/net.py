"""Fetching a user's https:// image safely (only when SVDQ_ALLOW_URLS=1).

A URL a user names can point anywhere, so: https only; the host is resolved here and every
address it resolves to must be public (no loopback, private, link-local such as the cloud
metadata service at 169.254.169.254, multicast, reserved, or IPv6-mapped forms of those);
hosts written as bare numbers (decimal, octal or hex encodings of an address) are refused;
the connection goes to the address that was checked (no second DNS answer); every redirect is
checked the same way; time and size are capped. Never `diffusers.utils.load_image`.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from svdq.shared.errors import InvalidJobError, TransientError

MAX_REDIRECTS = 3
Resolver = Callable[[str, int], list[str]]
# Hosts made only of digits, dots and hex/octal prefixes: "2130706433", "0x7f.1", "017700000001".
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+))*$", re.IGNORECASE)


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidJobError(f"image URL host {host!r} does not resolve: {exc}", "image") from exc
    return sorted({str(info[4][0]) for info in infos})


def public_address(address: str) -> bool:
    """Whether `address` is a public unicast address (IPv6-mapped IPv4 judged as IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            return public_address(str(inner))
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local)


def destination_allowed(address: str, networks: str) -> bool:
    """Whether a callback may be sent to `address` under SVDQ_CALLBACK_NETWORKS=`networks`.

    Link-local (where clouds serve instance credentials: 169.254.169.254), multicast,
    unspecified and reserved addresses never; IPv6-mapped IPv4 is judged as the IPv4.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:  # before is_reserved: ::1 sits in IPv6's reserved ::/8
        return networks == "any"
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    if public_address(str(ip)):
        return True
    return networks in ("private", "any") and ip.is_private


def check_url(url: str, resolver: Resolver = resolve) -> tuple[str, int, str, str]:
    """Refuse what svdq must never fetch; return (host, port, path, address to connect to)."""
    parts = urlsplit(url)
    where = f"image={url[:100]!r}"
    if parts.scheme.lower() != "https":
        raise InvalidJobError(f"{where}: only https:// URLs are fetched", field="image")
    if parts.username or parts.password:
        raise InvalidJobError(f"{where}: credentials in URLs are not accepted", field="image")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidJobError(f"{where}: the URL has no host", field="image")
    if _NUMERIC_HOST.match(host) and not _dotted_quad(host):
        raise InvalidJobError(
            f"{where}: host {host!r} is a number-encoded address; name the host", field="image"
        )
    port = parts.port or 443
    # An address written in the URL is that address: no resolver gets a say.
    addresses = [host] if _literal_ip(host) else resolver(host, port)
    if not addresses:
        raise InvalidJobError(f"{where}: host {host!r} has no address", field="image")
    for address in addresses:
        if not public_address(address):
            raise InvalidJobError(
                f"{where}: host {host!r} resolves to {address}, which is not a public address "
                "(loopback, private, link-local and metadata addresses are refused)",
                field="image",
            )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, path, addresses[0]


def _literal_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _dotted_quad(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def fetch_https(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    resolver: Resolver = resolve,
    context: ssl.SSLContext | None = None,
    connection: Callable[..., http.client.HTTPSConnection] | None = None,
) -> bytes:
    """The body at `url`, following up to MAX_REDIRECTS redirects, each one checked again.

    Raises InvalidJobError for anything refused (scheme, address, size, status 4xx) and
    TransientError for what may pass (timeouts, resets, 5xx)."""
    deadline = time.monotonic() + timeout
    context = context or ssl.create_default_context()
    for _ in range(MAX_REDIRECTS + 1):
        host, port, path, address = check_url(url, resolver)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientError(f"image={url[:100]!r}: download took over {timeout}s")
        conn = (connection or _PinnedHTTPS)(host, port, address, timeout=left, context=context)
        try:
            conn.request("GET", path, headers={"User-Agent": "svdq", "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                url = urljoin(url, resp.getheader("Location") or "")
                continue
            if resp.status >= 500:
                raise TransientError(f"image={url[:100]!r}: server answered {resp.status}")
            if resp.status != 200:
                raise InvalidJobError(f"image={url[:100]!r}: HTTP {resp.status}", field="image")
            declared = int(resp.getheader("Content-Length") or 0)
            if declared > max_bytes:
                raise _too_big(url, declared, max_bytes)
            body = resp.read(max_bytes + 1)
            if len(body) > max_bytes:
                raise _too_big(url, len(body), max_bytes)
            return body
        except (TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError) as exc:
            raise TransientError(f"image={url[:100]!r}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
    raise InvalidJobError(f"image={url[:100]!r}: more than {MAX_REDIRECTS} redirects", "image")


def _too_big(url: str, size: int, cap: int) -> InvalidJobError:
    return InvalidJobError(
        f"image={url[:100]!r} is {size:,}+ bytes: allowed up to {cap:,} (SVDQ_MAX_INPUT_BYTES)",
        field="image",
    )


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the certificate checked against the host name."""

    def __init__(self, host: str, port: int, address: str, **kw):  # type: ignore[no-untyped-def]
        super().__init__(host, port, **kw)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
