"""Every Redis connection svdq makes starts here: one direct server (redis://, rediss://,
unix://) or a master found through Redis Sentinel (sentinel://h1:26379;sentinel://h2:26379).

Two kinds of client come out of it, both configured from the same Settings:

- `redis_client(settings)`: a redis-py client for svdq's own reads and writes (`svdq stats`,
  the exporter, `svdq doctor`, the reachability check);
- `celery_redis_conf(settings)`: the broker and result-backend configuration for Celery (and so
  for the producer, the worker's leases, heartbeat and progress, which all use the result
  backend's client, `app.backend.client`, the callbacks process and Flower).

With Sentinel, both are clients of `Sentinel(...).master_for(name)`: their connections are
`SentinelManagedConnection`s that ask the sentinels for the master each time they connect
(redis/sentinel.py, `SentinelManagedConnection._connect_retry`:
`self.connect_to(self.connection_pool.get_master_address())`), and a connection still
talking to a demoted master turns its READONLY error into a ConnectionError and disconnects
(`read_response`: "except ReadOnlyError: if self.connection_pool.is_master: ...
self.disconnect(); raise ConnectionError('The previous master is now a slave')"), so the
next command reconnects to whichever server the sentinels now name. Nothing here needs to
watch for a failover.

Passwords. The first sentinel:// URL's password is the master's (kombu's
`SentinelChannel._sentinel_managed_pool` passes `{'username', 'password'}` of the URL to
`master_for`; Celery's `SentinelBackend._params_from_url` takes "db/password/username" from
`connparams['hosts'][0]`). The sentinels' own password (`requirepass` in sentinel.conf) is
SVDQ_REDIS_SENTINEL_PASSWORD, handed to both as the `sentinel_kwargs` transport option (the
arguments redis-py uses for connections to the sentinels only: "sentinel_kwargs is a
dictionary of connection arguments used when connecting to sentinel instances").

TLS. `ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile` on the first
sentinel:// URL's query (as on a rediss:// URL today) turn TLS on for the master and the
sentinels alike; the URL handed to Celery carries no query, the options travel as
`broker_use_ssl` / `redis_backend_use_ssl` (kombu then uses `connection_class_ssl =
SentinelManagedSSLConnection`, Celery's SentinelBackend the same).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from svdq.shared.redisurl import cert_reqs
from svdq.shared.settings import Settings

_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_SSL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_TLS_KEYS = ("ssl_cert_reqs", *_SSL_FILES)


def redis_tls_options(url: str) -> dict[str, Any] | None:
    """TLS settings for a rediss:// URL, or a sentinel:// list whose first URL names TLS
    options (None: no TLS), verifying the server by default.

    Celery's result backend refuses a rediss:// URL without `ssl_cert_reqs`, and the broker
    reads TLS settings only from `broker_use_ssl`; both get them from here. The URL's own
    `ssl_cert_reqs` (required/optional/none) and `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`
    query parameters are honoured, e.g. rediss://:PASSWORD@host:6380/0?ssl_ca_certs=/ca.pem
    """
    parts = urlsplit(url.split(";", 1)[0])
    query = dict(parse_qsl(parts.query))
    if parts.scheme != "rediss" and not (
        parts.scheme == "sentinel" and any(k in query for k in _TLS_KEYS)
    ):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[cert_reqs(url)]}
    options.update({k: query[k] for k in _SSL_FILES if k in query})
    return options


@dataclass(frozen=True)
class SentinelTarget:
    """A master found through sentinels: their addresses, and how to log in to the master."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    tls: dict[str, Any] | None

    def sentinel_kwargs(self, timeout: float | None = None) -> dict[str, Any]:
        """Connection arguments for the sentinels themselves (not the master)."""
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # No retries on one sentinel: the next sentinel is the retry. redis-py's default
            # (redis/client.py, Redis.__init__: "retry: Retry = Retry(backoff=
            # ExponentialWithJitterBackoff(base=DEFAULT_RETRY_BASE, cap=DEFAULT_RETRY_CAP),
            # retries=DEFAULT_RETRY_COUNT)") would ask a hung one 4 times, with backoff.
            kwargs.update(
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        if self.tls:
            kwargs.update(ssl=True, **self.tls)
        return kwargs

    def celery_url(self) -> str:
        """The URL list Celery and kombu read: sentinel://[:pw@]h:p/db;sentinel://h:p/db
        (no query: TLS goes in broker_use_ssl).

        The login is percent-encoded again (it was decoded by sentinel_target), since both
        readers decode it: kombu's `url_to_parts` ("unquote(parts.password) if parts.password
        else None") and Celery's RedisBackend._params_from_url, which uses that same
        kombu.utils.url._parse_url. An IPv6 host goes back in brackets: urlsplit's hostname
        drops them, and "sentinel://::1:26379" is no URL either of them can split."""
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        hosts = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels]
        urls = [f"sentinel://{auth}{hosts[0]}/{self.db}"]
        urls += [f"sentinel://{h}/{self.db}" for h in hosts[1:]]
        return ";".join(urls)


