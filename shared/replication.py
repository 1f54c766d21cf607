"""SVDQ_REDIS_MIN_REPLICAS: a job counts as queued only once that many replicas hold it.

Redis replicates asynchronously: a master that acknowledged a publish and died before its
replica had it takes the job with it, and a failover then promotes a replica that never saw
it. `WAIT numreplicas timeout` blocks until the replicas acknowledged the writes made *on the
connection that sends it* ("WAIT ... blocks the current client until all the previous write
commands are successfully transferred and acknowledged": the server compares the replicas'
acknowledged offset with the offset of that client's own last write). A WAIT on another
pooled connection, one that wrote nothing, returns at once and proves nothing.

So the WAIT must travel on the very connection the messages went out on, and kombu's normal
path gives no hold on it: `Channel._put` runs `with self.conn_or_acquire() as client:
client.lpush(...)`, and each command takes a connection from the pool and gives it back.
kombu 5.7's publish batches are the way in: inside `producer.batch()`, `Producer.publish`
hands the message to the batch (kombu/messaging.py: "batch = getattr(self._batch_local,
'current', None); if batch is not None: return batch.publish(channel, message, ...)"), the
batch is made by `channel.create_publish_batch(max_size)`, and the channel reports each
message's final Redis commands to it (`_put`: "publish_batch.add('lpush', key,
dumps(message))"). The channels below make a `ReplicatedBatch` instead of kombu's
`PublishBatch`: at flush it takes ONE connection from the channel's pool, sends the buffered
commands and then `WAIT` on it in one round trip, and, while too few replicas answered,
asks `WAIT` again on that same connection (shared/retry.with_retries) before it gives the
connection back. A shortfall after the last try raises `ReplicationShortfall`: the submit
fails, the caller never reports the jobs as queued.

Both producers' publish paths (shared/celery_app.send_job, producer/publish.publish_jobs)
publish inside a batch; with SVDQ_REDIS_MIN_REPLICAS=0 the batch is kombu's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis

from svdq.shared.errors import TransientError
from svdq.shared.retry import with_retries
from svdq.shared.settings import Settings

POLICY_OPTION = "svdq_replicas"  # the broker transport option carrying the policy
WAIT_TRIES = 3
# Seconds a WAIT's reply may take beyond its own timeout (a busy master, the network).
WAIT_READ_MARGIN = 5.0


def read_wait_reply(conn: Any, wait_ms: int) -> int:
    """The reply to a WAIT of `wait_ms` milliseconds sent on redis-py connection `conn`.

    A WAIT holds its reply for up to its timeout by design, and the client's socket timeout
    must not cut it: that would turn "too few replicas" into a broken connection, and a
    submit whose messages may be queued into an error that took none back. So this one read
    waits the WAIT's timeout plus WAIT_READ_MARGIN (never less than the connection's own
    socket timeout; with none, as kombu's channels have by default, it is bounded all the
    same, so a master that dies mid-WAIT is noticed). redis-py lets one read have its own
    timeout and puts the socket's back after it (redis/_parsers/socket.py,
    SocketBuffer._read_from_socket: "if custom_timeout: sock.settimeout(timeout)" ...
    "finally: if custom_timeout: sock.settimeout(self.socket_timeout)")."""
    own = getattr(conn, "socket_timeout", None) or 0.0
    return int(conn.read_response(timeout=max(float(own), wait_ms / 1000 + WAIT_READ_MARGIN)))


class ReplicationShortfall(TransientError):
    """Raised when fewer replicas than SVDQ_REDIS_MIN_REPLICAS acknowledged a submit.

    `consumed`: the task ids whose messages could not be taken back because a worker had
    already taken them off the queue (ReplicatedBatch.flush): those jobs are queued in fact."""

    def __init__(self, message: str, consumed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.consumed = consumed


@dataclass(frozen=True)
class ReplicaPolicy:
    """How many replicas must acknowledge, how long one WAIT waits, and the retry timing."""

    min_replicas: int
    timeout_s: int
    settings: Settings = field(repr=False)  # backoff between tries (shared.retry)

    @classmethod
    def of(cls, settings: Settings) -> ReplicaPolicy | None:
        if settings.redis_min_replicas <= 0:
            return None
        return cls(settings.redis_min_replicas, settings.redis_wait_timeout, settings)

    def shortfall(self, acked: int, what: str) -> str:
        """The error message for `acked` replicas after the last try."""
        return (
            f"SVDQ_REDIS_MIN_REPLICAS={self.min_replicas}: only {acked} replica(s) acknowledged "
            f"{what} within {self.timeout_s} s ({WAIT_TRIES} tries); they are on the master but "
            "a failover now could lose them, so they are not reported as queued. Check that "
            "the replicas are up and connected (`svdq doctor`; INFO replication on the master: "
            "connected_slaves, master_link_status on each replica), raise "
            "SVDQ_REDIS_WAIT_TIMEOUT if they are only slow, or lower SVDQ_REDIS_MIN_REPLICAS"
        )


class ReplicatedBatch:
    """kombu's publish-batch protocol (publish, add, flush, discard, close; see
    kombu.transport.redis.PublishBatch), with WAIT on the publishing connection at flush."""

    def __init__(self, channel: Any, max_size: int, policy: ReplicaPolicy) -> None:
        self.channel = channel
        self.max_size = max_size
        self.policy = policy
        self.acked: int | None = None  # replicas that acknowledged the last flush
        self._commands: list[tuple[Any, ...]] = []
        self._collecting: list[tuple[Any, ...]] | None = None

    def publish(self, message: Any, **kwargs: Any) -> Any:
        """Route one prepared message; its Redis commands are buffered until the flush."""
        commands: list[tuple[Any, ...]] = []
        self._collecting = commands
        try:
            result = self.channel.basic_publish(message, _publish_batch=self, **kwargs)
        finally:
            self._collecting = None
        if self._commands and len(self._commands) + len(commands) > self.max_size:
            self.flush()
        self._commands.extend(commands)
        return result

    def add(self, name: str, *args: Any) -> None:
        """Called by the channel (`_put`, `_put_fanout`) with a message's final command."""
        if self._collecting is None:
            raise RuntimeError("Redis publish command added outside publication")
        self._collecting.append((name.upper(), *args))

    def flush(self) -> None:
        """Send the buffered commands and WAIT on one connection; raise ReplicationShortfall
        when too few replicas acknowledged them after WAIT_TRIES waits."""
        if not self._commands:
            return
        commands, self._commands = self._commands, []
        policy = self.policy
        wait = ("WAIT", policy.min_replicas, policy.timeout_s * 1000)
        pool = self.channel.pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands([*commands, wait]))
            for _ in commands:
                conn.read_response()
            acked = [read_wait_reply(conn, wait[2])]  # try 1: the WAIT sent behind the batch
            calls = [0]

            def attempt() -> None:
                calls[0] += 1
                if calls[0] > 1:  # the same connection: its last write is still this batch's
                    conn.send_command(*wait)
                    acked[0] = read_wait_reply(conn, wait[2])
                if acked[0] < policy.min_replicas:
                    raise ReplicationShortfall(f"{acked[0]} of {policy.min_replicas} replicas")

            if acked[0] < policy.min_replicas:
                try:
                    with_retries(attempt, "WAIT", policy.settings, tries=WAIT_TRIES)
                except TransientError as exc:  # with_retries' "failed N times"
                    jobs = sum(c[0] == "LPUSH" for c in commands)
                    what = f"the {jobs} job message(s) just published"
                    consumed = take_back(conn, commands)
                    message = policy.shortfall(acked[0], what) + _consumed_note(consumed)
                    raise ReplicationShortfall(message, consumed) from exc
            self.acked = acked[0]
        except BaseException:
            conn.disconnect()  # replies may be left unread: never hand this socket on
            raise
        finally:
            pool.release(conn)

    def discard(self) -> None:
        self._commands = []

    def close(self) -> None:
        self._commands = []


