"""The life of one job in a worker, in order, in one place.

Celery hands the pool child a message; `process` takes it through these steps:

 1. check       the message is parsed and checked again: the queue is not trusted;
 2. cancelled?  `svdq cancel` flagged it before it started → it ends REVOKED, nothing runs
                (worker/cancellation.py);
 3. lease and delivery record (worker/delivery.py): a dead-lettered job is refused; a lease
                held by another live delivery sends this one back to the queue for later;
                every delivery is counted in Redis, one too many dead-letters the job;
 4. commit marker  result.json is already there → its record is returned, the GPU untouched;
 5. generate with step-down: the job's variant is loaded if another one is (worker/resident.py),
                out of memory steps down a rung (worker/stepdown.py); cancellation is looked
                at on every denoising step;
 6. score, encode  the clip's scores (shared/scores.py), the clip in every format asked
                for and the poster (worker/jobs.py);
 7. upload      the outputs; a failed upload is retried alone, never the generation;
 8. marker      result.json, written last;
 9. callback    queued for `svdq callbacks` when the job has a callback_url, for a failed or
                cancelled job too (worker/callbacks.py); a retry is not an end and has none;
10. metrics     Prometheus, an entry on the finished-jobs stream, the heartbeat set idle.

Celery then stores the returned record as the job's state and acknowledges the message.

Why this order: Celery on Redis delivers a job at least once; the order makes its effects
happen once.
- The message is acknowledged only after `process` returns (acks_late), so a process killed
  at any step leaves the job to be delivered again, and nothing is lost.
- result.json goes last, after every output is up: its presence means the job is whole, so
  step 4 can trust it, and a copy delivered after step 8 does nothing a second time.
- Step 4 looks under the lease taken in step 3, so no other delivery can be between its
  uploads and its result.json while this one looks.
- Deliveries are counted in Redis (step 3), not by Celery's retry count, which a killed
  process never raises: a job that kills its worker every time is dead-lettered, not looped.
- The callback follows the marker, so a receiver never hears of a result it cannot read yet;
  the metrics come last, so each job counts once, with the outcome it really had.

Some ends only the parent process sees (a killed child, a hard time limit, a revoke sent
through Celery, a job Celery terminated on a broker connection loss): worker/tasks.py's signal
adapters hand those to `parent_saw_failure`, `parent_saw_revoke` and `requeue_if_terminated`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded

from svdq.shared.celery_app import send_job
from svdq.shared.constants import CALLBACK_QUEUED_FIELD, STATE_PROGRESS, cancel_key, job_key
from svdq.shared.errors import JobCancelledError, LeaseLost, RetryLater
from svdq.shared.replication import ReplicationShortfall
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.states import Outcome
from svdq.worker import callbacks, cancellation, delivery, jobs, resident
from svdq.worker.heartbeat import Presence
from svdq.worker.runtime import Runtime

log = logging.getLogger("svdq.worker")


def process(rt: Runtime, task: Task, raw: Any) -> dict[str, Any]:
    """Take one delivery of one job through every step above; return its result record."""
    job_id, variant = task.request.id or "", _variant_label(raw)
    started = _begin(rt, task, job_id)
    # With overlap, every job runs on the shared side of the gate; a suspect of the last
    # process loss trades it for the exclusive side (worker/sharing.py).
    gate = rt.sharing.gate.shared() if rt.sharing else contextlib.nullcontext()
    try:
        job = JobSpec.from_dict(raw)  # 1. checked again
        with gate:
            result = _run(rt, task, job)  # 2.–9.
    except Retry:
        _safe(rt.metrics.retried, variant)  # 10. (back on the queue: not an end)
        raise
    except Ignore:
        _cancelled(rt, task, job_id, variant)  # 10. (its state is recorded as REVOKED)
        raise
    except Reject:
        raise  # Redis went away mid-job: redelivered
    except LeaseLost as exc:
        # Another delivery has the job (a reaper queued it again while this process was
        # paused): nothing uploaded, no attempt closed, no callback, no state stored (Ignore
        # leaves the other delivery's state alone); not an end of the job, so not counted.
        log.warning("job %s: %s: this run stops", job_id, exc)
        raise Ignore() from None
    except Exception as exc:
        _failed(rt, job_id, task.request.hostname, variant, exc)  # 10.
        raise
    else:
        _succeeded(rt, job_id, task.request.hostname, result, started)  # 10.
    finally:
        try:
            _end(rt, job_id)
        except SoftTimeLimitExceeded:  # the soft limit landed as the job ended: end it again
            _end(rt, job_id)
    return result


def _run(rt: Runtime, task: Task, job: JobSpec) -> dict[str, Any]:
    """Steps 2 to 9; every end but a retry gets its callback."""
    worker = task.request.hostname or "worker"
    guards: list[delivery.Guard] = []  # the run's, once deliver() has one
    try:
        cancellation.check(rt.redis, job.job_id)  # 2. cancelled while queued
        result = delivery.deliver(  # 3. lease and delivery record
            rt.redis,
            job,
            rt.settings,
            worker,
            done=lambda: jobs.existing_result(rt.store, job),  # 4. commit marker
            run=lambda: _generate(rt, task, job, worker, guards[0]),  # 5.–8.
            soft_limit=_soft_limit(rt, task),
            counts=rt.metrics,
            on_guard=guards.append,
            shared=rt.sharing,
        )
    except JobCancelledError as exc:
        cancellation.record(task, exc)
        # 9. (a shortfall: Reject(requeue=True), published again on redelivery)
        _callback_once(rt, job, callbacks.cancelled_payload(job))
        raise Ignore() from None
    except LeaseLost:
        raise  # another delivery has the job, and its callback
    except RetryLater as exc:  # a busy lease or a transient fault: back to the queue
        log.warning("job %s: %s; again in %.1fs", job.job_id, exc, exc.wait)
        # no limit: see worker/tasks.py; replicated like a submit (callbacks.retry)
        raise callbacks.retry(task, exc.wait) from None
    except Reject:
        raise
    except Exception as exc:
        _callback_once(rt, job, callbacks.failed_payload(job, exc))  # 9.
        raise
    _callback_once(rt, job, result)  # 9.
    return result


def _callback_once(rt: Runtime, job: JobSpec, payload: dict[str, Any]) -> None:
    """Queue the job's callback unless a delivery of this submission queued one already (a
    worker paused past its lease that finished anyway, a late copy finding result.json): the
    job's record remembers it (HSETNX; the producer clears it when the job is recorded
    again). Redis failing to say queues it: a callback twice beats none."""
    if not job.callback_url or not job.job_id:
        return
    key = job_key(job.job_id)
    try:
        first = rt.redis.hsetnx(key, CALLBACK_QUEUED_FIELD, str(time.time()))
        if rt.redis.ttl(key) < 0:  # a job recorded by no producer: kept no longer than states
            rt.redis.expire(key, rt.settings.result_expires)
    except Exception as exc:
        log.warning("job %s: could not record its callback as queued: %s", job.job_id, exc)
        first = True
    if not first:
        log.warning("job %s: its callback was queued by another delivery: not again", job.job_id)
        return
    try:  # a shortfall (SVDQ_REDIS_MIN_REPLICAS): Reject(requeue=True), queued on redelivery
        callbacks.replicated(callbacks.dispatch, rt.app, job, payload)
    except Reject:
        try:  # not queued after all: the redelivery must be free to queue it
            rt.redis.hdel(key, CALLBACK_QUEUED_FIELD)
        except Exception as exc:
            log.warning("job %s: could not clear its callback mark: %s", job.job_id, exc)
        raise


def _generate(
    rt: Runtime, task: Task, job: JobSpec, worker: str, guard: Callable[[], None]
) -> dict[str, Any]:
    """Steps 5 to 8, under the lease: worker.jobs.run_job (generate with step-down, encode,
    upload, result.json last), its GPU phase under the process's GPU lock (`gpu`)."""
    assert job.job_id
    job_id, model = job.job_id, rt.loaded()
    cooperative = rt.settings.overlap > 1  # no timer raises the soft limit in a thread

    @contextlib.contextmanager
    def gpu() -> Iterator[None]:
        # One job at a time from the variant check to the last decode: a variant switch or a
        # step-down swaps the pipeline (in place) the other job would otherwise be using.
        with rt.gpu_gate.held(job_id), rt.inflight.on_gpu(job_id):
            # A worker takes every variant its ladder carries: switch (evicting the old one).
            resident.ensure_variant(
                model, rt.settings, rt.identity.variant, job.variant or "auto", job_id
            )
            try:
                with rt.metrics.gpu_phase(), rt.metrics.gpu.running():
                    yield
            finally:  # the rung that worked is where a restart starts (read under the lock)
                _safe(rt.remember_rung)

    def progress(phase: str, step: int, steps: int) -> None:
        guard()  # another delivery took the job (this process was paused): stop here
        # `svdq cancel` stops a running job here: at its next denoising step, before upload.
        cancellation.check(rt.redis, job_id)
        if cooperative:  # the watchdog's deadline (InFlight, from _begin), raised once
            rt.inflight.check_soft(job_id)
        task.update_state(state=STATE_PROGRESS, meta={"phase": phase, "step": step, "steps": steps})

    # Uploads stop retrying at the soft limit: the deadline as it stands now, so no later
    # than the limit (earlier by any wait for the GPU gate, which pushes the limit out).
    upload_by = rt.inflight.soft_deadline(job_id) if cooperative else None
    try:
        return jobs.run_job(
            job,
            model,
            rt.store,
            rt.settings,
            worker,
            progress,
            rt.metrics.stepped_down,
            guard,
            gpu,
            upload_by,
        )
    finally:
        # result.json is written (or the run failed): the soft limit is not raised from here
        # on; it would land in the attempt's close or the callback (worker/overlap.py).
        rt.inflight.finishing(job_id)


