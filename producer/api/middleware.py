"""Two ASGI layers around every route: the request-body cap and the metrics.

The cap is checked as the body streams in: a Content-Length over it is refused before a byte is
read, and a body without one (chunked) is cut off at the first chunk past it, so nothing past
the cap is ever buffered. POST /v1/batches has its own, larger cap (its body is read a line at
a time). The metrics count requests by route template, method and status, their latency, and
every refusal by its reason (the problem's `reason`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from svdq.producer.api.problems import MEDIA_TYPE, Problem
from svdq.shared.errors import SvdqError
from svdq.shared.settings import Settings

BATCH_PATH = "/v1/batches"
log = logging.getLogger("svdq.api")


class BodyTooLarge(SvdqError):
    """Raised inside `receive` when a body passes its cap."""


def cap_for(scope: Scope, settings: Settings) -> int:
    """The body cap for this request."""
    if scope["path"] == BATCH_PATH:
        return settings.api_max_batch_bytes
    return settings.api_max_body_bytes


class BodyCap:
    """Refuses (413) a request body over its cap, counting bytes as they arrive."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = cap_for(scope, self.settings)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            await self._refuse(scope, send, cap, int(length) if length.isdigit() else None)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, send, cap, None)

    async def _refuse(self, scope: Scope, send: Send, cap: int, size: int | None) -> None:
        what = f"{size:,} bytes" if size is not None else "more than that"
        batch = scope["path"] == BATCH_PATH
        name = "SVDQ_API_MAX_BATCH_BYTES" if batch else "SVDQ_API_MAX_BODY_BYTES"
        problem = Problem(
            413,
            "body-too-large",
            f"the request body is {what}: allowed up to {cap:,} bytes ({name})",
        )
        self.metrics.rejected("body-too-large")
        body = json.dumps(problem.body(scope["path"])).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Failures:
    """Answers an exception no route handled with the problem `on_error` makes of it, here,
    so it goes no further: Starlette's ServerErrorMiddleware would answer it too but then
    re-raise it, and uvicorn would log a traceback for an error already handled (an outage,
    logged as one line by `on_error`). A client that hung up mid-request (ClientDisconnect)
    is answered with nothing and counted as 499, as nginx counts it."""

    def __init__(self, app: ASGIApp, on_error: Any) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BodyTooLarge:
            raise  # BodyCap (outside this layer) answers it
        except ClientDisconnect:
            log.info("%s %s: the client hung up mid-request", scope["method"], scope["path"])
            scope.setdefault("state", {})["status"] = 499
        except Exception as exc:
            if started:  # mid-stream: nothing more can be said to the client
                log.exception("%s %s failed mid-answer", scope["method"], scope["path"])
                return
            response = self.on_error(Request(scope), exc)
            await response(scope, receive, send)


class Metrics:
    """The API's Prometheus metrics, in a registry of its own (GET /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "svdq_api_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "svdq_api_request_seconds",
            "Time to answer a request (to the end of the body for streams), by route",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.rejections = Counter(
            "svdq_api_rejections",
            "Requests refused, by reason (invalid-job, unauthorized, rate-limit, quota, ...)",
            ["reason"],
            registry=self.registry,
        )

    def rejected(self, reason: str) -> None:
        """Count one refusal."""
        self.rejections.labels(reason).inc()


# The methods that get a label of their own; any other (a client may send any token as a
# method, and uvicorn passes it on) is counted as "other", so no client grows /metrics.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(scope: Scope) -> str:
    """The request's method as a metric label: a standard one, else "other"."""
    method = str(scope.get("method", ""))
    return method if method in METHODS else "other"


class Measure:
    """Counts and times every request under its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route(self, scope: Scope) -> str:
        """The template of the route that matched (path and method), else "other": a label
        never comes from what the client sent. A PARTIAL match (the path, another method: a
        405) counts as "other" too."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                path = getattr(route, "path", None)
                return path if isinstance(path, str) else "other"
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            status = scope.get("state", {}).get("status", status)
            route = self._route(scope)
            self.metrics.requests.labels(route, method_label(scope), str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
