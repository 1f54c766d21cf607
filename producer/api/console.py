"""The web console at / (static files in console/, no build step, nothing from a CDN), the
security headers every answer carries, and the two routes only the console needs: the fleet
view (`svdq stats` as JSON) and the token's batch list.

The page holds the token in sessionStorage and sends it as `Authorization: Bearer` on every
call, the job event stream included (console/app.js reads it with fetch() and a stream reader,
since EventSource cannot send headers). So the files themselves need no token, and the
Content-Security-Policy can be strict: scripts, styles and connections to this origin only;
images and video also from the object store's origin, where the presigned result links point.
"""

# No `from __future__ import annotations`: FastAPI must see the real annotations of routes
# defined inside add_console (it cannot resolve a closure's names from strings).
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from svdq.producer import stats
from svdq.producer.api import batches
from svdq.producer.api.limits import Limits
from svdq.producer.api.problems import Problem
from svdq.producer.api.tokens import Owner
from svdq.producer.client import Client
from svdq.shared.errors import InvalidJobError

FILES = Path(__file__).with_name("console")


def store_origin(client: Client) -> str:
    """The scheme://host[:port] the store's presigned links use ('' for a local store: a
    browser cannot load file:// links from an http page anyway)."""
    try:  # signing is local (no request), but needs credentials configured
        link = urlsplit(client.store.presign("inputs/.origin", 60))
    except Exception:  # no credentials yet: the endpoint's origin, if one is set
        link = urlsplit(client.settings.s3_endpoint or "")
    if link.scheme in ("http", "https") and link.netloc:
        return f"{link.scheme}://{link.netloc}"
    return ""


def policy(media_origin: str) -> str:
    """The Content-Security-Policy: this origin only, plus the store for images and video."""
    media = f"'self' blob: {media_origin}".strip()
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {media}",
            f"media-src {media}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class SecurityHeaders:
    """Adds the CSP, nosniff, no framing and no referrer (presigned links must not leak
    through Referer) to every response."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def add_console(
    app: FastAPI, client: Client, limits: Limits, owner_of: Callable[..., Owner]
) -> None:
    """The console's files and routes; `owner_of` is the bearer-token dependency."""
    Caller = Annotated[Owner, Depends(owner_of)]

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(FILES / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/console", StaticFiles(directory=FILES), name="console")

    @app.get("/v1/fleet")
    def fleet(owner: Caller) -> dict[str, Any]:
        """What `svdq stats` shows: queues, workers and what each runs, throughput, failures.
        A worker's job id, and a lost job, show only to the token that owns the job."""
        snap = stats.snapshot(client.jobqueue.redis, time.time())
        running = [w["job_id"] for w in snap["workers"] if w.get("job_id")]
        lost = [j["job_id"] for j in snap.get("lost", [])]
        seen = running + lost
        mine = set(limits.owned_jobs(owner, seen)) if seen else set()
        for worker in snap["workers"]:
            if worker.get("job_id") and worker["job_id"] not in mine:
                worker["job_id"] = "(another token's job)"
        # A lost job is listed only to its owner (the others see how many there are).
        snap["lost"] = [j for j in snap.get("lost", []) if j["job_id"] in mine]
        snap["lost_others"] = len(lost) - len(snap["lost"])
        return snap

    @app.get("/v1/batches")
    def list_batches(owner: Caller) -> dict[str, Any]:
        """The token's latest batches (newest first) with their submission records."""
        out = []
        for batch_id in limits.batches(owner):
            try:
                out.append(batches.batch_for(client, limits, owner, batch_id).info())
            except (Problem, InvalidJobError):  # expired since it was listed
                continue
        return {"batches": out}
