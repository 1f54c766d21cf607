"""When a job ends: honour cancellation, and hand the result to the callback queue.

The GPU worker never talks to a callback receiver itself: it publishes one small message to
queue svdq.callbacks and moves on; `svdq callbacks` (worker/callback_worker.py) does the
POST, signs it and retries with backoff, so a slow receiver never holds a GPU.

No torch here: the callback consumer imports this module too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from celery.exceptions import Ignore, Retry

from svdq.shared.constants import (
    CALLBACK_SIGNATURE_HEADER,
    QUEUE_CALLBACKS,
    TASK_CALLBACK,
    cancel_key,
)
from svdq.shared.errors import SvdqError
from svdq.shared.net import public_address
from svdq.shared.spec import JobSpec

log = logging.getLogger("svdq.callbacks")
REVOKED = "REVOKED"


class JobCancelledError(SvdqError):
    """Raised inside a job when it was cancelled: stop now, upload nothing."""


def check_cancelled(redis: Any, job_id: str | None) -> None:
    """Raise JobCancelledError if `svdq cancel` flagged this job (one GET)."""
    if job_id and redis.exists(cancel_key(job_id)):
        raise JobCancelledError(f"job {job_id} was cancelled")


def run_to_end(task: Any, app: Any, job: JobSpec, run: Callable[[], dict[str, Any]]) -> Any:
    """Run the job unless it was cancelled; when it ends, queue its callback (if it has one).

    A cancelled job is marked REVOKED (svdq reads "cancelled") and Celery is told to leave
    that state alone. A retry is not an end: no callback for it.
    """
    redis = app.backend.client
    try:
        check_cancelled(redis, job.job_id)  # a queued job cancelled before it started
        result = run()
    except JobCancelledError as exc:
        task.update_state(
            state=REVOKED, meta={"exc_type": "JobCancelledError", "exc_message": str(exc)}
        )
        log.info("%s: stopped, nothing uploaded", exc)
        dispatch(app, job, {"job_id": job.job_id, "status": "cancelled", "spec": job.to_dict()})
        raise Ignore() from None
    except (Retry, Ignore):
        raise
    except Exception as exc:
        error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
        payload = {"job_id": job.job_id, "status": "failed", "spec": job.to_dict(), "error": error}
        dispatch(app, job, payload)
        raise
    dispatch(app, job, result)
    return result


def dispatch(app: Any, job: JobSpec, payload: dict[str, Any]) -> None:
    """Queue the POST of `payload` to the job's callback_url; never fails the job itself."""
    if not job.callback_url:
        return
    try:
        app.send_task(
            TASK_CALLBACK, args=[job.callback_url, payload], queue=QUEUE_CALLBACKS, priority=0
        )
    except Exception:  # the clip is made; a lost callback must not turn it into a failure
        log.error("job %s: could not queue its callback:\n%s", job.job_id, traceback.format_exc())


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: 'sha256=' + HMAC-SHA256 of the body, hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


class CallbackRefused(Exception):
    """Raised when a callback URL points where SVDQ_CALLBACK_NETWORKS does not allow."""


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


def check_destination(url: str, networks: str) -> None:
    """Resolve the URL's host and refuse it if any address it gives is not allowed.

    Raises CallbackRefused (never retried); a name that does not resolve raises OSError
    (retried: DNS may come back)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for address in sorted({str(info[4][0]) for info in infos}):
        if not destination_allowed(address, networks):
            raise CallbackRefused(
                f"callback_url={url[:100]!r} resolves to {address}, which "
                f"SVDQ_CALLBACK_NETWORKS={networks} does not allow (public, private or any; "
                "link-local never)"
            )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as its own status, never followed: a receiver that moved
    must be given its new URL, and a redirect must not carry the POST somewhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, payload: dict[str, Any], secret: str, attempt: int, timeout: float) -> int:
    """POST the payload, signed; return the HTTP status (network errors raise OSError).
    Redirects are not followed: a 3xx comes back as the status."""
    body = encode(payload)
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "svdq-callback/1",
            CALLBACK_SIGNATURE_HEADER: signature(secret, body),
            "X-Svdq-Job-Id": str(payload.get("job_id", "")),
            "X-Svdq-Status": str(payload.get("status", "")),
            "X-Svdq-Attempt": str(attempt),
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def should_retry(status: int) -> bool:
    """Retry server errors, timeouts and throttling; a plain 4xx means the receiver said no."""
    return status >= 500 or status in (408, 425, 429)