def take_back(conn: Any, commands: list[tuple[Any, ...]]) -> tuple[str, ...]:
    """Remove the messages `commands` pushed (LPUSH key body: the exact key, priority list
    included, that kombu's `_put` chose: "pri = self._get_message_priority(message,
    reverse=False); key = self._q_for_pri(queue, pri) ... publish_batch.add('lpush', key,
    dumps(message))") again, on
    the same connection, so a submit that reports "not queued" leaves nothing a worker could
    run later. Returns the task ids whose message was already gone (LREM removed 0): a worker
    took it, so that job is queued in fact and its caller must say so."""
    pushes = [(c[1], c[2]) for c in commands if c[0] == "LPUSH"]
    if not pushes:
        return ()
    conn.send_packed_command(conn.pack_commands([("LREM", k, 1, b) for k, b in pushes]))
    removed = [int(conn.read_response()) for _ in pushes]
    return tuple(_task_id(body) for (_, body), n in zip(pushes, removed, strict=True) if not n)


def _task_id(body: Any) -> str:
    """The Celery task id of a kombu message body (protocol 2 keeps it in headers.id)."""
    try:
        message = json.loads(body)
        return str(message["headers"].get("id") or message["properties"]["correlation_id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return "?"


def _consumed_note(consumed: tuple[str, ...]) -> str:
    if not consumed:
        return "; every message was taken back off the queue"
    return (
        f"; taken back off the queue except {len(consumed)} a worker had already taken "
        f"(queued in fact): {', '.join(consumed[:10])}"
    )


def execute_confirmed(pipe: Any, settings: Settings, what: str) -> list[Any]:
    """Run the commands queued on the redis-py pipeline `pipe` (transaction=False), then a
    WAIT for SVDQ_REDIS_MIN_REPLICAS, on one connection (so the WAIT counts their writes);
    return their raw replies; raise ReplicationShortfall when too few replicas acknowledged.

    For the records that follow a publish (job and batch records): one WAIT of
    SVDQ_REDIS_WAIT_TIMEOUT × WAIT_TRIES, since a second WAIT could only follow on the same
    connection. The commands are sent here rather than by `pipe.execute()` so that the WAIT's
    reply is read with `read_wait_reply`'s timeout: a pipeline reads every reply with the
    client's socket timeout (Celery's result backend client: redis_socket_timeout, 120 s),
    which a long SVDQ_REDIS_WAIT_TIMEOUT would otherwise exceed."""
    policy = ReplicaPolicy.of(settings)
    if policy is None:
        return list(pipe.execute())
    commands = [args for args, _options in pipe.command_stack]
    pipe.reset()
    wait_ms = policy.timeout_s * 1000 * WAIT_TRIES
    pool = pipe.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(
            conn.pack_commands([*commands, ("WAIT", policy.min_replicas, wait_ms)])
        )
        replies = [conn.read_response() for _ in commands]
        acked = read_wait_reply(conn, wait_ms)
    except BaseException:
        conn.disconnect()  # replies may be left unread: never hand this socket on
        raise
    finally:
        pool.release(conn)
    if acked < policy.min_replicas:
        raise ReplicationShortfall(policy.shortfall(acked, what))
    return replies


class _Replicated:
    """A kombu Redis channel whose publish batches WAIT for SVDQ_REDIS_MIN_REPLICAS."""

    from_transport_options: tuple[str, ...] = (
        *kombu_redis.Channel.from_transport_options,
        POLICY_OPTION,
    )
    svdq_replicas: ReplicaPolicy | None = None

    @property
    def supports_batch_publish(self) -> bool:
        # kombu refuses batches when redis-py could replay a pipeline (retry options); the
        # ReplicatedBatch sends on a bare connection, which never replays.
        if self.svdq_replicas is not None:
            return True
        return bool(super().supports_batch_publish)  # type: ignore[misc]

    def create_publish_batch(self, max_size: int) -> Any:
        if self.svdq_replicas is None:
            return super().create_publish_batch(max_size)  # type: ignore[misc]
        return ReplicatedBatch(self, max_size, self.svdq_replicas)


class Channel(_Replicated, kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, replication-aware."""


class SentinelChannel(_Replicated, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """kombu's Sentinel channel, replication-aware."""

    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *kombu_redis.SentinelChannel.from_transport_options,
        POLICY_OPTION,
    )


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


_CLASS_BY_SCHEME = {"redis": "Transport", "rediss": "Transport", "sentinel": "SentinelTransport"}


def transport_path(module: str, broker_url: str) -> str | None:
    """`module`'s transport class for `broker_url`, as Celery's broker_transport wants it
    ("module:Class"), or None to keep kombu's choice (a unix:// socket)."""
    name = _CLASS_BY_SCHEME.get(urlsplit(broker_url).scheme)
    return f"{module}:{name}" if name else None


def transport_for(broker_url: str) -> str | None:
    """svdq's replication-aware transport for `broker_url` (see `transport_path`)."""
    return transport_path(__name__, broker_url)
