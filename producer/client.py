"""The Python API: submit jobs, follow them, fetch their results.

from svdq.producer import Client
client = Client()
handle = client.submit("photo.jpg", variant="svd-xt", motion_bucket_id=180)
result = handle.wait(timeout=600)          # the result record (result.json)
urls = client.presign(handle.job_id, 3600)  # {"mp4": "https://...", ...}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from svdq.producer.batch import Batch
from svdq.producer.bulk import BulkSubmitter
from svdq.producer.cancel import cancel_jobs
from svdq.producer.inputs import URLS_OFF, InputImage, put_input, resolve_input
from svdq.producer.jobqueue import JobQueue, invalid_record_error
from svdq.producer.manifest import Row
from svdq.producer.stats import workers
from svdq.shared import redisjson
from svdq.shared.celery_app import make_celery, send_job
from svdq.shared.constants import (
    CALLBACK_FIELD,
    REQUEUED_FIELD,
    job_key,
    queue_for,
    result_key,
)
from svdq.shared.errors import InvalidJobError, JobFailedError, TransientError, WaitTimeoutError
from svdq.shared.jobid import finalize
from svdq.shared.orphans import lost_holder
from svdq.shared.poll import poll as poll_until
from svdq.shared.records import result_problem
from svdq.shared.replication import ReplicationShortfall
from svdq.shared.retry import NEXT_TRY_AT, WAITING, waiting_note
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.states import JobState
from svdq.shared.storage import ObjectStore, open_store

__all__ = ["Client", "JobFailedError", "JobHandle", "WaitTimeoutError"]

log = logging.getLogger("svdq.producer")

_UNDER_WAY = (JobState.RUNNING, JobState.RETRYING)  # a worker holds it: submit sends no copy


@dataclass
class JobHandle:
    """A submitted job. `skipped` is true when it had already finished and was not queued."""

    client: Client = field(repr=False)
    job_id: str
    spec: JobSpec
    queue: str
    skipped: bool = False
    batch_id: str | None = None

    def status(self) -> dict[str, Any]:
        """See Client.status."""
        return self.client.status(self.job_id)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """See Client.wait; returns this job's result record."""
        return self.client.wait([self.job_id], timeout=timeout)[self.job_id]

    def result(self) -> dict[str, Any]:
        """See Client.result."""
        return self.client.result(self.job_id)

    def cancel(self) -> str:
        """See Client.cancel; returns what happened to this job."""
        return self.client.cancel([self.job_id])[self.job_id]


