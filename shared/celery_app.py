"""The Celery app both sides use: JSON only, late acks, one job prefetched at a time."""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery
from kombu import Exchange, Queue

from svdq.shared.constants import QUEUE_CALLBACKS, TASK_GENERATE, queue_for
from svdq.shared.errors import InvalidJobError
from svdq.shared.limits import MAX_GENERATIONS, generations, time_limits
from svdq.shared.redisconn import celery_redis_conf
from svdq.shared.replication import POLICY_OPTION, ReplicaPolicy, transport_for
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.variants import VARIANTS

# What a monitor shows of a job's arguments is bounded: Flower lists thousands of tasks.
ARGSREPR_MAX = 160
_NAME_MAX = 60

# kombu's Redis transport serves lower numbers first; svdq's priority 9 means "run first".
PRIORITY_STEPS = list(range(10))


def celery_priority(priority: int) -> int:
    """Map svdq's 0–9 (9 runs first) onto kombu Redis' 0–9 (0 runs first)."""
    return 9 - priority


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from `settings`; nothing connects until it is used.

    Where Redis is (one server, or the master behind Sentinel), its TLS and the sentinels'
    login come from shared/redisconn.py, as for every other Redis client svdq makes."""
    where = celery_redis_conf(settings)
    app = Celery("svdq", broker=where["broker_url"], backend=where["result_backend"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        # Not result_extended: it would keep the task's arguments (the whole spec, metadata and
        # all) in every job's celery-task-meta for result_expires; the result record has the
        # spec already, and Flower reads arguments from the task-received event.
        result_extended=False,
        result_expires=settings.result_expires,
        # The producer sends each job's limits (its variant's, times the clips it may
        # generate: shared/limits.py). These are the largest any job gets: the worker caps a
        # message's limits at them (worker/intake.py), and a message that carries none gets them.
        task_time_limit=time_limits("auto", settings, MAX_GENERATIONS)[1],
        task_soft_time_limit=time_limits("auto", settings, MAX_GENERATIONS)[0],
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # A pool child loads the model in worker_process_init before it reports "up"; Celery's
        # 4 s default kills every replacement child mid-load, so a crashed child never returns.
        worker_proc_alive_timeout=600,
        broker_connection_retry_on_startup=True,
        # kombu's Redis channel, plus WAIT for SVDQ_REDIS_MIN_REPLICAS (shared/replication.py).
        broker_transport=transport_for(where["broker_url"]),
        broker_transport_options={
            **where["broker_transport_options"],
            POLICY_OPTION: ReplicaPolicy.of(settings),
            "visibility_timeout": settings.visibility_timeout,
            # Scan for jobs of dead workers every SVDQ_RESTORE_INTERVAL seconds (throttle 1:
            # every tick scans), so a killed worker's job is back soon after the timeout.
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        result_backend_transport_options={
            **where["result_backend_transport_options"],
            "visibility_timeout": settings.visibility_timeout,
        },
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
    app.conf.update({k: v for k, v in where.items() if k.endswith("_use_ssl")})
    return app


def job_argsrepr(spec: JobSpec, image_name: str | None = None) -> str:
    """What Flower's Tasks page (and `celery events`) shows as a job's arguments, in place of
    Celery's saferepr of the whole spec: variant, size, frames, steps, motion bucket and the
    input's file name, e.g. "svd-xt 1024x576 25f 25 steps motion 127 cat.png".

    Celery puts it in the message's `argsrepr` header and the task-sent event ("argsrepr":
    what `saferepr(args)` would give otherwise, celery/app/amqp.py as_task_v2). It never holds
    the metadata, the callback URL or a URL's query (a presigned URL's signature): a monitor
    is read by more people than the job's owner. `image_name`: the image as the submitter
    named it (a path or URL); by default the stored input's key, a content hash."""
    frames = f"{spec.num_frames}f" if spec.num_frames else "default frames"
    text = (
        f"{spec.variant or 'auto'} {spec.width}x{spec.height} {frames} "
        f"{spec.num_inference_steps} steps motion {spec.motion_bucket_id} "
        f"{_file_name(image_name or spec.image)}"
    )
    return text[:ARGSREPR_MAX]


def _file_name(image: str) -> str:
    """The last part of a path or URL's path (no query, no fragment), printable characters
    only, its start and end kept when it is longer than _NAME_MAX."""
    path = urlsplit(image).path if "://" in image else image
    name = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    name = "".join(c if c.isprintable() and not c.isspace() else "_" for c in name) or "?"
    if len(name) > _NAME_MAX:
        half = (_NAME_MAX - 1) // 2
        name = f"{name[:half]}…{name[-half:]}"
    return name


def send_job(app: Celery, spec: JobSpec, settings: Settings, image_name: str | None = None) -> str:
    """Publish one ready job (variant, seed and id filled in) on its variant's queue, with its
    priority, per-variant time limits and a short description for monitors (`job_argsrepr`,
    with the submitter's `image_name`); return the queue's name."""
    if not spec.job_id or not spec.variant:
        missing = "job_id" if not spec.job_id else "variant"
        raise InvalidJobError(
            f"{missing} is missing: a job is sent only once prepared (Client.prepare fills in "
            "the variant, seed and job id)",
            field=missing,
        )
    queue = queue_for(spec.variant)
    # Per variant and per clips the job may generate, below SVDQ_VISIBILITY_TIMEOUT
    # (shared.limits).
    soft, hard = time_limits(spec.variant, settings, generations(spec))
    # Inside a publish batch: with SVDQ_REDIS_MIN_REPLICAS the message and its sent event go
    # out with a WAIT on one connection when the batch closes, and a shortfall raises here
    # (shared/replication.py); without, kombu's own batch sends them in one round trip.
    with app.producer_or_acquire() as producer, producer.batch(max_size=16):
        app.send_task(
            TASK_GENERATE,
            args=[spec.to_dict()],
            task_id=spec.job_id,
            queue=queue,
            priority=celery_priority(spec.priority),
            soft_time_limit=soft,
            time_limit=hard,
            producer=producer,
            argsrepr=job_argsrepr(spec, image_name),
            kwargsrepr="{}",
        )
    return queue
