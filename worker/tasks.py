"""The Celery entry point of a GPU worker (`celery -A svdq.worker.tasks`): the app, its one
task, and thin adapters from Celery's signals to the runtime (worker/runtime.py) and the job's
lifecycle (worker/lifecycle.py). No job logic lives here.

The model loads in each pool child (worker_process_init), never per job, and never in the
parent: CUDA must not be touched before the pool forks. With SVDQ_OVERLAP ≥ 2 the worker runs
Celery's threads pool (worker/threadpool.py): no fork and no child, so the one process loads
the model at worker_init (which Celery sends before the pool starts and before "ready.":
celery/worker/worker.py `signals.worker_init.send(sender=self)` in WorkController.__init__;
the threads pool sends no worker_process_init, only prefork and solo do) and stops it at
worker_shutdown. worker/overlap.py says why the guarantees hold with two jobs in flight.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery import Task
from celery.signals import (
    task_failure,
    task_received,
    task_revoked,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from celery.worker import state as worker_state

from svdq.shared import holders, redisjson
from svdq.shared.constants import TASK_GENERATE, cancel_key, worker_key
from svdq.shared.orphans import UNACKED_INDEX_KEY
from svdq.shared.settings import Settings
from svdq.worker import lifecycle
from svdq.worker.brokerguard import worker_app
from svdq.worker.heartbeat import Presence
from svdq.worker.identity import Identity
from svdq.worker.runtime import Runtime

log = logging.getLogger("svdq.worker")

settings = Settings.from_env()
app = worker_app(settings)  # unreadable messages and queue items are set aside, not fatal


class _Process:
    """This process's part: the parent fills `identity` and `presence` at worker_init (the
    pool child inherits them); the child builds `runtime` at worker_process_init."""

    identity: Identity | None = None
    presence: Presence | None = None  # the parent's, for the ends only it sees
    runtime: Runtime | None = None


_here = _Process()


@worker_init.connect
def _learn_identity(sender: Any = None, **_: Any) -> None:
    """Parent process, after the queues are chosen and before the pool forks."""
    queues = [q.name for q in sender.app.amqp.queues.consume_from.values()] if sender else []
    _here.identity = Identity.of(settings, getattr(sender, "hostname", None), queues)
    _here.presence = Presence(app.backend.client, _here.identity, settings.heartbeat_ttl)
    # A worker that died without a goodbye left its heartbeat hash (job_id and all) until it
    # expires; this new process under the same name starts from none, not from its job.
    try:
        app.backend.client.delete(worker_key(_here.identity.hostname))
    except Exception as exc:  # Redis away: the first beats will say where this worker is
        log.warning("could not clear this worker's old heartbeat: %s", exc)
    if settings.overlap > 1:  # threads pool: no child to load in; this process takes jobs
        identity = _here.identity
        try:
            _here.runtime = Runtime.start(settings, app, identity)
        except Exception:
            # Celery logs and swallows a receiver's exception (celery/utils/dispatch/signal.py
            # `send`): end the process here, loudly, before it consumes a message.
            log.exception("could not load the %s model; stopping this worker", identity.variant)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(1)


@task_received.connect
def _record_holder(sender: Any = None, request: Any = None, **_: Any) -> None:
    """Main process, as the consumer takes a message: name this worker start as its holder
    (shared/holders.py), so a reaper can tell it from a dead host's even while no run of it is
    open (an ETA retry waits here, reserved, for its countdown).

    Why here and with this tag: Celery sends the signal from the consumer's message handler
    (celery/worker/strategy.py, task_message_handler) once the request is built, before an ETA
    request goes to the timer or any request to the pool:

        req = Req(message, on_ack=ack, ...)
        ...
        signals.task_received.send(sender=consumer, request=req)

    and `request.message` is that kombu message; kombu put it in its unacked hash under the
    same tag before handing it over (kombu/transport/virtual/base.py, basic_consume):

        message = self.Message(raw_message, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return callback(message)

    so the message's score in kombu's unacked_index (kombu/transport/redis.py, QoS.append:
    `pipe.zadd(self.unacked_index_key, {delivery_tag: time()}).hset(self.unacked_key,
    delivery_tag, ...)`) is already there: the entry stores it, and a reaper counts the entry
    as this delivery's only while that score is still the message's (a later take of the same
    tag ZADDs a new one). No clock is compared across hosts.

    Whatever pool runs the job (a prefork child, or this process with the threads pool), the
    boot id is this worker start's, and the process that beats carries it."""
    if request is None or getattr(request, "name", None) != TASK_GENERATE:
        return
    identity = _here.identity
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    if identity is None or not tag:
        return
    try:
        keep = settings.visibility_timeout
        client = app.backend.client  # one Redis: broker and result backend (make_celery)
        channel = getattr(request.message, "channel", None)
        index = getattr(channel, "unacked_index_key", None) or UNACKED_INDEX_KEY
        score = redisjson.number(client.zscore(index, str(tag)))
        holders.record(
            client, str(tag), identity.hostname, identity.boot, time.time(), keep, score=score
        )
    except Exception as exc:  # Redis away: the message is judged as one without an entry
        log.warning("could not record this worker as the holder of %s: %s", request.id, exc)


@worker_process_init.connect
def _start_runtime(**_: Any) -> None:
    """Pool child: open the store, serve metrics, start the heartbeat, load the model."""
    identity = _here.identity or Identity.of(settings)
    try:
        _here.runtime = Runtime.start(settings, app, identity)
    except Exception:
        # A child that cannot load its model must not take jobs: stop the whole worker,
        # loudly, so the supervisor (or the person) sees why.
        log.exception("could not load the %s model; stopping this worker", identity.variant)
        os.kill(os.getppid(), signal.SIGTERM)
        raise


@worker_process_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    if _here.runtime is not None:
        _here.runtime.stop()


@worker_shutdown.connect
def _stop_threads_runtime(**_: Any) -> None:
    """Threads pool (SVDQ_OVERLAP ≥ 2): the process's runtime ends with the worker."""
    if settings.overlap > 1 and _here.runtime is not None:
        _here.runtime.stop()


# max_retries=None: Celery stops no retry of ours (its default is 3, and `task.retry(max_retries=
# None)` means "use the default", celery/app/task.py); worker/delivery.py keeps the budgets.
@app.task(name=TASK_GENERATE, bind=True, max_retries=None)
def generate(self: Task, spec: dict[str, Any]) -> dict[str, Any]:
    """Turn one image into a clip; return the result record (also stored as result.json)."""
    if _here.runtime is None:
        raise RuntimeError("this worker process has no runtime: its model did not load")
    return lifecycle.process(_here.runtime, self, spec)


@task_failure.connect
def _failure_seen_by_parent(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    **_: Any,
) -> None:
    """A killed child or a hard time limit: only the parent sees these ends. (In the pool
    child, the lifecycle has recorded every end itself.)"""
    if _here.runtime is not None or getattr(sender, "name", None) != TASK_GENERATE:
        return
    if _here.presence is not None:
        lifecycle.parent_saw_failure(_here.presence, task_id or "", exception, args)


@task_revoked.connect
def _revoked_seen_by_parent(
    sender: Any = None, request: Any = None, terminated: bool = False, **_: Any
) -> None:
    """A revoke a person sent through Celery (Flower's Revoke or Terminate) is a cancel; a job
    Celery terminated on a broker connection loss goes back on its queue.

    Which is which: a revoke control command adds the id to celery.worker.state.revoked
    before it terminates anything (celery/worker/control.py, _revoke:
    `worker_state.revoked.update(task_ids)`); a connection loss cancels running requests
    without adding them (celery/worker/consumer/consumer.py,
    on_connection_error_after_connected → Request.cancel)."""
    if getattr(sender, "name", "") != TASK_GENERATE or request is None:
        return
    job_id = getattr(request, "id", None)
    rt = _here.runtime
    if job_id and rt is not None and rt.inflight.holds(job_id):
        # Threads pool: the job runs on in its thread (none can be killed, worker/threadpool.py),
        # so Terminate is a cancel: `svdq cancel`'s flag, seen at its next denoising step; the
        # job's own lifecycle records the end and queues its callback, once.
        try:
            app.backend.client.set(cancel_key(job_id), 1, ex=settings.result_expires)
        except Exception:
            log.exception("job %s was revoked; could not flag it cancelled", job_id)
        log.warning("job %s: revoked while running: cancelled at its next step", job_id)
        return
    if job_id in worker_state.revoked:
        lifecycle.parent_saw_revoke(app, settings, _here.presence, request)
    elif terminated:
        lifecycle.requeue_if_terminated(app, settings, request)
