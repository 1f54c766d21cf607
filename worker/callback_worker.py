"""`svdq callbacks`: the consumer of queue svdq.callbacks. It POSTs each ended job's result
JSON to the job's callback_url, signed, retrying with exponential backoff (shared/retry.py).

No torch and no GPU: run it anywhere that reaches Redis and the receivers, e.g.
`svdq callbacks --concurrency 16`. It needs SVDQ_CALLBACK_SECRET (receivers check the
X-Svdq-Signature header: sha256=HMAC-SHA256(secret, body), hex).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Task

from svdq.shared.celery_app import make_celery
from svdq.shared.constants import QUEUE_CALLBACKS, TASK_CALLBACK
from svdq.shared.errors import CallbackRefused, ConfigError
from svdq.shared.retry import compute_backoff
from svdq.shared.settings import Settings
from svdq.worker.brokerguard import transport_for
from svdq.worker.callbacks import check_destination, post, should_retry

log = logging.getLogger("svdq.callbacks")
settings = Settings.from_env()
app = make_celery(settings)
app.conf.worker_consumer = "svdq.worker.intake:Consumer"  # unreadable messages set aside
app.conf.broker_transport = transport_for(settings.redis_url)  # and unreadable queue items
TIMEOUT = 10.0  # seconds one POST may take; a slow receiver costs a thread here, no GPU


@app.task(name=TASK_CALLBACK, bind=True, acks_late=True, max_retries=None)
def deliver_callback(self: Task, url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST `payload` to `url`; retry on 5xx, 408, 425, 429 and network errors."""
    attempt = self.request.retries + 1
    try:
        check_destination(url, settings.callback_networks)
        status = post(url, payload, settings.callback_secret, attempt, TIMEOUT)
        problem = f"HTTP {status}"
    except CallbackRefused as exc:
        log.error("callback for %s not sent: %s", payload.get("job_id"), exc)
        return {"url": url, "status": 0, "attempts": attempt, "gave_up": True, "error": str(exc)}
    except OSError as exc:  # refused, reset, timed out, DNS
        status, problem = 0, f"{type(exc).__name__}: {exc}"
    if 200 <= status < 300:
        log.info("callback for %s delivered (attempt %d)", payload.get("job_id"), attempt)
        return {"url": url, "status": status, "attempts": attempt}
    if status and not should_retry(status):
        log.warning("callback for %s refused: %s; not retried", payload.get("job_id"), problem)
        return {"url": url, "status": status, "attempts": attempt, "gave_up": True}
    if self.request.retries >= settings.callback_retries:
        log.error("callback for %s failed %d times: %s", payload.get("job_id"), attempt, problem)
        return {"url": url, "status": status, "attempts": attempt, "gave_up": True}
    # Doubling from SVDQ_CALLBACK_BACKOFF, no jitter: one receiver, one queue of its own.
    wait = compute_backoff(attempt, settings.callback_backoff, jitter=False)
    log.warning("callback for %s: %s; retry in %ss", payload.get("job_id"), problem, wait)
    raise self.retry(countdown=wait)


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
