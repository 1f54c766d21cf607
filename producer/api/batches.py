"""Batches over HTTP: a JSON-lines body streamed into the producer's own BulkSubmitter.

The body is read a chunk at a time and cut into lines; rows go to the submitter (in a thread)
through a small bounded queue, so a 100 000-line batch is never held in memory: reading waits
while the submitter is behind. A bad line is reported in the batch (its rejects), the rest run.
Results stream back as JSON lines from the batch record, a chunk of jobs at a time.

Rows get the ids single submissions get (the token's id before the content id), and a row that
chooses its job_id claims it as PUT does (refused in the batch's report when it is not this
token's to take); results and counts show only jobs the token owns, whatever a batch record
holds.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from svdq.producer.api.limits import Limits, id_prefix
from svdq.producer.api.problems import Problem
from svdq.producer.api.requests import check_callback, check_remote_image
from svdq.producer.api.tokens import Owner
from svdq.producer.batch import Batch, check_batch_id, new_batch_id
from svdq.producer.bulk import BulkSubmitter
from svdq.producer.cancel import cancel_jobs
from svdq.producer.client import Client
from svdq.producer.manifest import Row, loads
from svdq.producer.report import row_badges
from svdq.shared.constants import batch_key
from svdq.shared.errors import InvalidJobError
from svdq.shared.fields import FIELD_BY_NAME
from svdq.shared.settings import Settings
from svdq.shared.spec import check_field
from svdq.shared.states import JobState

MAX_LINE = 64 * 1024  # one JSON line (a JobSpec is well under 20 KiB with its metadata)
ROWS_PER_HAND = 256
_END: list[Row] = []


def parse_line(text: bytes, number: int, settings: Settings) -> Row | None:
    """One line of the body as a row, or a row saying why it is not a job; None if blank."""
    where = f"line {number}"
    if not text.strip():
        return None
    if len(text) > MAX_LINE:
        return Row(where, number, error=f"{where} is {len(text):,} bytes: allowed {MAX_LINE:,}")
    try:
        data = loads(text)
    except ValueError as exc:  # manifest.loads: bad JSON, too deep, a number too long
        return Row(where, number, error=f"{where}: not valid JSON ({exc})")
    if not isinstance(data, dict):
        return Row(where, number, error=f"{where}: a JSON object is required")
    try:
        # No URLs in batches, as in `svdq bulk`: store the images, name them by s3://.
        check_remote_image(data.get("image"), settings, urls=False)
    except InvalidJobError as exc:
        return Row(where, number, error=f"{where}: {exc}", field="image")
    return Row(where, number, data=data)


# Batch submitters run in a pool of their own, never the event loop's default executor (which
# the routes' other blocking work shares): a slow upload holds one of these threads for as long
# as it sends, so the pool is bounded, each token may hold SVDQ_API_MAX_BATCHES of them, and
# an upload that sends nothing for SVDQ_API_BATCH_IDLE seconds is cut off.
BATCH_THREADS = 32
_POOL = ThreadPoolExecutor(BATCH_THREADS, thread_name_prefix="svdq-batch")
_open: dict[str, int] = {}  # token id -> batch uploads open in this process


def _busy(detail: str, status: int = 429) -> Problem:
    return Problem(status, "batches-busy", detail, headers={"Retry-After": "10"})


async def submit_batch(
    request: Request, client: Client, limits: Limits, owner: Owner
) -> dict[str, Any]:
    """Stream the body's rows into a new batch of `owner`'s; the batch's submission summary."""
    settings = client.settings
    if _open.get(owner.id, 0) >= settings.api_max_batches:
        raise _busy(
            f"token {owner.name!r} has {_open[owner.id]} batch uploads open: allowed up to "
            f"{settings.api_max_batches} at once (SVDQ_API_MAX_BATCHES); try again when one "
            "is done"
        )
    if sum(_open.values()) >= BATCH_THREADS:
        raise _busy(f"{BATCH_THREADS} batch uploads are open here; try again soon", 503)
    _open[owner.id] = _open.get(owner.id, 0) + 1
    try:
        return await _submit_batch(request, client, limits, owner)
    finally:
        _open[owner.id] -= 1
        if not _open[owner.id]:
            del _open[owner.id]


async def _chunks(request: Request, idle: float) -> AsyncIterator[bytes]:
    """The body a piece at a time; Problem 408 when nothing comes for `idle` seconds."""
    stream = request.stream().__aiter__()
    while True:
        try:
            piece = await asyncio.wait_for(stream.__anext__(), idle)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise Problem(
                408,
                "body-idle",
                f"the batch body sent nothing for {idle:g}s: allowed up to {idle:g}s between "
                "pieces (SVDQ_API_BATCH_IDLE); the lines read so far were submitted",
            ) from None
        yield piece


