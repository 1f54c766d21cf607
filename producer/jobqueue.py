"""The producer's one handle on svdq's services: settings, the Celery app, its Redis and the
object store, plus the few reads every producer module shares (many job states in one round
trip, a job's submission record, its result.json).

`Client` makes one and composes the rest around it; `BulkSubmitter`, `Batch`, `cancel_jobs`
and the dead-letter commands take it as their collaborator (the way arq passes `ArqRedis`
around), so none of them needs the `Client` that uses them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from svdq.shared import redisjson
from svdq.shared.constants import (
    CALLBACK_QUEUED_FIELD,
    REQUEUED_FIELD,
    cancel_key,
    job_key,
    queue_for,
)
from svdq.shared.records import read_result, result_problem
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.states import JobState
from svdq.shared.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobQueue:
    """Settings, the Celery app (broker and result backend: one Redis) and the object store."""

    settings: Settings
    app: Celery
    store: ObjectStore

    @property
    def redis(self) -> Any:
        """The Redis connection Celery's result backend holds (svdq's own keys live there too)."""
        return self.app.backend.client

    def state_key(self, job_id: str) -> bytes:
        """The Redis key where Celery keeps the job's state and result."""
        return bytes(self.app.backend.get_key_for_task(job_id))

    def record_job(
        self,
        pipe: Any,
        spec: JobSpec,
        *,
        rerun: bool = True,
        batch_id: str | None = None,
        payload: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Queue (on `pipe`) the job's submission record: svdq:job:<id> with its spec, queue,
        submission time and batch, kept as long as Celery keeps results.

        `rerun`: the job may have run before (job ids repeat by design), so an earlier run's
        final state and cancel flag are stale and go too; `wait` must not hand back that run's
        result for this one. `payload` is spec.to_dict() when the caller has it already.
        """
        assert spec.job_id and spec.variant
        record: dict[str, Any] = {
            "spec": json.dumps(spec.to_dict() if payload is None else payload),
            "queue": queue_for(spec.variant),
            "submitted_at": time.time() if now is None else now,
        }
        if batch_id is not None:
            record["batch"] = batch_id
        key = job_key(spec.job_id)
        pipe.hset(key, mapping=record)
        # An earlier run's "requeued by a reaper" and "callback queued" are not this one's.
        pipe.hdel(key, REQUEUED_FIELD, CALLBACK_QUEUED_FIELD)
        pipe.expire(key, self.settings.result_expires)
        if rerun:
            pipe.delete(self.state_key(spec.job_id), cancel_key(spec.job_id))

    def job_spec(self, job_id: str) -> JobSpec | None:
        """The spec a job was submitted with, while Redis still remembers it."""
        raw = redisjson.obj(self.redis.hget(job_key(job_id), "spec"))
        return JobSpec.from_dict(raw) if raw is not None else None

    def stored_result(self, job_id: str, output_prefix: str | None = None) -> dict[str, Any] | None:
        """The job's result.json, or None when it has none (not done, or never run here) or
        one that is not valid (shared/records.py: logged, and left for the worker that runs
        the job again to set aside). `output_prefix` defaults to the submitted spec's."""
        if output_prefix is None:
            spec = self.job_spec(job_id)
            output_prefix = spec.output_prefix if spec else None
        record, problem = read_result(self.store, job_id, output_prefix)
        if problem is not None:
            log.warning("job %s: result.json ignored, not valid: %s", job_id, problem)
        return record

    def peek(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """States of many jobs in one pipelined round trip: state (a JobState), result or error,
        has_record.

        A job Redis has no state for is QUEUED if its submission record exists, else UNKNOWN
        (the caller may then look for result.json).
        """
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.get(self.state_key(job_id))
            pipe.exists(job_key(job_id))
        replies = pipe.execute()
        return [
            _entry(self.app.backend, job_id, replies[2 * i], bool(replies[2 * i + 1]))
            for i, job_id in enumerate(job_ids)
        ]

    def states(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """`peek`, with result.json settling what Redis forgot: an UNKNOWN job whose
        result.json exists is SUCCEEDED, with that result."""
        entries = self.peek(job_ids)
        for entry in entries:
            if entry["state"] is JobState.UNKNOWN:
                stored = self.stored_result(entry["job_id"])
                if stored is not None:
                    entry.update(state=JobState.SUCCEEDED, result=stored)
        return entries


def _entry(backend: Any, job_id: str, raw: bytes | None, has_record: bool) -> dict[str, Any]:
    """One job's peek entry from its stored Celery state (None: Celery has stored none)."""
    entry: dict[str, Any] = {"job_id": job_id, "has_record": has_record}
    if raw is None:
        entry["state"] = JobState.QUEUED if has_record else JobState.UNKNOWN
        return entry
    meta = backend.decode_result(raw)
    state = entry["state"] = JobState.from_celery(str(meta["status"]))
    if meta.get("date_done"):  # when a final state was stored (ISO 8601, UTC)
        entry["ended_at"] = str(meta["date_done"])
    result = meta.get("result")
    if state is JobState.SUCCEEDED:
        _succeeded(entry, job_id, result)
    elif state is JobState.FAILED and isinstance(result, BaseException):
        # decode_result rebuilt the exception (celery/backends/base.py, meta_from_decoded:
        # "if meta['status'] in self.EXCEPTION_STATES: meta['result'] =
        # self.exception_to_python(meta['result'])"): the same sentence as Client.status.
        entry["error"] = f"{type(result).__name__}: {result}"
    elif state is JobState.FAILED and isinstance(result, dict):
        message = result.get("exc_message")
        if isinstance(message, list):  # Celery stores the exception's args
            message = " ".join(map(str, message))
        entry["error"] = f"{result.get('exc_type', 'Error')}: {message}"
    elif state is JobState.RUNNING and isinstance(result, dict):
        entry.update({k: result[k] for k in ("phase", "step", "steps") if k in result})
    return entry


def _succeeded(entry: dict[str, Any], job_id: str, result: Any) -> None:
    """A SUCCESS Celery stored: its result when that is a valid record, else a failure saying
    why (a forged or damaged state must not crash whoever shows it, nor pass for a clip)."""
    problem = result_problem(result, job_id)
    if problem is None:
        entry["result"] = result
    else:
        entry.update(state=JobState.FAILED, error=invalid_record_error(problem))


def invalid_record_error(problem: str) -> str:
    """The error shown for a job whose stored result record cannot be believed."""
    return (
        f"InvalidResultRecord: the stored result record is not valid ({problem}); "
        "submit the job again with --force to regenerate it"
    )
