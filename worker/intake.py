"""Message intake: every message a worker's consumer receives is read and checked here,
in the worker's main process, before Celery builds a request from it. A message this worker
cannot take — not JSON, not a Celery task message, wrong shape or types, a job spec with
unknown fields or bad values, a task id that is not the spec's job_id, a task this worker does
not serve, a body over MAX_MESSAGE_BYTES — is set aside on the dead-letter list (its reason
and its raw body, truncated) and acknowledged. The worker stays up and takes the next one.

Why here. Celery 5.7's consumer (celery/worker/consumer/consumer.py, on_task_received)
catches only a few kinds of error around its strategy:

        except (InvalidTaskError, ContentDisallowed) as exc:
            return on_invalid_task(payload, message, exc)
        except DecodeError as exc:
            return self.on_decode_error(message, exc)

and celery/worker/request.py's Request.__init__ unpacks the body with no check at all:

        self._request_dict['args'], self._request_dict['kwargs'], _ = self.__payload

so a JSON body such as {"a": 1} raises ValueError ("not enough values to unpack") in the
main process: "Unrecoverable error", the worker exits, the unacknowledged message is restored
and kills the next worker — a crash loop. Celery also sends a message with an unknown task name
to on_unknown_task, which writes a FAILURE for the id the message claims (another job's, may
be) and rejects it unrecorded. The seam is the consumer's task handler
(Consumer.create_task_handler, a Celery extension point chosen with `worker_consumer`): ours
checks first and hands Celery only what it can read; whatever still escapes Celery's handler
(except a lost connection, which the consumer must see to reconnect) is set aside too.

What is checked is the contract svdq's producers keep (shared/celery_app.send_job): protocol 2
headers, a JSON body [args, kwargs, embed] with no chained tasks, and the arguments of each
served task (ARGUMENT_CHECKS).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery.utils.time import maybe_iso8601
from celery.worker.consumer.consumer import Consumer as CeleryConsumer
from vine import promise

from svdq.shared.constants import TASK_CALLBACK, TASK_GENERATE
from svdq.shared.errors import InvalidJobError
from svdq.shared.spec import JobSpec, check_job_id
from svdq.worker import deadletter

log = logging.getLogger("svdq.worker")

# A job spec is at most a few KiB plus its metadata (MAX_METADATA_BYTES, 16 KiB): a body
# sixteen times that is not one of ours, and is never parsed.
MAX_MESSAGE_BYTES = 256 * 1024
KEPT_BODY_CHARS = 4096  # of the raw body, on the dead-letter list
SET_ASIDE_PREFIX = "message:"  # ':' is not allowed in a job id: never a job's entry

# Headers Celery's Request reads, and the types it can read them as.
_OPTIONAL_STR = ("shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr", "origin")
_EMBED_KEYS = {"callbacks", "errbacks", "chain", "chord"}

ArgumentCheck = Callable[[str, list[Any], dict[str, Any]], None]


def _refuse(message: str, field: str) -> InvalidJobError:
    return InvalidJobError(message, field=field)


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def check_generate(task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """svdq.generate takes one argument, the job spec, whose job_id is the task id."""
    if len(args) != 1 or kwargs:
        raise _refuse(
            f"args={_shown(args)} kwargs={_shown(kwargs)} is not allowed: "
            f"{TASK_GENERATE} takes exactly one positional argument, the job spec",
            "args",
        )
    spec = JobSpec.from_dict(args[0])  # InvalidJobError naming the field
    if spec.job_id is None:
        raise _refuse(
            "job_id is missing from the spec: it is required, and must equal the task id "
            f"{task_id!r}",
            "job_id",
        )
    if spec.job_id != task_id:
        raise _refuse(
            f"task id {task_id!r} is not allowed for a spec whose job_id={spec.job_id!r}: "
            "the two must be equal (the task id names the job's state and result)",
            "id",
        )


CALLBACK_ENDS = ("succeeded", "failed", "cancelled")  # shared.states.JobState's final states


def check_callback(task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """svdq.callback takes (job_id, status): the job whose recorded callback to send, and the
    end it is for (worker/callbacks.py: the message carries no URL and no payload)."""
    if (
        len(args) != 2
        or kwargs
        or not all(isinstance(a, str) for a in args)
        or args[1] not in CALLBACK_ENDS
    ):
        raise _refuse(
            f"args={_shown(args)} kwargs={_shown(kwargs)} is not allowed: "
            f"{TASK_CALLBACK} takes (job_id: str, status: one of {', '.join(CALLBACK_ENDS)})",
            "args",
        )
    check_job_id(args[0])  # InvalidJobError naming job_id


ARGUMENT_CHECKS: Mapping[str, ArgumentCheck] = {
    TASK_GENERATE: check_generate,
    TASK_CALLBACK: check_callback,
}


def check_headers(headers: Any, served: Mapping[str, ArgumentCheck]) -> tuple[str, str]:
    """The (task name, task id) of a protocol 2 message whose headers Celery can read."""
    if not isinstance(headers, dict) or "task" not in headers:
        raise _refuse(
            f"headers={_shown(headers)} is not allowed: a Celery protocol 2 task message "
            "(headers with 'task' and 'id')",
            "headers",
        )
    name, task_id = headers.get("task"), headers.get("id")
    if not isinstance(name, str) or name not in served:
        raise _refuse(
            f"task={_shown(name)} is not served here: allowed {', '.join(sorted(served))}",
            "task",
        )
    if not isinstance(task_id, str) or not task_id or len(task_id) > 255:
        raise _refuse(f"id={_shown(task_id)} is not allowed: a task id string", "id")
    for key in _OPTIONAL_STR:
        if headers.get(key) is not None and not isinstance(headers[key], str):
            raise _refuse(f"{key}={_shown(headers[key])} is not allowed: a string or null", key)
    retries = headers.get("retries", 0)
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)):
        raise _refuse(f"retries={_shown(retries)} is not allowed: an integer", "retries")
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list) and len(limits) == 2 and all(_a_limit(v) for v in limits)
    ):
        # NaN, a negative or zero limit would "time out" the job at once, with a lying reason.
        raise _refuse(
            f"timelimit={_shown(limits)} is not allowed: [hard, soft] seconds, each a finite "
            "number above 0 or null",
            "timelimit",
        )
    for key in ("eta", "expires"):
        if headers.get(key) is not None:
            try:
                maybe_iso8601(headers[key])
            except (AttributeError, TypeError, ValueError):
                raise _refuse(
                    f"{key}={_shown(headers[key])} is not allowed: an ISO 8601 time", key
                ) from None
    return name, task_id


def _a_limit(value: Any) -> bool:
    """Whether `value` may be one of a message's time limits: null, or seconds above 0."""
    if value is None:
        return True
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def capped_timelimit(limits: Any, hard_cap: float | None, soft_cap: float | None) -> Any:
    """A checked `timelimit` header ([hard, soft], celery/worker/request.py: `time_limit,
    soft_time_limit = self.time_limits`) with neither limit above this worker's own: a message
    asking for a billion seconds gets the worker's limits (null keeps the task's default)."""
    if not limits:
        return limits
    hard, soft = limits
    return [
        min(hard, hard_cap) if hard is not None and hard_cap else hard,
        min(soft, soft_cap) if soft is not None and soft_cap else soft,
    ]