def sentinel_target(settings: Settings) -> SentinelTarget | None:
    """The Sentinel setup SVDQ_REDIS_URL names, or None for a direct redis:// server.

    Settings has checked the URL list already (shared/settings._redis_url)."""
    url = settings.redis_url
    if not url.startswith("sentinel://"):
        return None
    hosts, first = [], urlsplit(url.split(";", 1)[0])
    for part in url.split(";"):
        p = urlsplit(part.strip())
        hosts.append((p.hostname or "127.0.0.1", p.port or 26379))
    path = first.path.strip("/")
    return SentinelTarget(
        sentinels=tuple(hosts),
        master_name=settings.redis_master_name,
        db=int(path) if path else 0,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        sentinel_password=settings.redis_sentinel_password or None,
        tls=redis_tls_options(url),
    )


def redis_client(settings: Settings, timeout: float | None = 10) -> Any:
    """A redis-py client of svdq's Redis: the server itself, or the master the sentinels name
    (re-discovered on every reconnect, so a failover needs nothing from the caller).

    `timeout` bounds connecting and every command, in seconds (None: no bound)."""
    import redis

    target = sentinel_target(settings)
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if target is None:
        options.update(redis_tls_options(settings.redis_url) or {})
        return redis.Redis.from_url(settings.redis_url, **options)
    if target.tls:
        options.update(ssl=True, **target.tls)
    master = dict(username=target.username, password=target.password, db=target.db, **options)
    sentinel = _shared_sentinel(target, settings.redis_sentinel_timeout, master)
    return sentinel.master_for(target.master_name)


# One redis-py Sentinel per process and configuration, shared by every client svdq makes
# here: Sentinel.discover_master moves the sentinel that answered to the front ("Put this
# sentinel at the top of the list: self.sentinels[0], self.sentinels[sentinel_no] = sentinel,
# self.sentinels[0]"), so a sentinel that hangs costs a process one SVDQ_REDIS_SENTINEL_TIMEOUT
# once, not on every client and every reconnect (each SentinelManagedConnection asks
# `get_master_address` -> discover_master when it connects). redis-py's pools notice a fork
# (ConnectionPool._checkpid), so a forked pool child reconnects on its own sockets.
_SENTINELS: dict[Any, Any] = {}


def _shared_sentinel(target: SentinelTarget, timeout: float, master: dict[str, Any]) -> Any:
    from redis.sentinel import Sentinel

    key = repr((target, timeout, sorted(master.items())))  # tls is a dict: not hashable
    sentinel = _SENTINELS.get(key)
    if sentinel is None:
        sentinel = _SENTINELS[key] = Sentinel(
            list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(timeout), **master
        )
    return sentinel


def sentinel_manager(settings: Settings) -> Any:
    """A redis-py Sentinel for asking the sentinels about the topology (`svdq doctor`), or
    None without Sentinel; each sentinel may take SVDQ_REDIS_SENTINEL_TIMEOUT to answer."""
    target = sentinel_target(settings)
    if target is None:
        return None
    return _shared_sentinel(target, settings.redis_sentinel_timeout, {})


def celery_redis_conf(settings: Settings) -> dict[str, Any]:
    """Celery settings that say where Redis is: broker_url and result_backend, plus for
    Sentinel the master's name and the sentinels' login (both transport options), plus TLS.

    The caller merges `broker_transport_options` / `result_backend_transport_options` with
    its own."""
    target = sentinel_target(settings)
    tls = redis_tls_options(settings.redis_url)
    conf: dict[str, Any] = {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": {},
        "result_backend_transport_options": {},
    }
    if target is not None:
        url = target.celery_url()
        # Bounded by SVDQ_REDIS_SENTINEL_TIMEOUT, so one sentinel that stopped answering
        # costs a discovery that much, then the next is asked. Both readers hand the option
        # to redis-py as is and nothing else bounds the sentinels' sockets: kombu's
        # SentinelChannel._sentinel_managed_pool builds "sentinel.Sentinel(sentinels, ...,
        # sentinel_kwargs=getattr(self, 'sentinel_kwargs', None), **additional_params)" (the
        # master's connparams, its socket_timeout included, go only to master connections),
        # and Celery's SentinelBackend._get_sentinel_instance "sentinel_kwargs =
        # self._transport_options.get('sentinel_kwargs', {})"; redis-py's Sentinel uses
        # them for its connections to the sentinels ("sentinel_kwargs ... used when
        # connecting to sentinel instances"), with no timeout when they name none.
        options = {
            "master_name": target.master_name,
            "sentinel_kwargs": target.sentinel_kwargs(settings.redis_sentinel_timeout),
        }
        conf.update(
            broker_url=url,
            result_backend=url,
            broker_transport_options=dict(options),
            result_backend_transport_options=dict(options),
        )
    if tls is not None:
        conf.update(broker_use_ssl=tls, redis_backend_use_ssl=tls)
    return conf