def _soft_limit(rt: Runtime, task: Task) -> float | None:
    """The job's soft time limit in seconds (named in a time-out's reason)."""
    limit = (task.request.timelimit or (None, None))[1]
    return limit or rt.app.conf.task_soft_time_limit


def _variant_label(raw: Any) -> str:
    """The variant the message asks for, as a metric label (before the spec is checked)."""
    try:
        return str(raw.get("variant") or "auto")
    except AttributeError:
        return "unknown"


# --- step 10 and the heartbeat around the job ----------------------------------------------


def _begin(rt: Runtime, task: Task, job_id: str) -> float:
    """The job is held: on the heartbeat (worker/overlap.py InFlight: with overlap, the job
    on the GPU and the one finishing), busy, watched for its hard limit (and with overlap
    its soft one; waits at the run gate and the GPU gate are not counted: worker/overlap.py
    `waiting`). Returns its start."""
    hard = (task.request.timelimit or (None, None))[0] or rt.app.conf.task_time_limit
    # The soft limit is kept by the watchdog only with overlap (prefork's timer raises it).
    soft = _soft_limit(rt, task) if rt.settings.overlap > 1 else None
    started = rt.inflight.begin(job_id, hard, soft)
    _safe(rt.metrics.job_started, rt.settings.overlap == 1)  # busy; one job: peak memory too
    _safe(rt.presence.beat)
    _safe(rt.metrics.model_loaded, rt.model)
    return started


