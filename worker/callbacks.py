"""Result callbacks: the GPU worker queues one, `svdq callbacks` POSTs it.

The GPU worker never talks to a callback receiver itself: when a job with a callback_url ends
it records the callback (the job's own URL and end) in Redis and publishes one small message
naming the job to queue svdq.callbacks (`dispatch`), and moves on; `svdq callbacks`
(worker/callback_worker.py) reads what was recorded, checks the destination, signs the body,
POSTs it and retries with backoff, so a slow receiver never holds a GPU. What the message says
beyond the job id and its status is never signed: the queue is not trusted.

No torch here: the callback consumer imports this module too.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import socket
import threading
import traceback
from typing import Any
from urllib.parse import urlsplit

from celery.exceptions import Reject, Retry

from svdq.shared.constants import (
    CALLBACK_SIGNATURE_HEADER,
    QUEUE_CALLBACKS,
    TASK_CALLBACK,
    callback_payload_key,
)
from svdq.shared.errors import CallbackRefused
from svdq.shared.net import destination_allowed  # (shared with the API's check)
from svdq.shared.replication import ReplicationShortfall
from svdq.shared.spec import JobSpec
from svdq.shared.states import JobState

log = logging.getLogger("svdq.callbacks")


def cancelled_payload(job: JobSpec) -> dict[str, Any]:
    """What a cancelled job's callback says."""
    return {"job_id": job.job_id, "status": JobState.CANCELLED, "spec": job.to_dict()}


def failed_payload(job: JobSpec, exc: BaseException) -> dict[str, Any]:
    """What a failed job's callback says: the error's type and (bounded) message."""
    error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
    return {"job_id": job.job_id, "status": JobState.FAILED, "spec": job.to_dict(), "error": error}


def dispatch(app: Any, job: JobSpec, payload: dict[str, Any]) -> None:
    """Record the callback of the job's end (`payload`, to the job's own callback_url) and
    queue a message naming only the job and the end's status; never fails the job itself.

    The message carries no URL and no payload: `svdq callbacks` signs and POSTs only what a
    worker recorded here (`recorded`), so a message anyone with the queue's address can
    publish gets nothing signed that no worker wrote.

    Published inside a batch, so with SVDQ_REDIS_MIN_REPLICAS the message counts as queued
    only once the replicas hold it (shared/replication.ReplicatedBatch), like a submit. A
    shortfall raises ReplicationShortfall (the message taken back): the caller must leave
    the job's own message unacknowledged so the callback is queued again (`replicated`)."""
    if not job.callback_url or not job.job_id:
        return
    record = {"url": job.callback_url, "payload": payload}
    try:
        app.backend.client.set(
            callback_payload_key(job.job_id), json.dumps(record), ex=app.conf.result_expires
        )
        with app.producer_or_acquire() as producer, producer.batch(max_size=16):
            app.send_task(
                TASK_CALLBACK,
                args=[job.job_id, str(payload.get("status", ""))],
                queue=QUEUE_CALLBACKS,
                priority=0,
                producer=producer,
            )
    except ReplicationShortfall:
        raise
    except Exception:  # the clip is made; a lost callback must not turn it into a failure
        log.error("job %s: could not queue its callback:\n%s", job.job_id, traceback.format_exc())