def check_body(payload: Any) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) of a protocol 2 body [args, kwargs, embed] with nothing chained."""
    if not isinstance(payload, list) or len(payload) != 3:
        raise _refuse(
            f"body={_shown(payload)} is not allowed: [args, kwargs, embed] (Celery protocol 2)",
            "body",
        )
    args, kwargs, embed = payload
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(embed, dict):
        raise _refuse(
            f"body={_shown(payload)} is not allowed: args a list, kwargs and embed objects",
            "body",
        )
    chained = {k: v for k, v in embed.items() if k not in _EMBED_KEYS or v is not None}
    if chained:
        raise _refuse(
            f"embed={_shown(chained)} is not allowed: svdq jobs carry no callbacks, "
            "errbacks, chains or chords (all null)",
            "embed",
        )
    return args, kwargs


def check_message(message: Any, served: Mapping[str, ArgumentCheck]) -> None:
    """Raise InvalidJobError naming what this worker cannot take in `message` (a kombu
    Message); return when Celery can read it and the served task's arguments are right."""
    size = len(message.body or b"")
    if size > MAX_MESSAGE_BYTES:
        raise _refuse(
            f"the body is {size} bytes: allowed up to MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}",
            "body",
        )
    name, task_id = check_headers(message.headers, served)
    try:
        payload = message.decode()  # kombu: only accept_content (JSON); cached for Celery
    except Exception as exc:  # DecodeError, ContentDisallowed, anything a codec raises
        raise _refuse(
            f"the body could not be read ({type(exc).__name__}: {exc}); allowed: JSON "
            f"(content type {message.content_type!r})",
            "body",
        ) from None
    args, kwargs = check_body(payload)
    served[name](task_id, args, kwargs)