def _succeeded(
    rt: Runtime, job_id: str, worker: str | None, result: dict[str, Any], started: float
) -> None:
    # "skipped" when result.json was there already (the job did no work now).
    status = _safe(rt.metrics.succeeded, result, started) or Outcome.SUCCEEDED
    variant = str(result.get("variant", "unknown"))
    seconds = (result.get("timings") or {}).get("total") if status == Outcome.SUCCEEDED else None
    _safe(rt.presence.finished, job_id, status, variant, "", seconds, worker)


def _failed(rt: Runtime, job_id: str, worker: str | None, variant: str, exc: BaseException) -> None:
    reason = _safe(rt.metrics.failed, variant, exc) or type(exc).__name__
    _safe(rt.presence.finished, job_id, Outcome.FAILED, variant, reason, None, worker)


def _cancelled(rt: Runtime, task: Task, job_id: str, variant: str) -> None:
    _safe(cancellation.announce, task)  # Flower, `celery events`: revoked, not STARTED
    _safe(rt.metrics.cancelled, variant)
    _safe(rt.presence.finished, job_id, Outcome.CANCELLED, variant, "", None, task.request.hostname)


def _end(rt: Runtime, job_id: str) -> None:
    rt.inflight.end(job_id)
    _safe(rt.metrics.job_ended)
    _safe(rt.metrics.model_loaded, rt.model)  # a step-down or a variant switch loaded one
    _safe(rt.presence.beat)  # the jobs still held (none, or the other one), from InFlight


