"""`svdq callbacks`: the consumer of queue svdq.callbacks. It POSTs each ended job's result
JSON (as the worker that ended it recorded it) to the job's callback_url, signed, retrying
with exponential backoff (shared/retry.py).

No torch and no GPU: run it anywhere that reaches Redis and the receivers, e.g.
`svdq callbacks --concurrency 16`. It needs SVDQ_CALLBACK_SECRET (receivers check the
X-Svdq-Signature header: sha256=HMAC-SHA256(secret, body), hex).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from celery import Task

from svdq.shared.constants import (
    CALLBACK_FIELD,
    CALLBACKS_KEY,
    QUEUE_CALLBACKS,
    TASK_CALLBACK,
    job_key,
)
from svdq.shared.errors import CallbackRefused, ConfigError
from svdq.shared.retry import compute_backoff
from svdq.shared.settings import Settings
from svdq.worker.brokerguard import worker_app
from svdq.worker.callbacks import check_destination, post, recorded, retry, should_retry

log = logging.getLogger("svdq.callbacks")
settings = Settings.from_env()
app = worker_app(settings)  # unreadable messages and queue items are set aside, not fatal


@app.task(name=TASK_CALLBACK, bind=True, acks_late=True, max_retries=None)
def deliver_callback(self: Task, job_id: str, status: str) -> dict[str, Any]:
    """POST the callback a worker recorded for `job_id`'s end with `status` (worker/callbacks.py
    `dispatch`) to the job's own callback_url; retry on 5xx, 408, 425, 429, network errors and
    a POST past SVDQ_CALLBACK_TIMEOUT in all. How it ended is recorded (`record`).

    Only what a worker recorded is signed: the message names a job, nothing more. A message
    for a job no worker recorded a callback for (forged, or its end replaced by a later one)
    sends nothing."""
    found = recorded(app.backend.client, job_id, status)
    if found is None:
        log.error(
            "callback for %s (%s) not sent: no worker recorded such a callback (a message "
            "nobody's job sent, or a later end of the job replaced it)",
            job_id,
            status,
        )
        return {"sent": False, "job_id": job_id, "status": status}
    url, payload = found
    attempt = self.request.retries + 1
    end: dict[str, Any] = {"url": url, "attempts": attempt}
    try:
        check_destination(url, settings.callback_networks)
        code = post(url, payload, settings.callback_secret, attempt, settings.callback_timeout)
        problem = f"HTTP {code}"
    except CallbackRefused as exc:
        log.error("callback for %s not sent: %s", job_id, exc)
        return record(job_id, {**end, "status": 0, "gave_up": True, "error": str(exc)})
    except ValueError as exc:  # a URL urlsplit cannot read: .port raises "Port out of range"
        error = f"callback_url={url[:100]!r} cannot be used: {exc}"
        log.error("callback for %s not sent: %s", job_id, error)
        return record(job_id, {**end, "status": 0, "gave_up": True, "error": error})
    except OSError as exc:  # refused, reset, timed out (past the deadline too), DNS
        code, problem = 0, f"{type(exc).__name__}: {exc}"
    end.update(status=code)
    if 200 <= code < 300:
        log.info("callback for %s delivered (attempt %d)", job_id, attempt)
        return record(job_id, end)
    if code and not should_retry(code):
        log.warning("callback for %s refused: %s; not retried", job_id, problem)
        return record(job_id, {**end, "gave_up": True, "error": problem})
    if self.request.retries >= settings.callback_retries:
        log.error("callback for %s failed %d times: %s", job_id, attempt, problem)
        return record(job_id, {**end, "gave_up": True, "error": problem})
    # Doubling from SVDQ_CALLBACK_BACKOFF, no jitter: one receiver, one queue of its own.
    wait = compute_backoff(attempt, settings.callback_backoff, jitter=False)
    log.warning("callback for %s: %s; retry in %ss", job_id, problem, wait)
    raise retry(self, wait)  # self.retry, replicated like a submit


def record(job_id: str, end: dict[str, Any]) -> dict[str, Any]:
    """Record how a job's callback ended: on the job's record (`svdq status` shows it) and in
    the fleet's count by outcome (svdq_callbacks_total in `svdq exporter`). Never raises: the
    callback's end stands even if Redis cannot hear of it."""
    outcome = "gave_up" if end.get("gave_up") else "delivered"
    try:
        redis = app.backend.client
        pipe = redis.pipeline(transaction=False)
        if job_id:
            pipe.hset(job_key(job_id), CALLBACK_FIELD, json.dumps({**end, "at": time.time()}))
            pipe.expire(job_key(job_id), settings.result_expires)
        pipe.hincrby(CALLBACKS_KEY, outcome, 1)
        pipe.execute()
    except Exception as exc:
        log.warning("callback for %s %s, not recorded: %s", job_id, outcome, exc)
    return end


def consumer_argv(concurrency: int, name: str) -> list[str]:
    """The celery command line: a thread pool (the work is waiting on HTTP, not CPU)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "svdq.worker.callback_worker",
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--queues={QUEUE_CALLBACKS}",
        f"--hostname={name}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]


def launch(concurrency: int = 8, name: str = "callbacks@%h") -> int:
    """Become the callback consumer (never returns)."""
    if not settings.callback_secret:
        raise ConfigError(
            "SVDQ_CALLBACK_SECRET is empty: set it to the key receivers verify the "
            "X-Svdq-Signature header with, then start `svdq callbacks` again"
        )
    if concurrency < 1:
        raise ConfigError(f"--concurrency={concurrency} is not allowed: 1 or more")
    print(f"svdq callbacks: {concurrency} threads on queue {QUEUE_CALLBACKS}", file=sys.stderr)
    os.execv(sys.executable, consumer_argv(concurrency, name))
    return 0  # not reached
