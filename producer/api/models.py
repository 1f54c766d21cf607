"""The shapes of the API's requests and answers, for /openapi.json (FastAPI reads these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from svdq.shared.spec import json_schema


class JobView(BaseModel):
    """A job as its token sees it (Client.status, with links)."""

    model_config = ConfigDict(extra="allow")
    job_id: str
    state: str = Field(description="queued, running, retrying, succeeded, failed, cancelled")
    phase: str | None = Field(None, description="while running: denoise, decode, ...")
    step: int | None = None
    steps: int | None = None
    waiting_for: str | None = Field(None, description="why a queued or retrying job waits")
    error: str | None = None
    result: dict[str, Any] | None = Field(None, description="result.json, when it succeeded")
    links: dict[str, str] = Field(
        description="self, events, and presigned mp4/gif/poster URLs when it succeeded"
    )


class CancelView(BaseModel):
    """What DELETE did: Client.cancel's outcome and the job's state now."""

    job_id: str
    cancel: str = Field(description="cancelled, cancelling, already <state>, unknown")
    state: str


class BatchView(BaseModel):
    """A batch's submission record and its jobs' states now."""

    model_config = ConfigDict(extra="allow")
    batch_id: str
    complete: bool
    jobs: int
    counts: dict[str, int] = Field(description="the batch's jobs by state now")
    submitted: int = 0
    invalid: int = 0
    rejected: int = Field(0, description="rows that were not jobs (the first 1000 are kept)")
    links: dict[str, str]


class ProblemModel(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    reason: str
    field: str | None = None


PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemModel, "content": {"application/problem+json": {}}}
    for status in (400, 401, 404, 409, 413, 429)
}

_MULTIPART = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "the input image"},
        **{
            name: {"type": "string", "description": prop.get("description", "")}
            for name, prop in json_schema()["properties"].items()
            if name != "image"
        },
    },
}

JOB_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": json_schema()},
            "multipart/form-data": {"schema": _MULTIPART},
        },
    }
}

BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One JobSpec JSON object per line (image: s3:// in the bucket)",
        "content": {"application/x-ndjson": {"schema": json_schema()}},
    }
}