async def _submit_batch(
    request: Request, client: Client, limits: Limits, owner: Owner
) -> dict[str, Any]:
    settings = client.settings
    batch_id = new_batch_id()
    await run_in_threadpool(limits.own_batch, owner, batch_id)
    hand: queue.Queue[list[Row]] = queue.Queue(maxsize=4)
    queued: list[str] = []
    # Lines holding a reserved quota slot (Limits.reserve), until the submitter has said
    # what became of them; `held` counts those it has, since the last chunk.
    granted: set[int] = set()
    held = 0

    def rows() -> Iterator[Row]:
        while chunk := hand.get():
            yield from chunk

    def on_event(event: dict[str, Any]) -> None:
        nonlocal held
        if event["event"] == "row":
            if event.get("line") in granted:
                granted.discard(event["line"])
                held += 1
            if event["outcome"] in ("submitted", "resubmitted"):
                queued.append(event["job_id"])
        elif event["event"] == "chunk":
            limits.moved(owner, queued, held)
            queued.clear()
            held = 0

    async def reserved(chunk: list[Row]) -> list[Row]:
        """The chunk with a quota slot held for each job row, or the row refused (over)."""
        wanted = [r for r in chunk if r.data is not None]
        got = await run_in_threadpool(limits.reserve, owner, len(wanted))
        over = {id(r) for r in wanted[got:]}
        granted.update(r.line for r in wanted[:got])
        return [
            Row(r.source, r.line, error=f"{r.source}: {_QUOTA}") if id(r) in over else r
            for r in chunk
        ]

    bulk = BulkSubmitter(
        client.jobqueue,
        batch_id=batch_id,
        on_event=on_event,
        threads=4,
        id_prefix=id_prefix(owner),
    )
    loop = asyncio.get_running_loop()
    running = loop.run_in_executor(_POOL, bulk.run, rows(), "POST /v1/batches")

    async def give(chunk: list[Row]) -> None:
        while True:
            try:
                hand.put_nowait(chunk)
                return
            except queue.Full:
                if running.done():
                    return  # it stopped: its error comes out below
                await asyncio.sleep(0.005)

    pending: list[Row] = []
    number = 0
    try:
        buffer = b""
        async for piece in _chunks(request, settings.api_batch_idle):
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_LINE:  # a line that never ends: report it, drop its bytes
                lines.append(buffer)
                buffer = b""
            for text in lines:
                number += 1
                if number > settings.api_max_batch_lines:
                    break
                row = parse_line(text, number, settings)
                if row is None:
                    continue
                if row.data is not None and "callback_url" in row.data:
                    row = await run_in_threadpool(_check_row_callback, row, settings)
                if row.data is not None and isinstance(row.data.get("job_id"), str):
                    row = await run_in_threadpool(_claim_row, limits, owner, row)
                pending.append(row)
                if len(pending) >= ROWS_PER_HAND:
                    await give(await reserved(pending))
                    pending = []
            if number > settings.api_max_batch_lines:
                break
        if buffer.strip() and number < settings.api_max_batch_lines:
            number += 1
            row = parse_line(buffer, number, settings)
            if row is not None:
                pending.append(row)
        if pending:
            await give(await reserved(pending))
    finally:
        await give(_END)
        summary = await running
        # Slots of rows the submitter never reported (it stopped): give them back.
        await run_in_threadpool(limits.moved, owner, [], len(granted))
    if number > settings.api_max_batch_lines:
        cap = settings.api_max_batch_lines
        raise Problem(
            413,
            "batch-too-long",
            f"the batch has more than {cap:,} lines: allowed up to {cap:,} "
            f"(SVDQ_API_MAX_BATCH_LINES); its first {cap:,} lines were submitted as batch "
            f"{batch_id} (see its links), the rest was not read: send it as another batch",
            batch_id=batch_id,
            lines=cap,
            counts=summary.counts,
            links=_links(batch_id),
        )
    return {
        "batch_id": batch_id,
        "lines": number,
        "counts": summary.counts,
        "links": _links(batch_id),
    }


def _check_row_callback(row: Row, settings: Settings) -> Row:
    """The row, or the row reporting that its callback_url goes where API callers may not
    send one (requests.check_callback)."""
    assert row.data is not None
    try:
        check_callback(row.data["callback_url"], settings.api_callback_networks)
    except InvalidJobError as exc:
        return Row(row.source, row.line, error=f"{row.source}: {exc}", field="callback_url")
    return row


