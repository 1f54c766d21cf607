"""The FastAPI application: every route, on one `Client` (see the package docstring).

Routes under /v1 need `Authorization: Bearer <token>` (tokens.py) and count against the
token's rate; /healthz, /metrics, /openapi.json and the console's files at / do not (the
console's own calls carry the token; console.py).
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from svdq.producer.api import batches, jobs
from svdq.producer.api.console import SecurityHeaders, add_console, policy, store_origin
from svdq.producer.api.hub import RESYNC, EventHub
from svdq.producer.api.limits import Limits
from svdq.producer.api.middleware import BodyCap, Failures, Measure, Metrics
from svdq.producer.api.models import BATCH_BODY, JOB_BODY, PROBLEMS, BatchView, CancelView, JobView
from svdq.producer.api.problems import Problem, problem_response
from svdq.producer.api.requests import job_from_form, job_from_json, parse_json
from svdq.producer.api.tokens import Owner, TokenStore
from svdq.producer.client import Client
from svdq.producer.inputs import InputImage
from svdq.producer.services import outage, outage_service
from svdq.shared.errors import InvalidJobError
from svdq.shared.fields import FIELD_BY_NAME
from svdq.shared.settings import Settings
from svdq.shared.spec import check_field, json_schema
from svdq.shared.states import JobState

log = logging.getLogger("svdq.api")
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream (proxies drop idle ones)


def create_app(settings: Settings | None = None, client: Client | None = None) -> FastAPI:
    """The API on `client` (default: a Client from the environment)."""
    client = client or Client(settings)
    settings = client.settings
    limits = Limits(client.jobqueue)
    tokens = TokenStore(client.jobqueue.redis)
    hub = EventHub(client.jobqueue)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.start(asyncio.get_running_loop())
        yield
        await run_in_threadpool(hub.stop)

    app = FastAPI(
        title="svdq",
        summary="Still images to short videos (Stable Video Diffusion), through a job queue",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN: none here
        redoc_url=None,
        responses=PROBLEMS,
    )
    app.state.hub = hub
    app.state.metrics = metrics

    def owner_of(request: Request) -> Owner:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="svdq"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "unauthorized",
                "this route needs 'Authorization: Bearer <token>' (svdq token create NAME)",
                headers=challenge,
            )
        owner = tokens.verify(token.strip())
        if owner is None:
            raise Problem(
                401,
                "invalid-token",
                "the bearer token is not valid here: unknown, revoked or mistyped",
                headers=challenge,
            )
        limits.rate(owner)
        return owner

    Caller = Annotated[Owner, Depends(owner_of)]

    def owned_job(owner: Owner, job_id: str) -> str:
        if not limits.owns_job(owner, job_id):
            raise jobs.not_found(job_id)
        return job_id

    async def job_body(request: Request) -> tuple[dict[str, Any], InputImage | None]:
        """The job a request describes, and its uploaded image (checked, not stored)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            async with request.form(max_files=1, max_fields=64) as form:
                return await job_from_form(form, client.store, settings)
        if kind == "application/json":
            return job_from_json(parse_json(await request.body()), settings), None
        raise Problem(
            415,
            "media-type",
            f"Content-Type {kind or '(none)'!r} is not allowed: application/json or "
            "multipart/form-data",
        )

    async def accept(request: Request, owner: Owner, job_id: str | None) -> JSONResponse:
        if job_id is not None:
            check_field(FIELD_BY_NAME["job_id"], job_id)
        data, upload = await job_body(request)
        body, created = await run_in_threadpool(
            jobs.submit, client, limits, owner, data, job_id, upload
        )
        return JSONResponse(
            body,
            status_code=202 if created else 200,
            headers={"Location": body["links"]["self"]},
        )

    @app.post("/v1/jobs", response_model=JobView, status_code=202, openapi_extra=JOB_BODY)
    async def post_job(request: Request, owner: Caller) -> JSONResponse:
        """Queue a job: multipart (image file + fields) or JSON (image: s3:// or https://).
        202 when queued now; 200 when the same job is already queued, running or done."""
        return await accept(request, owner, None)

    @app.put("/v1/jobs/{job_id}", response_model=JobView, status_code=202, openapi_extra=JOB_BODY)
    async def put_job(job_id: str, request: Request, owner: Caller) -> JSONResponse:
        """The idempotent form: the same id and body twice queue one job."""
        return await accept(request, owner, job_id)

    @app.get("/v1/jobs/{job_id}", response_model=JobView)
    def get_job(job_id: str, owner: Caller) -> dict[str, Any]:
        """State, step progress, waiting_for, and the result with presigned links when done."""
        owned_job(owner, job_id)
        return jobs.view(client, job_id, settings.api_presign_seconds)

    @app.delete("/v1/jobs/{job_id}", response_model=CancelView)
    def delete_job(job_id: str, owner: Caller) -> dict[str, Any]:
        """Cancel: a queued job never runs, a running one stops at its next step."""
        owned_job(owner, job_id)
        return jobs.cancel(client, job_id)

    @app.get(
        "/v1/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    def job_events(job_id: str, owner: Caller) -> StreamingResponse:
        """Server-Sent Events: the job's state now, then each change (running step n/N per
        phase) until it succeeds, fails or is cancelled; then the stream ends."""
        owned_job(owner, job_id)
        return StreamingResponse(
            _events(job_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _events(job_id: str) -> AsyncIterator[bytes]:
        queue = hub.watch(job_id)
        try:
            event = await run_in_threadpool(jobs.view, client, job_id, settings.api_presign_seconds)
            last = None
            while True:
                key = (event["state"], event.get("phase"), event.get("step"))
                if key != last:
                    last = key
                    yield f"event: {event['state']}\ndata: {json.dumps(event)}\n\n".encode()
                if not JobState(event["state"]).is_open:
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    event = {"state": last[0], "phase": last[1], "step": last[2]}
                    continue
                if event is RESYNC or not JobState(event["state"]).is_open:
                    event = await run_in_threadpool(
                        jobs.view, client, job_id, settings.api_presign_seconds
                    )
                else:
                    event = {"job_id": job_id, **event}
        finally:
            hub.unwatch(job_id, queue)

    @app.post("/v1/batches", status_code=202, openapi_extra=BATCH_BODY)
    async def post_batch(request: Request, owner: Caller) -> JSONResponse:
        """A batch: one JobSpec JSON object per line, streamed; bad lines are reported in the
        batch's results, the rest run."""
        return JSONResponse(
            await batches.submit_batch(request, client, limits, owner), status_code=202
        )

    @app.get("/v1/batches/{batch_id}", response_model=BatchView)
    def get_batch(batch_id: str, owner: Caller) -> dict[str, Any]:
        """The batch's submission counts and its jobs by state now."""
        return batches.batch_view(limits, owner, batches.batch_for(client, limits, owner, batch_id))

    @app.get(
        "/v1/batches/{batch_id}/results",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    def batch_results(batch_id: str, owner: Caller) -> StreamingResponse:
        """JSON lines: each job (state, error, presigned links), then each rejected row."""
        batch = batches.batch_for(client, limits, owner, batch_id)
        return StreamingResponse(
            batches.results(client, limits, owner, batch), media_type="application/x-ndjson"
        )

    @app.delete("/v1/batches/{batch_id}")
    def delete_batch(batch_id: str, owner: Caller) -> dict[str, Any]:
        """Cancel every job of the batch that has not ended; counts of what happened."""
        batch = batches.batch_for(client, limits, owner, batch_id)
        return {"batch_id": batch_id, "cancel": batches.cancel_batch(client, limits, owner, batch)}

    @app.get("/v1/schema")
    def schema(_owner: Caller) -> dict[str, Any]:
        """The JobSpec JSON Schema (the same table the CLI and the worker check against)."""
        return json_schema()

    # /healthz and /metrics answer without a token: load balancers, kubelets and Prometheus
    # carry none. So they say nothing about any job or token: /healthz names only which of
    # Redis and the store is down (the reason, which names hosts, goes to the log), /metrics
    # has counters by route template and refusal reason only (never a raw path, job id or
    # token name; middleware.Measure). Scrape /metrics from the internal network only (README).
    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when Redis and the object store answer; 503 naming the one that does not."""
        for name, check in (
            ("redis", client.jobqueue.redis.ping),
            ("store", lambda: client.store.head("healthz")),
        ):
            try:
                check()
            except Exception as exc:
                log.warning(
                    "healthz: %s", outage(exc, settings) or f"{name}: {type(exc).__name__}: {exc}"
                )
                raise Problem(503, "unavailable", f"{name} is not reachable") from None
        return JSONResponse({"redis": "ok", "store": "ok"})

    @app.get("/metrics", include_in_schema=False)
    def metrics_page() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    add_console(app, client, limits, owner_of)
    on_error = _errors(app, settings, metrics)
    app.add_middleware(Failures, on_error=on_error)
    app.add_middleware(BodyCap, settings=settings, metrics=metrics)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.api_cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(Measure, metrics=metrics, routes=app.router.routes)
    app.add_middleware(SecurityHeaders, csp=policy(store_origin(client)))
    return app


def _errors(app: FastAPI, settings: Settings, metrics: Metrics) -> Callable[..., Response]:
    """Every error as problem+json; a failure of ours is logged here, never shown."""

    def answer(request: Request, problem: Problem) -> Response:
        metrics.rejected(problem.reason)
        return problem_response(problem, request)

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> Response:
        return answer(request, exc)

    @app.exception_handler(InvalidJobError)
    async def on_invalid(request: Request, exc: InvalidJobError) -> Response:
        return answer(request, Problem.invalid(exc))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return answer(request, Problem(400, "bad-request", f"{where}: {first.get('msg', '')}"))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        reason = {404: "not-found", 405: "method"}.get(exc.status_code, "http")
        return answer(request, Problem(exc.status_code, reason, str(exc.detail)))

    def on_error(request: Request, exc: Exception) -> Response:
        down = outage_service(exc)
        if down is not None:
            # The operator's sentence (endpoint, bucket, key, Redis URL) goes to the log only;
            # a caller learns which service is down, as /healthz says it.
            log.warning("%s %s: %s", request.method, request.url.path, outage(exc, settings))
            return answer(request, Problem(503, "unavailable", down))
        log.exception("%s %s failed", request.method, request.url.path)
        return answer(request, Problem(500, "internal", "the server failed; see its log"))

    return on_error
