"""The Redis transport a worker consumes with: kombu's own, except that an item on a queue's
list that is not a kombu message at all (not JSON, or JSON without kombu's envelope) is set
aside on the dead-letter list instead of stopping the worker.

Why. worker/intake.py checks every message Celery receives, but an item pushed onto a queue's
list by hand (LPUSH svdq.tiny garbage) never becomes a message. kombu 5.7's Redis channel
(kombu/transport/redis.py, Channel._brpop_read) pops it and decodes it with no guard:

        self.connection._deliver(loads(bytes_to_str(item)), dest)

and its consumer callback (kombu/transport/virtual/base.py, Channel.basic_consume) builds the
message with none either:

        message = self.Message(raw_message, channel=self)

so a JSONDecodeError, or a KeyError for a missing 'properties', leaves the worker's main
process: "Unrecoverable error", the worker exits (the item is gone by then: it was popped and
never reached the unacked hash, so the next worker does not die of it too, but every such
item costs a worker restart). So does anything else kombu trips on while it builds the
message: JSON nested 200 000 deep (RecursionError in `loads`), a body_encoding it has no codec
for (`self.codecs.get(encoding).decode(body)` in Channel.decode_body: AttributeError on None,
or on an int's missing .lower()), a delivery_tag that cannot be a dict key (the QoS keeps
`self._delivered[delivery_tag] = message`: TypeError), a delivery_info that is not an object
(the Redis QoS.append reads `delivery['exchange'], delivery['routing_key']`).

Here the channel's BRPOP handler (Channel.handlers['BRPOP'], called by
MultiChannelPoller.on_readable) is wrapped: an item whose envelope is not what kombu's
publisher writes is refused before kombu reads it (`_envelope_problem`), and any other error
while the item becomes a message is caught too; either way the item is recorded and dropped,
and the worker reads the next one. Lost connections (the channel's connection and channel
errors) and kombu's own `Empty` still propagate as before.

A compressed message (a `compression` header) is refused here too, unread: kombu would inflate
it in the worker's main process while building the message (kombu/message.py), before
worker/intake.py could look at its size: a zip bomb.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
from collections.abc import Callable
from queue import Empty
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Channel as VirtualChannel
from kombu.transport.virtual import Message as VirtualMessage

from svdq.shared import replication
from svdq.shared.celery_app import make_celery
from svdq.shared.errors import InvalidJobError
from svdq.shared.settings import Settings
from svdq.worker import deadletter
from svdq.worker.intake import KEPT_BODY_CHARS, set_aside_raw

log = logging.getLogger("svdq.worker")


class NotAMessage(InvalidJobError):
    """Raised when an item on a queue's list is JSON but not a kombu message envelope."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message, field="envelope")
        self.raw = raw

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.raw))


class CheckedMessage(VirtualMessage):  # type: ignore[misc]
    """kombu's message, refusing an envelope it could not read, with the raw item kept."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        problem = _envelope_problem(payload, getattr(channel, "codecs", VirtualChannel.codecs))
        if problem:
            raise NotAMessage(problem, json.dumps(payload, default=repr)[:KEPT_BODY_CHARS])
        super().__init__(payload, channel=channel, **kwargs)


def _envelope_problem(payload: Any, codecs: Any = ()) -> str | None:
    """What is wrong with a raw item's envelope as kombu's virtual transport reads it: what
    kombu's own publisher writes (kombu/transport/virtual/base.py, Channel.basic_publish and
    prepare_message) is the only shape allowed. `codecs`: the channel's body codecs."""
    if not isinstance(payload, dict):
        return f"an item of type {type(payload).__name__} is not a message: a JSON object"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return f"properties={properties!r:.80} is not allowed: an object with a delivery_tag"
    tag = properties["delivery_tag"]
    if not isinstance(tag, str):
        return f"delivery_tag={tag!r:.80} is not allowed: a string (kombu writes a uuid)"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return f"headers={headers!r:.80} is not allowed: an object"
    if headers and headers.get("compression") is not None:
        # kombu/message.py, Message.__init__, inflates it as the message is built, before any
        # size check: `body = decompress(body, compression)` (zlib, bzip2, lzma, zstd). 177
        # bytes of bzip2 are 200 MiB there. svdq never compresses: refused unread.
        return (
            f"compression={headers['compression']!r:.80} is not allowed: svdq messages are "
            "never compressed (none)"
        )
    for key in ("body", "content-type", "content-encoding"):
        value = payload.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key}={value!r:.80} is not allowed: a string"
    encoding = properties.get("body_encoding")
    allowed = sorted({"utf-8", *codecs})
    if encoding is not None and (
        not isinstance(encoding, str) or (encoding.lower() != "utf-8" and encoding not in codecs)
    ):
        return f"body_encoding={encoding!r:.80} is not allowed: one of {', '.join(allowed)}"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(
        isinstance(info.get(k), str) for k in ("exchange", "routing_key")
    ):
        return (
            f"delivery_info={info!r:.80} is not allowed: an object with string exchange and "
            "routing_key"
        )
    return None


