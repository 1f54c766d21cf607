"""The Celery app both sides use: JSON only, late acks, one job prefetched at a time."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from shared.constants import QUEUE_CALLBACKS, VARIANTS, queue_for
from shared.limits import time_limits
from shared.settings import Settings

# kombu's Redis transport serves lower numbers first; svdq's priority 9 means "run first".
PRIORITY_STEPS = list(range(10))


def celery_priority(priority: int) -> int:
    """Map svdq's 0–9 (9 runs first) onto kombu Redis' 0–9 (0 runs first)."""
    return 9 - priority


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from `settings`; nothing connects until it is used."""
    app = Celery("svdq", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        result_extended=True,
        result_expires=settings.result_expires,
        # Defaults for messages that carry none; the producer sends per-variant limits.
        task_time_limit=time_limits("auto", settings)[1],
        task_soft_time_limit=time_limits("auto", settings)[0],
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # A pool child loads the model in worker_process_init before it reports "up"; Celery's
        # 4 s default kills every replacement child mid-load, so a crashed child never returns.
        worker_proc_alive_timeout=600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Scan for jobs of dead workers every SVDQ_RESTORE_INTERVAL seconds (throttle 1:
            # every tick scans), so a killed worker's job is back soon after the timeout.
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        # Each queue its own direct exchange and routing key: a job lands in exactly one queue.
        task_queues=[
            Queue(queue_for(v), Exchange(queue_for(v), type="direct"), routing_key=queue_for(v))
            for v in VARIANTS
        ]
        + [Queue(QUEUE_CALLBACKS, Exchange(QUEUE_CALLBACKS, type="direct"), QUEUE_CALLBACKS)],
        task_default_queue=queue_for("auto"),
        task_create_missing_queues=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app