def _claim_row(limits: Limits, owner: Owner, row: Row) -> Row:
    """A row that chooses its job_id, once the id is this token's (claimed as PUT claims it),
    or the row reporting why not."""
    assert row.data is not None
    job_id = row.data["job_id"]
    try:
        check_field(FIELD_BY_NAME["job_id"], job_id)
    except InvalidJobError:
        return row  # the spec check reports it, with the row's other faults
    prefix = row.data.get("output_prefix")
    try:
        limits.claim(owner, job_id, prefix if isinstance(prefix, str) else None)
    except (Problem, InvalidJobError) as exc:
        detail = exc.detail if isinstance(exc, Problem) else str(exc)
        return Row(row.source, row.line, error=f"{row.source}: {detail}", field="job_id")
    return row


_QUOTA = "over this token's quota of queued jobs (svdq token create --quota); not queued"


def _links(batch_id: str) -> dict[str, str]:
    base = f"/v1/batches/{batch_id}"
    return {"self": base, "results": f"{base}/results"}


def batch_for(client: Client, limits: Limits, owner: Owner, batch_id: str) -> Batch:
    """The batch if `owner` made it; else the 404 a stranger gets."""
    try:
        check_batch_id(batch_id)
    except InvalidJobError:
        raise _unknown(batch_id) from None
    if not limits.owns_batch(owner, batch_id):
        raise _unknown(batch_id)
    return client.batch(batch_id)


def _unknown(batch_id: str) -> Problem:
    return Problem(404, "not-found", f"batch {batch_id[:140]!r} is unknown to this token")


def owned_states(limits: Limits, owner: Owner, batch: Batch) -> Iterator[dict[str, Any]]:
    """Batch.states, only for the jobs `owner` owns: a batch record never shows a token
    another's job (rows get token-scoped ids, so this only guards against a record that
    names one anyway)."""
    for chunk in batch.record.job_chunks():
        mine = limits.owned_jobs(owner, chunk)
        for entry, source in zip(
            batch.jobqueue.states(mine), batch.record.sources(mine), strict=True
        ):
            entry["source"] = source
            yield entry


def batch_view(limits: Limits, owner: Owner, batch: Batch) -> dict[str, Any]:
    """The record, and the owner's jobs' states now."""
    info = batch.info()
    counts: dict[str, int] = {}
    for entry in owned_states(limits, owner, batch):
        counts[str(entry["state"])] = counts.get(str(entry["state"]), 0) + 1
    info["counts"] = counts
    info["links"] = _links(batch.batch_id)
    return info


def results(client: Client, limits: Limits, owner: Owner, batch: Batch) -> Iterator[bytes]:
    """One JSON line per job (state, error, badges; scores and presigned links when done),
    then one per row that was not a job (status invalid/skipped/failed, reason)."""
    seconds = client.settings.api_presign_seconds
    for entry in owned_states(limits, owner, batch):
        line: dict[str, Any] = {k: v for k, v in entry.items() if k not in ("has_record",)}
        line["state"] = str(entry["state"])
        result = line.pop("result", None)
        line["badges"] = row_badges(line["state"], result)  # as the contact sheet shows them
        if entry["state"] is JobState.SUCCEEDED and isinstance(result, dict):
            line["scores"] = result.get("scores") or {}
            line["links"] = {
                kind: client.store.presign(output["key"], seconds)
                for kind, output in (result.get("outputs") or {}).items()
            }
        yield (json.dumps(line, default=str) + "\n").encode()
    kept = 0
    for reject in batch.record.rejects():
        kept += 1
        yield (json.dumps(reject) + "\n").encode()
    total = int(batch.record.redis.hget(batch_key(batch.batch_id), "rejected") or 0)
    if total > kept:
        line = {"status": "omitted", "rejected": total, "kept": kept}
        line["reason"] = f"{total - kept} more rejected rows: only the first {kept} are kept"
        yield (json.dumps(line) + "\n").encode()


def cancel_batch(client: Client, limits: Limits, owner: Owner, batch: Batch) -> dict[str, int]:
    """Cancel the batch's jobs that `owner` owns (a job shared with another token's earlier
    submission is theirs to cancel); counts of what happened."""
    out: dict[str, int] = {}
    for chunk in batch.record.job_chunks():
        for what in cancel_jobs(client.jobqueue, limits.owned_jobs(owner, chunk)).values():
            out[what] = out.get(what, 0) + 1
    return out
