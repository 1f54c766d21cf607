"""Job events for every SSE watcher of one API process, from ONE Redis subscription.

Celery's Redis result backend publishes every state it stores on a channel named after the
state's key (celery/backends/redis.py, RedisBackend._set: `pipe.publish(key, value)` next to
the SETEX), and a worker stores one PROGRESS state per denoising step (worker/lifecycle.py).
So one PSUBSCRIBE on `<task_keyprefix>*` sees every job's progress; the hub hands each message
to the watchers of that job, in the event loop. However many watchers there are, the Redis
work is that one subscription (each watcher reads the job once when it starts, and once at
the end for the result links): nobody polls.

The listener is a thread on the producer's own Redis connection settings; after it
(re)subscribes it tells every watcher to read its job again, so nothing is missed across a
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import redis

from svdq.producer.jobqueue import JobQueue
from svdq.shared.states import JobState

log = logging.getLogger("svdq.api")

RESYNC: dict[str, Any] = {"resync": True}  # "read the job again": a reconnect happened
QUEUE_SIZE = 64


class EventHub:
    """Fans the one subscription out to per-watcher asyncio queues."""

    def __init__(self, jobqueue: JobQueue) -> None:
        backend = jobqueue.app.backend
        self.backend = backend
        self.redis = jobqueue.redis
        self.prefix: bytes = bytes(backend.task_keyprefix)
        self.watchers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.subscribed = threading.Event()
        self.messages = 0  # messages received, for the benchmark and tests

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the listener thread (once)."""
        self.loop = loop
        self._thread = threading.Thread(target=self._listen, name="svdq-api-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the listener; it ends within a second."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def watch(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        """A queue of this job's events, registered before the caller reads the job's state,
        so no event falls between that read and the first message."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.watchers.setdefault(job_id, set()).add(queue)
        return queue

    def unwatch(self, job_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Forget a watcher (its stream ended or its client went away)."""
        queues = self.watchers.get(job_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.watchers[job_id]

    def _listen(self) -> None:
        wait = 0.5
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(self.prefix + b"*")
                self.subscribed.set()
                self._to_all(RESYNC)
                wait = 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "pmessage":
                        self._dispatch(message["channel"], message["data"])
            except (redis.RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("job events: Redis subscription lost (%s); again in %.1fs", exc, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, 10.0)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        self.messages += 1
        job_id = channel[len(self.prefix) :].decode(errors="replace")
        if job_id not in self.watchers or self.loop is None:
            return
        event = self.event(data)
        if event is not None:
            self.loop.call_soon_threadsafe(self._deliver, job_id, event)

    def event(self, raw: bytes) -> dict[str, Any] | None:
        """A stored Celery state as a watcher's event: state, and step progress if running."""
        try:
            meta = self.backend.decode_result(raw)
            state = JobState.from_celery(str(meta["status"]))
        except Exception:  # a message that is not a state: nothing to tell anyone
            return None
        event: dict[str, Any] = {"state": str(state)}
        result = meta.get("result")
        if state is JobState.RUNNING and isinstance(result, dict):
            event.update({k: result[k] for k in ("phase", "step", "steps") if k in result})
        return event

    def _to_all(self, event: dict[str, Any]) -> None:
        if self.loop is not None:
            for job_id in list(self.watchers):
                self.loop.call_soon_threadsafe(self._deliver, job_id, event)

    def _deliver(self, job_id: str, event: dict[str, Any]) -> None:
        for queue in list(self.watchers.get(job_id, ())):
            if queue.full():  # a slow reader: progress drops, the latest event must not
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