def _safe(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, or None when it fails: bookkeeping must never fail a job that succeeded."""
    try:
        return fn(*args)
    except Exception as exc:
        log.warning("metrics bookkeeping failed: %s", exc)
        return None


# --- ends only the parent process sees ------------------------------------------------------


def parent_saw_failure(
    presence: Presence, job_id: str, exception: BaseException | None, args: Any
) -> None:
    """Record a failure Celery's parent process found (a killed child, a hard time limit) on
    the finished-jobs stream: the child could not."""
    raw = args[0] if isinstance(args, list | tuple) and args else None
    reason = type(exception).__name__
    _safe(presence.finished, job_id, Outcome.FAILED, _variant_label(raw), reason)


REVOKED_REASON = "cancelled through Celery's revoke (Flower's Revoke or Terminate)"


def parent_saw_revoke(
    app: Celery, settings: Settings, presence: Presence | None, request: Any
) -> None:
    """Record a revoke this worker received through Celery (Flower's Revoke or Terminate: a
    `revoke` control command, kept in celery.worker.state.revoked) as `svdq cancel` records a
    cancel: the flag (a copy delivered later is dropped), the state REVOKED ("cancelled"),
    the finished-jobs stream, the callback. Never queued again: a person asked for it to stop.

    For Terminate, Celery has already SIGTERMed the pool child running the job, written
    REVOKED and acknowledged the message (celery/worker/request.py, Request.terminate →
    _announce_revoked), so nothing of it is left to upload; a new pool child loads the model."""
    job_id, args = getattr(request, "id", None), getattr(request, "args", None)
    if not job_id:
        return
    raw = args[0] if isinstance(args, list | tuple) and args else None
    try:
        app.backend.client.set(cancel_key(job_id), 1, ex=settings.result_expires)
        app.backend.mark_as_revoked(job_id, REVOKED_REASON)
    except Exception:
        log.exception("job %s was revoked; could not record it as cancelled", job_id)
    if presence is not None:
        _safe(presence.finished, job_id, Outcome.CANCELLED, _variant_label(raw), REVOKED_REASON)
    try:  # a message the intake let through always has a spec; be safe anyway
        job = JobSpec.from_dict(raw) if isinstance(raw, dict) else None
    except Exception:
        job = None
    if job is not None:
        try:
            callbacks.dispatch(app, job, callbacks.cancelled_payload(job))
        except ReplicationShortfall as exc:  # the revoked message is acked: nothing requeues
            log.error("job %s: its cancelled callback may be lost: %s", job_id, exc)
    log.warning("job %s was %s: cancelled, not queued again", job_id, REVOKED_REASON)


def requeue_if_terminated(app: Celery, settings: Settings, request: Any) -> None:
    """Queue a job again that Celery terminated and then counted as revoked (parent process).

    On a broker connection loss Celery terminates running jobs (worker_cancel_long_running_
    tasks_on_connection_loss) and means to leave their messages for redelivery. If recording
    that fails while Redis is still down, it treats the terminated job as revoked and
    acknowledges the message once Redis is back: the job would end "cancelled" with nobody
    having cancelled it. `svdq cancel` sets its own flag, and a revoke a person sent through
    Celery is handled before this (parent_saw_revoke), so a terminated job without either
    goes back on its queue; the lease and result.json make a second copy harmless.
    """
    job_id, args = getattr(request, "id", None), getattr(request, "args", None)
    if not job_id or not args or not isinstance(args[0], dict):
        return
    redis = app.backend.client
    try:
        if redis.exists(cancel_key(job_id)):
            return  # a person cancelled it: revoked is right
        redis.delete(app.backend.get_key_for_task(job_id))  # not cancelled: queued again
        send_job(app, JobSpec.from_dict(args[0]), settings)
        log.warning("job %s was terminated by a broker connection loss: queued again", job_id)
    except Exception:
        log.exception("job %s was terminated and could not be queued again", job_id)
