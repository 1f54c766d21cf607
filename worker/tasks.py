"""The Celery task. The model loads in each pool child (worker_process_init), never per job,
and never in the parent: CUDA must not be touched before the pool forks."""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from celery import Task
from celery.signals import task_revoked, worker_process_init

from svdq.shared.celery_app import make_celery, send_job
from svdq.shared.constants import STATE_PROGRESS, TASK_GENERATE, cancel_key
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.storage import ObjectStore, open_store
from svdq.worker import metrics  # noqa: F401  (connects the metrics signal handlers first)
from svdq.worker.callbacks import check_cancelled, run_to_end

log = logging.getLogger("svdq.worker")

settings = Settings.from_env()
app = make_celery(settings)

# Per-process state, filled in the pool child.
_loaded: dict[str, Any] = {}


def worker_variant() -> str:
    """The variant this worker process runs (set by the launcher)."""
    return os.environ.get("SVDQ_WORKER_VARIANT", "tiny")


def load_for_this_process() -> Any:
    """Load the model and open the store once per process; return the model."""
    if "model" not in _loaded:
        from svdq.worker.resident import load_initial

        _loaded["model"] = load_initial(settings, worker_variant())
        _loaded["store"] = open_store(settings)
        # The model and libraries live as long as the process: keep them out of the garbage
        # collector's full passes, which run in the middle of generation otherwise.
        gc.collect()
        gc.freeze()
    return _loaded["model"]


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    try:
        load_for_this_process()
    except Exception:
        # A child that cannot load its model must not take jobs: stop the whole worker,
        # loudly, so the supervisor (or the person) sees why.
        log.exception("could not load the %s model; stopping this worker", worker_variant())
        os.kill(os.getppid(), 15)
        raise


@app.task(name=TASK_GENERATE, bind=True)
def generate(self: Task, spec: dict[str, Any]) -> dict[str, Any]:
    """Turn one image into a clip; return the result record (also stored as result.json)."""
    from svdq.worker.jobs import run_job

    job = JobSpec.from_dict(spec)  # checked again here: the queue is not trusted
    from svdq.worker.resident import ensure_variant

    # A worker takes every variant its ladder carries: switch (evicting the old one) if needed.
    model = ensure_variant(
        load_for_this_process(), settings, worker_variant(), job.variant or "auto"
    )
    store: ObjectStore = _loaded["store"]

    def progress(phase: str, step: int, steps: int) -> None:
        # `svdq cancel` stops a running job here: at its next denoising step, before upload.
        check_cancelled(app.backend.client, job.job_id)
        self.update_state(state=STATE_PROGRESS, meta={"phase": phase, "step": step, "steps": steps})

    worker = self.request.hostname or "worker"

    def run() -> dict[str, Any]:
        return run_job(job, model, store, settings, worker, progress)

    return run_to_end(self, app, job, lambda: _delivered(self, job, run))


def _delivered(task: Task, job: JobSpec, run: Any) -> dict[str, Any]:
    """Run `run` under the job's lease and delivery counter (worker.delivery); a busy lease or a
    transient fault sends the job back to the queue after a wait."""
    from svdq.worker.delivery import LeaseBusy, RetryLater, deliver
    from svdq.worker.jobs import existing_result

    store: ObjectStore = _loaded["store"]
    soft = (task.request.timelimit or (None, None))[1] or app.conf.task_soft_time_limit
    try:
        return deliver(
            app.backend.client,
            job,
            settings,
            task.request.hostname or "worker",
            lambda: existing_result(store, job),
            run,
            soft_limit=soft,
        )
    except (LeaseBusy, RetryLater) as exc:
        log.warning("job %s: %s; again in %.1fs", job.job_id, exc, exc.wait)
        raise task.retry(countdown=exc.wait, max_retries=None) from None


@task_revoked.connect
def _requeue_if_terminated_by_connection_loss(
    sender: Any = None, request: Any = None, terminated: bool = False, **_: Any
) -> None:
    """Queue a job again that Celery terminated and then counted as revoked. Runs in the
    worker's main process.

    On a broker connection loss Celery terminates running jobs (worker_cancel_long_running_
    tasks_on_connection_loss) and means to leave their messages for redelivery. If recording
    that fails while Redis is still down, it treats the terminated job as revoked and
    acknowledges the message once Redis is back: the job would end "cancelled" with nobody
    having cancelled it. svdq never revokes through Celery (`svdq cancel` sets its own flag),
    so a terminated job without that flag goes back on its queue; the lease and result.json
    make a second copy harmless.
    """
    if getattr(sender, "name", "") != TASK_GENERATE or not terminated or request is None:
        return
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