def set_aside(redis: Any, message: Any, reason: str, worker: str, cap: int) -> str:
    """Put `message` on the dead-letter list under a key of its own; return that key."""
    body = message.body or b""
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
    headers = message.headers if isinstance(message.headers, dict) else {}
    delivery = message.delivery_info or {}
    return _record(
        redis,
        cap,
        raw,
        repr(headers).encode(),
        f"message set aside unread: {reason}",
        worker,
        task=_shown(headers.get("task"), 200),
        claimed_id=_shown(headers.get("id"), 200),
        queue=delivery.get("routing_key"),
        content_type=message.content_type,
    )


def set_aside_raw(redis: Any, raw: str, reason: str, worker: str, cap: int) -> str:
    """Record an item that never became a message (worker/brokerguard.py); return its key.
    An item whose text could not be kept (`raw` empty) gets a key of its own each time."""
    data = raw.encode("utf-8", "replace")
    salt = b"" if raw else f"{reason}@{time.time()}".encode()
    return _record(redis, cap, data, salt, f"queue item set aside unread: {reason}", worker)


def _record(
    redis: Any, cap: int, raw: bytes, salt: bytes, reason: str, worker: str, **details: Any
) -> str:
    """The dead-letter entry of something set aside unread (body cut short), among at most
    `cap` such entries (worker/deadletter.py); return its key."""
    key = SET_ASIDE_PREFIX + hashlib.sha256(raw + salt).hexdigest()[:20]
    record = {
        "job_id": key,
        "kind": "message",
        "reason": reason,
        **details,
        "body": raw[:KEPT_BODY_CHARS].decode("utf-8", "replace"),
        "body_bytes": len(raw),
        "worker": worker,
        "dead_at": time.time(),
        "attempts": [],
    }
    dropped = deadletter.keep_message(redis, key, record, cap)
    if dropped:
        log.warning(
            "the dead-letter list holds %d unreadable messages (SVDQ_DEAD_LETTER_MAX): "
            "dropped the %d oldest",
            cap,
            dropped,
        )
    return key


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer with svdq's intake in front of its task handler."""

    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], Any]:
        celery_handler = super().create_task_handler(promise)
        served = {n: c for n, c in ARGUMENT_CHECKS.items() if n in self.app.tasks}
        keep_raising = tuple(self.connection_errors) + tuple(self.channel_errors)
        hard_cap, soft_cap = self.app.conf.task_time_limit, self.app.conf.task_soft_time_limit

        def on_task_received(message: Any) -> Any:
            try:
                check_message(message, served)
            except InvalidJobError as exc:
                return self._set_aside(message, str(exc))
            if message.headers.get("timelimit"):  # Request reads message.headers.copy()
                message.headers["timelimit"] = capped_timelimit(
                    message.headers["timelimit"], hard_cap, soft_cap
                )
            try:
                return celery_handler(message)
            except keep_raising:
                raise  # the consumer reconnects; the message is delivered again
            except Exception as exc:
                if message.acknowledged:
                    log.exception("a message was taken, then Celery failed: %s", exc)
                    return None
                return self._set_aside(message, f"Celery could not take it: {exc!r}"[:500])

        return on_task_received

    def _set_aside(self, message: Any, reason: str) -> None:
        cap = deadletter.cap_of(self.app.conf.broker_transport_options)
        key = set_aside(self.app.backend.client, message, reason, self.hostname or "worker", cap)
        message.ack()
        log.error(
            "set aside a message from queue %s as %s on the dead-letter list: %s",
            (message.delivery_info or {}).get("routing_key"),
            key,
            reason,
        )
