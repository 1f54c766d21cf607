"""One job through the API, on the producer's own `Client`: submit (with ownership, quota
and the idempotent form), the view a caller reads, and cancel. Synchronous (Redis and S3
calls); the routes run these in the thread pool."""

from __future__ import annotations

import time
from typing import Any

from svdq.producer.api.limits import ADMIT_SECONDS, Limits, id_prefix
from svdq.producer.api.problems import Problem
from svdq.producer.api.requests import check_callback
from svdq.producer.api.tokens import Owner
from svdq.producer.client import Client
from svdq.producer.inputs import InputImage, put_input
from svdq.producer.report import row_badges
from svdq.shared.errors import InvalidJobError
from svdq.shared.states import JobState


def not_found(job_id: str) -> Problem:
    """The answer for a job that does not exist or is another token's (the same answer)."""
    return Problem(404, "not-found", f"job {job_id[:140]!r} is unknown to this token")


def submit(
    client: Client,
    limits: Limits,
    owner: Owner,
    data: dict[str, Any],
    job_id: str | None = None,
    upload: InputImage | None = None,
) -> tuple[dict[str, Any], bool]:
    """Queue the job `data` describes for `owner`; (its view, whether it was queued now).

    `job_id` (PUT): the caller's id; the same id with the same body again queues nothing and
    answers with the job as it is; with another body it is refused (409).
    Without one, the id is the token's id + the job's content id (shared.jobid.finalize), so
    resubmitting the same image and parameters is the same job, and no other token's.
    `upload`: the image of a multipart request, checked but not stored yet.

    Order: everything that may refuse the job (the spec, the image, the id, the quota) comes
    before anything is stored; a repeat of this token's own queued, running or finished job
    answers with it and never counts against the quota.
    """
    if job_id is not None:
        if data.get("job_id", job_id) != job_id:
            raise InvalidJobError(
                f"job_id={data['job_id']!r:.140} is not allowed: the body must name the same "
                f"job_id as the URL ({job_id!r:.140}), or none",
                field="job_id",
            )
        data = {**data, "job_id": job_id}
    check_callback(data.get("callback_url"), limits.settings.api_callback_networks)
    chosen = data.get("job_id")
    if isinstance(chosen, str):
        limits.check_free(owner, chosen, data.get("output_prefix"))
    ready, found = client.resolve(data, id_prefix=id_prefix(owner), found=upload)
    job_id = ready.job_id
    assert job_id
    seconds = limits.settings.api_presign_seconds
    deadline = time.monotonic() + ADMIT_SECONDS
    while True:
        entry = client.jobqueue.peek([job_id])[0]
        if limits.owns_job(owner, job_id):
            if entry["state"].is_open and entry["has_record"]:
                earlier = client.job_spec(job_id)
                if earlier is not None and earlier.to_dict() != ready.to_dict():
                    raise Problem(
                        409,
                        "job-id-conflict",
                        f"job_id={job_id!r} is queued with other parameters: the same "
                        "job_id must come with the same body; choose another job_id",
                        field="job_id",
                    )
                return view(client, job_id, seconds), False
            if entry["state"] is JobState.SUCCEEDED:
                return view(client, job_id, seconds), False
        # The claim, the quota slot and the right to queue it, in one step (Limits.admit):
        # of concurrent identical requests one queues the job, the others wait for it and
        # answer with it (above).
        busy, counted = limits.admit(owner, job_id)
        if not busy:
            break
        if time.monotonic() > deadline:
            raise Problem(
                409,
                "job-busy",
                f"job_id={job_id!r} is being queued by another request; try again",
                field="job_id",
                headers={"Retry-After": "5"},
            )
        time.sleep(0.05)
    try:
        put_input(client.store, found.key, found.data)
        handle = client.enqueue(ready)
    except BaseException:
        limits.release(owner, job_id, counted)
        raise
    # Queued (or its result.json was there: then it holds no slot).
    limits.release(owner, job_id, counted and handle.skipped)
    if handle.skipped:
        return view(client, job_id, seconds), False
    # Just queued: the answer needs no read back (Client.status would also look for a live
    # consumer of the queue, a keyspace scan per submit; GET and the event stream say it).
    return {
        "job_id": job_id,
        "state": str(JobState.QUEUED),
        "links": _links(job_id),
    }, True


def view(client: Client, job_id: str, presign_seconds: int) -> dict[str, Any]:
    """The job as a caller sees it: Client.status, as JSON, with links (presigned outputs
    when it succeeded)."""
    status = client.status(job_id)
    out: dict[str, Any] = {k: v for k, v in status.items() if k != "result"}
    out["state"] = str(status["state"])
    # The badges the contact sheet shows (producer/report.py: row_badges), so the console
    # needs no thresholds of its own.
    out["badges"] = row_badges(out["state"], status.get("result"))
    links = _links(job_id)
    result = status.get("result")
    if status["state"] is JobState.SUCCEEDED and isinstance(result, dict):
        out["result"] = result
        for kind, output in (result.get("outputs") or {}).items():
            links[kind] = client.store.presign(output["key"], presign_seconds)
    out["links"] = links
    return out


def _links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "events": f"/v1/jobs/{job_id}/events"}


def cancel(client: Client, job_id: str) -> dict[str, Any]:
    """Cancel the job; what happened (Client.cancel's words) and the job as it is now."""
    outcome = client.cancel([job_id])[job_id]
    return {"job_id": job_id, "cancel": outcome, "state": str(client.status(job_id)["state"])}