def _guarded(channel: Any, read: Callable[..., Any], **options: Any) -> Any:
    """`read` (the channel's _brpop_read), with an item that could not become a message set
    aside. A lost connection and kombu's Empty (nothing to read) go on as before."""
    transport = channel.connection
    keep_raising = (Empty, *transport.connection_errors, *transport.channel_errors)
    try:
        return read(**options)
    except keep_raising:
        raise
    except NotAMessage as exc:
        reason, raw = str(exc), exc.raw
    except json.JSONDecodeError as exc:  # keeps the text it could not read
        reason, raw = f"not JSON ({exc})", str(exc.doc)[:KEPT_BODY_CHARS]
    except Exception as exc:  # RecursionError in loads, anything kombu trips on: item not kept
        reason, raw = f"kombu could not read it ({type(exc).__name__}: {exc})"[:500], ""
    try:
        cap = deadletter.cap_of(channel.connection.client.transport_options)
        with channel.conn_or_acquire() as client:
            key = set_aside_raw(client, raw, reason, socket.gethostname(), cap)
    except Exception as exc:
        log.error("dropped an unreadable queue item (%s); could not record it: %s", reason, exc)
        return True
    log.error("set aside an unreadable queue item as %s on the dead-letter list: %s", key, reason)
    return True


class _Guard:
    Message = CheckedMessage

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        handlers = self.handlers  # type: ignore[attr-defined]
        handlers["BRPOP"] = functools.partial(_guarded, self, handlers["BRPOP"])


class Channel(_Guard, replication.Channel):  # type: ignore[misc]
    """svdq's Redis channel (shared/replication.py) with the guard."""


class SentinelChannel(_Guard, replication.SentinelChannel):  # type: ignore[misc]
    """svdq's Sentinel channel (shared/replication.py) with the guard."""


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


def transport_for(broker_url: str) -> str | None:
    """The guarded transport for `broker_url` (Celery's broker_transport), or None to keep
    kombu's choice (a unix:// socket, say)."""
    return replication.transport_path(__name__, broker_url)


def worker_app(settings: Settings) -> Celery:
    """The Celery app a svdq worker process serves (GPU worker or callbacks), guarded."""
    app = make_celery(settings)
    guard(app, settings.redis_url, settings.dead_letter_max)
    return app


def guard(app: Any, broker_url: str, dead_letter_max: int) -> None:
    """Make `app`'s workers proof against what arrives from outside: every message is checked
    before Celery reads it and one it cannot take is set aside (worker/intake.py, chosen with
    Celery's `worker_consumer`), and so is a queue item that is not a message at all (this
    module's transport), keeping at most `dead_letter_max` of them (worker/deadletter.py).
    Both svdq Celery apps (GPU worker, callbacks) call it."""
    app.conf.worker_consumer = "svdq.worker.intake:Consumer"
    app.conf.broker_transport = transport_for(broker_url)
    options = dict(app.conf.broker_transport_options or {})
    app.conf.broker_transport_options = {**options, deadletter.CAP_OPTION: dead_letter_max}