def retry(task: Any, countdown: float) -> Retry:
    """`task.retry(countdown=...)`, its new message published in a batch so that with
    SVDQ_REDIS_MIN_REPLICAS it WAITs for the replicas like a submit; return the Retry to
    raise. On a shortfall raise Reject(requeue=True) instead: the message being run goes back
    on its queue rather than being acknowledged with its only surviving copy unreplicated.

    Why not let Celery handle it: Task.retry (celery/app/task.py) runs "try:
    S.apply_async() except Exception as exc: raise Reject(exc, requeue=False)", and a Reject
    without requeue acknowledges the message (kombu/transport/redis.py, QoS.reject: "if
    requeue: self.restore_by_tag(delivery_tag, leftmost=True) else:
    self._remove_from_indices(delivery_tag).execute()"), so the job would be gone; inside a
    batch apply_async only buffers, and the shortfall comes from the batch's flush here.
    Reject(requeue=True) reaches Request.on_failure ("elif isinstance(exc, Reject): ...
    return self.reject(requeue=exc.requeue)"), which restores the message to its queue."""
    retried: Retry | None = None
    try:
        with task.app.producer_or_acquire() as producer, producer.batch(max_size=16):
            try:
                task.retry(countdown=countdown, producer=producer)
            except Retry as exc:
                retried = exc
    except ReplicationShortfall as exc:
        if task.request.id not in exc.consumed:  # taken back: only the original remains
            raise Reject(f"its retry was not replicated: {exc}", requeue=True) from exc
    if retried is None:  # task.retry always raises Retry outside eager mode
        raise RuntimeError("task.retry returned without a Retry")
    return retried


def replicated(publish: Any, *args: Any) -> None:
    """Run a worker-side publish (`dispatch`); a ReplicationShortfall rejects the message being
    run with requeue (see `retry`), so it runs again and publishes again."""
    try:
        publish(*args)
    except ReplicationShortfall as exc:
        raise Reject(f"a publish was not replicated: {exc}", requeue=True) from exc


def recorded(redis: Any, job_id: str, status: str) -> tuple[str, dict[str, Any]] | None:
    """(url, payload) of the callback a worker recorded for `job_id`'s end with `status`;
    None when there is none (no worker ended such a job, or a later end replaced it)."""
    raw = redis.get(callback_payload_key(job_id))
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        url, payload = record["url"], record["payload"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(url, str) or not isinstance(payload, dict):
        return None
    if payload.get("job_id") != job_id or payload.get("status") != status:
        return None
    return url, payload


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: 'sha256=' + HMAC-SHA256 of the body, hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


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
                "link-local never)",
                field="callback_url",
            )


def post(url: str, payload: dict[str, Any], secret: str, attempt: int, timeout: float) -> int:
    """POST the payload, signed; return the HTTP status. Network errors, and a POST that has
    not had its answer's status line and headers within `timeout` seconds *in all*, raise
    OSError (TimeoutError for the latter). Redirects are not followed: a 3xx is the status.

    The deadline is for the whole POST, not each socket read: http.client's timeout (like
    urllib's) is handed to the socket (`socket.create_connection(..., self.timeout)` in
    HTTPConnection.connect) and applies to every recv on its own, so a receiver that dribbles
    a byte every few seconds would hold this thread for as long as it likes. A timer shuts the
    socket down at the deadline instead; a blocked recv then returns at once.
    """
    body = encode(payload)
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=timeout)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, cut)
    timer.daemon = True
    timer.start()
    try:
        conn.connect()  # bounded by `timeout` itself (one connect)
        if expired.is_set():
            raise TimeoutError(f"callback POST to {url[:100]} took over {timeout:g}s in all")
        conn.request(
            "POST",
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "svdq-callback/1",
                CALLBACK_SIGNATURE_HEADER: signature(secret, body),
                "X-Svdq-Job-Id": str(payload.get("job_id", "")),
                "X-Svdq-Status": str(payload.get("status", "")),
                "X-Svdq-Attempt": str(attempt),
            },
        )
        return int(conn.getresponse().status)
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise TimeoutError(
                f"callback POST to {url[:100]} took over {timeout:g}s in all; cut off"
            ) from exc
        if isinstance(exc, OSError):
            raise
        raise ConnectionError(f"callback receiver answered badly: {exc!r:.200}") from exc
    finally:
        timer.cancel()
        conn.close()


def should_retry(status: int) -> bool:
    """Retry server errors, timeouts and throttling; a plain 4xx means the receiver said no."""
    return status >= 500 or status in (408, 425, 429)