class Client:
    """Talks to Redis (queue and states) and the object store; holds no GPU, imports no torch."""

    def __init__(self, settings: Settings | None = None, store: ObjectStore | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.store = store or open_store(self.settings)
        self.app = make_celery(self.settings)
        # What every collaborator (bulk, batches, cancelling, dead letters) works through.
        self.jobqueue = JobQueue(self.settings, self.app, self.store)

    def prepare(self, spec: JobSpec | dict[str, Any], *, random_seed: bool = False) -> JobSpec:
        """Check a job, upload its image, and fill in variant, seed and job id. Queues nothing."""
        ready, found = self.resolve(spec, random_seed=random_seed)
        put_input(self.store, found.key, found.data)
        return ready

    def resolve(
        self,
        spec: JobSpec | dict[str, Any],
        *,
        random_seed: bool = False,
        id_prefix: str = "",
        found: InputImage | None = None,
    ) -> tuple[JobSpec, InputImage]:
        """`prepare` without the upload: the finished spec (its image named by the content
        address it will have) and the checked image to store. Stores and queues nothing, so
        a caller may still refuse the job (the HTTP API's quota) with nothing left behind.
        `found`: the image already read and checked (an HTTP upload); `spec.image` is then
        not read."""
        if isinstance(spec, dict):
            spec = JobSpec.from_dict(spec)
        if spec.variant is None:
            spec = spec.replace(variant=self.settings.default_variant)
        if found is None:
            refusal = None if self.settings.allow_urls else URLS_OFF
            found = resolve_input(spec.image, self.store, self.settings, refusal)
        ready = finalize(
            spec.replace(image=self.store.uri(found.key)),
            found.sha256,
            random_seed=random_seed,
            id_prefix=id_prefix,
        )
        return ready, found

    def submit(
        self,
        image: str | JobSpec | dict[str, Any],
        *,
        random_seed: bool = False,
        force: bool = False,
        **params: Any,
    ) -> JobHandle:
        """Check, upload and queue one job. Bad input raises InvalidJobError; nothing is queued.

        A job whose result.json already exists is not queued again unless `force`.
        """
        if isinstance(image, str):
            spec: JobSpec | dict[str, Any] = {"image": image, **params}
        else:
            spec = image if not params else {**_as_dict(image), **params}
        named = spec.get("image") if isinstance(spec, dict) else spec.image
        ready = self.prepare(spec, random_seed=random_seed)
        return self.enqueue(ready, force=force, image_name=str(named))

    def enqueue(
        self, ready: JobSpec, *, force: bool = False, image_name: str | None = None
    ) -> JobHandle:
        """Queue a job `prepare` returned (image in the store, id and seed filled in);
        `image_name`: the image as the submitter named it, for monitors (Flower)."""
        assert ready.job_id and ready.variant
        queue = queue_for(ready.variant)
        if force:  # regenerate: while result.json exists a worker returns it instead
            self.store.delete(result_key(ready.job_id, ready.output_prefix))
        elif self.jobqueue.stored_result(ready.job_id, ready.output_prefix) is not None:
            return JobHandle(self, ready.job_id, ready, queue, skipped=True)
        if not force and self.jobqueue.peek([ready.job_id])[0]["state"] in _UNDER_WAY:
            # Running now: hand back that job. Recording it again would reset its state to
            # queued while it runs, and a second message would only wait on its lease.
            return JobHandle(self, ready.job_id, ready, queue)
        pipe = self.jobqueue.redis.pipeline(transaction=False)
        self.jobqueue.record_job(pipe, ready)
        pipe.execute()
        try:
            # With SVDQ_REDIS_MIN_REPLICAS, send_job returns once the replicas hold the message;
            # replication is one ordered stream, so they hold the record written before it too.
            send_job(self.app, ready, self.settings, image_name)
        except ReplicationShortfall as exc:
            if ready.job_id in exc.consumed:
                # Its message could not be taken back: a worker had it already, so the job
                # is queued (or running) in fact, and its record says so truthfully.
                log.warning("job %s: %s", ready.job_id, exc)
                return JobHandle(self, ready.job_id, ready, queue)
            # Not acknowledged, and its message taken back off the queue (ReplicatedBatch):
            # nothing will run it, so it must not read as queued either.
            self.jobqueue.redis.delete(job_key(ready.job_id))
            raise
        return JobHandle(self, ready.job_id, ready, queue)

    def job_spec(self, job_id: str) -> JobSpec | None:
        """The spec a job was submitted with, while Redis still remembers it."""
        return self.jobqueue.job_spec(job_id)

    def status(self, job_id: str) -> dict[str, Any]:
        """Where a job is: state (queued, running, succeeded, failed, cancelled, unknown),
        its progress while running, the reason when failed, the result record when done."""
        res = self.app.AsyncResult(job_id)
        state = JobState.from_celery(res.state)
        out: dict[str, Any] = {"job_id": job_id, "state": state}
        info = res.info
        if state is JobState.RUNNING and isinstance(info, dict):
            out.update({k: info[k] for k in ("phase", "step", "steps") if k in info})
        if state is JobState.RUNNING:
            # A dead host's job keeps its last PROGRESS state until the reaper requeues it.
            lost = lost_holder(self.jobqueue.redis, job_id, time.time())
            if lost:
                out.update(lost=lost)
        elif state is JobState.FAILED:
            out["error"] = f"{type(info).__name__}: {info}"
        elif state is JobState.SUCCEEDED:
            problem = result_problem(info, job_id)
            if problem is None:
                out["result"] = info
            else:  # forged or damaged: not a clip, and nothing that shows it may crash
                out.update(state=JobState.FAILED, error=invalid_record_error(problem))
        if state is JobState.QUEUED and not self.jobqueue.redis.exists(job_key(job_id)):
            # Redis has no record of it (never submitted, or expired): result.json decides.
            stored = self.jobqueue.stored_result(job_id)
            if stored:
                out.update(state=JobState.SUCCEEDED, result=stored)
            else:
                out.update(state=JobState.UNKNOWN)
        if out["state"] is JobState.QUEUED:
            out.update(self._consumers_note(job_id))
            requeued = self.jobqueue.redis.hget(job_key(job_id), REQUEUED_FIELD)
            requeue = redisjson.obj(requeued)  # by a reaper, its worker lost: say so
            if requeue is not None and "reason" in requeue:  # until it runs again
                out["requeued"] = str(requeue["reason"])
        elif out["state"].is_final:  # how its callback ended, once `svdq callbacks` knows
            raw = self.jobqueue.redis.hget(job_key(job_id), CALLBACK_FIELD)
            callback = redisjson.obj(raw)  # an unreadable one is left out
            if callback is not None:
                out["callback"] = callback
        elif out["state"] is JobState.RETRYING:  # waiting out a transient fault: say which
            fields = self.jobqueue.redis.hmget(job_key(job_id), WAITING, NEXT_TRY_AT)
            note = waiting_note(*fields)
            if note:
                out["waiting_for"] = note
        return out

    def _consumers_note(self, job_id: str) -> dict[str, str]:
        """`waiting_for` when no live worker consumes the job's queue: not stuck silently."""
        redis = self.jobqueue.redis
        queue = redis.hget(job_key(job_id), "queue")
        queue = queue.decode() if isinstance(queue, bytes) else queue
        if not queue or any(queue in w["queues"] for w in workers(redis, time.time())):
            return {}
        return {
            "waiting_for": f"no running worker consumes {queue}: start one whose GPU can run "
            "it (`svdq plan --vram SIZE` shows which queues a card takes)"
        }

    def wait(
        self,
        job_ids: Iterable[str],
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.5,
    ) -> dict[str, dict[str, Any]]:
        """Block until every job ends; return their result records by job id.

        Raises JobFailedError naming the first job that failed or was cancelled, and
        WaitTimeoutError when `timeout` seconds pass first (the jobs go on running).
        """
        pending = list(dict.fromkeys(job_ids))
        done: dict[str, dict[str, Any]] = {}
        for _ in poll_until(poll, timeout):
            for job_id in list(pending):
                st = self.status(job_id)
                if on_progress:
                    on_progress(st)
                state = JobState(st["state"])
                if state is JobState.SUCCEEDED:
                    done[job_id] = st["result"]
                    pending.remove(job_id)
                elif not state.is_open:  # failed, cancelled, or unknown: it will not succeed
                    raise JobFailedError(f"job {job_id} {st['state']}: {st.get('error', '')}")
            if not pending:
                return done
        raise WaitTimeoutError(
            f"{len(pending)} job(s) still running after {timeout}s: "
            f"{', '.join(pending[:5])}; follow them with `svdq wait`"
        )

    def result(self, job_id: str) -> dict[str, Any]:
        """The job's result record; raises JobFailedError if it has not succeeded."""
        st = self.status(job_id)
        if st["state"] is not JobState.SUCCEEDED:
            raise JobFailedError(f"job {job_id} is {st['state']} {st.get('error', '')}".strip())
        return dict(st["result"])

    def presign(self, job_id: str, seconds: int) -> dict[str, str]:
        """Time-limited URLs for each of the job's outputs, by kind (mp4, gif, poster)."""
        if seconds <= 0:
            raise InvalidJobError(f"presign={seconds} is not allowed: seconds above 0")
        outputs = self.result(job_id)["outputs"]
        return {kind: self.store.presign(o["key"], seconds) for kind, o in outputs.items()}

    def download(self, job_id: str, kind: str) -> bytes:
        """The bytes of one output of a finished job."""
        return self.store.get_bytes(self.result(job_id)["outputs"][kind]["key"])

    # Many jobs at once (producer.bulk, producer.batch do the work; see those modules).

    def submit_many(
        self,
        specs: Iterable[JobSpec | dict[str, Any] | str],
        *,
        batch_id: str | None = None,
        force: bool = False,
        random_seed: bool = False,
        **params: Any,
    ) -> list[JobHandle]:
        """Check, upload and queue many jobs in a few round trips; one handle per new job id.

        Jobs already done or queued are not queued again (their handles say `skipped`). A bad
        spec raises InvalidJobError naming it, an input that cannot be stored TransientError;
        the good ones before it are already queued.
        """
        rows = (
            Row(f"specs[{i}]", i + 1, data={**params, **_as_dict_or_image(s)})
            for i, s in enumerate(specs)
        )
        outcomes: dict[str, tuple[str, JobSpec | None]] = {}

        def collect(event: dict[str, Any]) -> None:
            if event["event"] == "row" and event["outcome"] == "invalid":
                raise InvalidJobError(f"{event['source']}: {event['reason']}")
            if event["event"] == "row" and event["outcome"] == "upload_failed":
                raise TransientError(f"{event['source']}: {event['reason']}; submit it again")
            if event["event"] == "row" and "job_id" in event:
                outcomes.setdefault(event["job_id"], (event["outcome"], None))

        bulk = BulkSubmitter(
            self.jobqueue,
            batch_id=batch_id,
            force=force,
            random_seed=random_seed,
            on_event=collect,
            keep_ids=True,
        )
        summary = bulk.run(rows, source="submit_many")
        specs_by_id = bulk.specs
        return [
            JobHandle(
                self,
                job_id,
                specs_by_id[job_id],
                queue_for(str(specs_by_id[job_id].variant)),
                skipped=outcomes.get(job_id, ("", None))[0] in ("already_done", "already_queued"),
                batch_id=summary.batch_id,
            )
            for job_id in summary.job_ids
        ]

    def as_completed(
        self, handles: Iterable[JobHandle], timeout: float | None = None, poll: float = 0.5
    ) -> Iterator[JobHandle]:
        """Yield each handle as its job ends (succeeded, failed or cancelled), first done first.

        Call `handle.result()` on what comes out: it raises JobFailedError for failures (and
        for jobs unknown here, which come out at once).
        Raises WaitTimeoutError if `timeout` seconds pass before all of them end.
        """
        pending = {h.job_id: h for h in handles}
        for _ in poll_until(poll, timeout):
            ids = list(pending)
            ended: list[tuple[str, str]] = []
            for start in range(0, len(ids), 500):
                for entry in self.jobqueue.states(ids[start : start + 500]):
                    # unknown: never submitted here, or forgotten everywhere; it will not end,
                    # so it comes out now and its result() says so.
                    if not entry["state"].is_open:
                        ended.append((entry.get("ended_at") or "", entry["job_id"]))
            # Several may have ended since the last look: hand them out in the order they
            # ended, not the order they were asked about (no end time: first).
            for _, job_id in sorted(ended):
                yield pending.pop(job_id)
            if not pending:
                return
        raise WaitTimeoutError(
            f"{len(pending)} job(s) not finished after {timeout}s: {', '.join(list(pending)[:5])}"
        )

    def cancel(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Cancel jobs: a queued one never runs, a running one stops at its next step.

        Returns, per job: "cancelled", "cancelling" (running; its worker stops it),
        "already succeeded|failed|cancelled", or "unknown".
        """
        return cancel_jobs(self.jobqueue, list(job_ids))

    def batch(self, batch_id: str) -> Batch:
        """A bulk submission by id: its record, counts by state, handles, wait and cancel."""
        return Batch(self.jobqueue, batch_id)


def _as_dict_or_image(spec: JobSpec | dict[str, Any] | str) -> dict[str, Any]:
    return {"image": spec} if isinstance(spec, str) else _as_dict(spec)


def _as_dict(spec: JobSpec | dict[str, Any]) -> dict[str, Any]:
    return spec.to_dict() if isinstance(spec, JobSpec) else dict(spec)
