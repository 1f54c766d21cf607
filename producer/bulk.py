"""Submitting many jobs at once: a chunk at a time, with as few round trips as possible.

For each chunk of rows: read and hash the images locally (threads), which gives every job
id without touching the network; ask Redis about all of those jobs in one pipelined round
trip; upload only the inputs of jobs Redis does not already know (threads, one conditional
PUT each, skipped when the object exists); look for result.json only when the input was
already there; then publish the chunk's messages through one producer in one Redis
pipeline, and write the job and batch records in another.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from svdq.producer.batch import COUNTERS, BatchRecord, new_batch_id
from svdq.producer.bulkrows import Prepared, RowPreparer, sort_rows
from svdq.producer.doneindex import DoneIndex
from svdq.producer.jobqueue import JobQueue
from svdq.producer.journal import BatchJournal
from svdq.producer.manifest import Row
from svdq.producer.publish import publish_jobs
from svdq.shared.constants import result_key
from svdq.shared.errors import SvdqError
from svdq.shared.replication import ReplicationShortfall, execute_confirmed
from svdq.shared.spec import JobSpec

Event = Callable[[dict[str, Any]], None]


@dataclass
class Summary:
    """What one bulk submission did."""

    batch_id: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    job_ids: list[str] = field(default_factory=list)  # only kept when asked (the Python API)
    seconds: float = 0.0

    def line(self) -> str:
        """'1,998 already done, 2 resubmitted, ...' for people."""
        names = {
            "already_done": "already done",
            "already_queued": "already queued",
            "upload_failed": "upload failed",
        }
        parts = [f"{n:,} {names.get(k, k)}" for k, n in self.counts.items() if n]
        return ", ".join(parts) or "nothing to submit"


class BulkSubmitter:
    """Streams rows into the queue; see the module docstring for the steps of a chunk."""

    def __init__(
        self,
        jobqueue: JobQueue,
        *,
        batch_id: str | None = None,
        force: bool = False,
        random_seed: bool = False,
        threads: int = 8,
        chunk: int = 256,
        on_event: Event | None = None,
        keep_ids: bool = False,
        sent_events: bool | None = None,
        id_prefix: str = "",
        journal: BatchJournal | None = None,
    ) -> None:
        self.jobqueue = jobqueue
        self.settings = jobqueue.settings
        self.store = jobqueue.store
        self.force = force
        self.rows = RowPreparer(self.settings, self.store, random_seed, id_prefix)
        self.chunk = chunk
        self.on_event = on_event or (lambda _e: None)
        self.keep_ids = keep_ids
        # Celery's task-sent event per job (monitors see a job from the moment it is queued)
        # is a second message each; None keeps the app's task_send_sent_event.
        self.sent_events = sent_events
        # The local copy of every job's spec (producer/journal.py): what Redis may forget.
        self.journal = journal
        self.redis = jobqueue.redis
        self.batch = BatchRecord(
            self.redis, batch_id or new_batch_id(), jobqueue.settings.result_expires
        )
        self.summary = Summary(self.batch.batch_id)
        self._stop: list[int] = []  # SIGINTs received (see interrupt_flag)
        self.specs: dict[str, JobSpec] = {}  # kept only with keep_ids (the Python API)
        self.done_index = DoneIndex(self.store)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="svdq-bulk")
        self.uploader = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="svdq-put")
        self._inflight: set[str] = set()  # job ids of the chunk whose uploads are under way
        self._reopened = False  # the batch id was used before: its list may hold these jobs

    def run(self, rows: Iterable[Row], source: str = "") -> Summary:
        """Submit every row; the batch record says how far it got if this is interrupted."""
        t0 = time.perf_counter()
        self._reopened = self.batch.start(source)
        try:
            with interrupt_flag() as self._stop:
                # Two chunks overlap: while one's uploads run, the next one is read and hashed.
                pending: Iterator[None] | None = None
                it = iter(rows)
                while chunk := list(islice(it, self.chunk)):
                    step = self._chunk(chunk)
                    next(step)  # up to its uploads being under way
                    if pending is not None:
                        next(pending, None)  # the previous chunk: wait, send, record
                    pending = step
                    self._check_stop()
                if pending is not None:
                    next(pending, None)
            self.batch.finish()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.uploader.shutdown(wait=True, cancel_futures=True)
            self.summary.seconds = time.perf_counter() - t0
        return self.summary

    def _chunk(self, rows: list[Row]) -> Iterator[None]:
        """One chunk, in two steps: the first `next` reads, classifies and starts the uploads;
        the second waits for them, then sends and records the chunk."""
        # Rows that need I/O (a local file to read, an object to fetch) go to the threads;
        # already content-addressed s3:// rows are pure CPU and cheaper done right here.
        slow = [r for r in rows if not self.rows.addressed(r)]
        done_slow = dict(zip(map(id, slow), self.pool.map(self.rows.prepare, slow), strict=True))
        prepared = [done_slow[id(r)] if id(r) in done_slow else self.rows.prepare(r) for r in rows]
        ready = [p.spec.job_id for p in prepared if p.spec and p.spec.job_id]
        states = {s["job_id"]: s["state"] for s in self.jobqueue.peek(ready)}
        chunk = sort_rows(
            prepared, states, self._inflight, self.force, dict.fromkeys(COUNTERS, 0), self._emit
        )
        counts, rejects, members, candidates = (
            chunk.counts,
            chunk.rejects,
            chunk.members,
            chunk.candidates,
        )
        first: dict[str, JobSpec] = {}
        if self.keep_ids or self.journal:
            for p in prepared:
                if p.spec and p.spec.job_id:
                    first.setdefault(p.spec.job_id, p.spec)
        if self.keep_ids:
            self.specs.update((job_id, first[job_id]) for job_id, _ in members)
        # Each distinct input once (many rows may share an image), then result.json only for
        # jobs Redis does not know whose input was already there before this upload.
        uploads: dict[str, Prepared] = {}
        for p, _ in candidates:
            assert p.spec
            uploads.setdefault(p.spec.image, p)
        futures = [self.uploader.submit(self.rows.upload, p) for p in uploads.values()]
        self._inflight = {j for j, _ in members}
        yield
        # An input that cannot be stored fails its own rows (reported, not queued, sent again
        # by a re-run); the rest of the chunk and of the run go on.
        existed: dict[str, bool] = {}
        upload_errors: dict[str, str] = {}
        for image, future in zip(uploads, futures, strict=True):
            try:
                existed[image] = future.result()
            except (SvdqError, OSError) as exc:
                upload_errors[image] = f"upload failed: {exc}"
        if upload_errors:
            candidates, failed = self._drop_failed_uploads(
                candidates, upload_errors, counts, rejects
            )
            members = [m for m in members if m[0] not in failed]  # not queued: not in batch

        def finished(pair: tuple[Prepared, str]) -> bool:
            p, kind = pair
            assert p.spec
            return kind == "check" and existed[p.spec.image] and self.done_index.done(p.spec)

        done = list(self.pool.map(finished, candidates))
        sending: list[tuple[Prepared, str]] = []
        for (p, kind), is_done in zip(candidates, done, strict=True):
            if is_done:
                counts["already_done"] += 1
                self._emit(p, "already_done")
                continue
            kind = "submitted" if kind == "check" else kind
            counts[kind] += 1
            sending.append((p, kind))
        if self.force:  # regenerate: while result.json exists a worker returns it instead
            keys = [
                result_key(str(p.spec.job_id), p.spec.output_prefix) for p, _ in sending if p.spec
            ]
            list(self.pool.map(self.store.delete, keys))
        # Ctrl-C takes effect here, before the chunk is sent, or after it is recorded: never
        # in between, so every queued job is in the batch and a re-run finds it.
        self._check_stop()
        payloads = {id(p): p.spec.to_dict() for p, _ in sending if p.spec}
        if self.journal:  # before anything is published: every queued job is in it
            self.journal.add(first[job_id].to_dict() for job_id, _ in members)
        try:
            publish_jobs(
                self.jobqueue.app,
                self.settings,
                [(p.spec, payloads[id(p)]) for p, _ in sending if p.spec],
                self.sent_events,
                # The image as the row named it, for the line Flower shows (not the content hash).
                {
                    str(p.spec.job_id): str(p.row.data["image"])
                    for p, _ in sending
                    if p.spec and p.row.data and isinstance(p.row.data.get("image"), str)
                },
            )
        except ReplicationShortfall as exc:
            # The chunk's messages were taken back off the queue (ReplicatedBatch.flush):
            # not queued, not recorded, sent again by a re-run. Any a worker had taken
            # already are queued in fact: record those, so their state tells the truth.
            taken = [(p, k) for p, k in sending if p.spec and p.spec.job_id in exc.consumed]
            if taken:
                pipe = self.redis.pipeline(transaction=False)
                for p, kind in taken:
                    assert p.spec
                    self.jobqueue.record_job(
                        pipe, p.spec, rerun=kind == "resubmitted",
                        batch_id=self.batch.batch_id, payload=payloads[id(p)],
                    )  # fmt: skip
                self.batch.add_jobs(pipe, [m for m in members if m[0] in exc.consumed])
                pipe.execute()
            raise
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for p, kind in sending:
            assert p.spec
            self.jobqueue.record_job(
                pipe,
                p.spec,
                # Only a resubmitted job has an old cancel flag and final state to forget.
                rerun=kind == "resubmitted",
                batch_id=self.batch.batch_id,
                payload=payloads[id(p)],
                now=now,
            )
        listed = self.batch.members([j for j, _ in members]) if self._reopened else set()
        self.batch.add_jobs(pipe, [m for m in members if m[0] not in listed])
        self.batch.add_rejects(pipe, rejects)
        self.batch.count(pipe, counts)
        execute_confirmed(pipe, self.settings, f"the records of {len(sending)} job(s)")
        for name, n in counts.items():
            self.summary.counts[name] += n
        for p, kind in sending:
            self._emit(p, kind)
        if self.keep_ids:
            self.summary.job_ids.extend(j for j, _ in members)
        self.on_event({"event": "chunk", "batch_id": self.batch.batch_id, **self.summary.counts})

    def _drop_failed_uploads(
        self,
        candidates: list[tuple[Prepared, str]],
        errors: dict[str, str],
        counts: dict[str, int],
        rejects: list[dict[str, Any]],
    ) -> tuple[list[tuple[Prepared, str]], set[str]]:
        """The candidates whose input was stored, and the job ids of the others (counted and
        reported as failed rows)."""
        kept, failed = [], set()
        for p, kind in candidates:
            assert p.spec
            reason = errors.get(p.spec.image)
            if reason is None:
                kept.append((p, kind))
                continue
            failed.add(str(p.spec.job_id))
            counts["upload_failed"] += 1
            rejects.append(
                {"source": p.row.source, "status": "failed", "reason": reason, "field": "image"}
            )
            self._emit(p, "upload_failed", reason)
        return kept, failed

    def _check_stop(self) -> None:
        if self._stop:
            raise KeyboardInterrupt

    def _emit(self, p: Prepared, outcome: str, reason: str | None = None) -> None:
        event: dict[str, Any] = {"event": "row", "source": p.row.source, "outcome": outcome}
        if p.row.line:
            event["line"] = p.row.line
        if p.spec is not None:
            event["job_id"] = p.spec.job_id
        if reason:
            event["reason"] = reason
        self.on_event(event)


@contextlib.contextmanager
def interrupt_flag() -> Iterator[list[int]]:
    """While the block runs, Ctrl-C (SIGINT) only appends to the yielded list; the caller
    raises KeyboardInterrupt where stopping is safe. (A KeyboardInterrupt raised wherever
    the signal lands can be swallowed, e.g. inside a garbage-collected Redis pipeline.)"""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(
            signal.SIGINT, previous if previous is not None else signal.default_int_handler
        )
