"""Errors as RFC 9457 problem details (application/problem+json), never a stack trace.

A refused job carries the CLI's own sentence (InvalidJobError: the field, the value, what is
allowed) in `detail` and the field in `field`; every refusal also counts in the rejection
metric under its `reason`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from svdq.shared.errors import InvalidJobError, SvdqError

log = logging.getLogger("svdq.api")
MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://svdq.dev/problems/"  # a stable identifier per reason (RFC 9457 §3.1.1)

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(SvdqError):
    """Raised by a route to answer with a problem: status, reason (a short slug that names
    the rule, also the metric label), detail for people, and extra members."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @classmethod
    def invalid(cls, exc: InvalidJobError, status: int = 400) -> Problem:
        """A refused job: the CLI's sentence and the field it names."""
        if exc.field:
            return cls(status, "invalid-job", str(exc), field=exc.field)
        return cls(status, "invalid-job", str(exc))

    def body(self, instance: str = "") -> dict[str, Any]:
        """The problem details object."""
        out: dict[str, Any] = {
            "type": TYPE_BASE + self.reason,
            "title": TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
        }
        if instance:
            out["instance"] = instance
        out.update(self.extra)
        return out


def problem_response(problem: Problem, request: Request | None = None) -> Response:
    """The HTTP response for `problem`; the reason is left on request.state for the metrics."""
    if request is not None:
        request.state.rejection = problem.reason
    instance = request.url.path if request is not None else ""
    return Response(
        json.dumps(problem.body(instance)),
        status_code=problem.status,
        media_type=MEDIA_TYPE,
        headers=problem.headers,
    )
