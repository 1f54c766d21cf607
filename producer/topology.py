"""What `svdq doctor` says about where the Redis data lives: the master, its replicas and
whether they are connected, and, with Sentinel, what the sentinels agree on.

Two sources, because each sees what the other cannot: the master's `INFO replication` lists
the replicas connected to it now (`slave0:ip=...,port=...,state=online,offset=...,lag=0`),
and the sentinels (`SENTINEL MASTERS`, `SENTINEL REPLICAS <name>`) say which server they will
promote from, and how many of them are up to vote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from svdq.shared.settings import Settings


@dataclass(frozen=True)
class Finding:
    """One line of `svdq doctor`: level (ok, warn, unsafe), what was checked, what was found."""

    level: str
    check: str
    detail: str


def replicas_of(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The replicas in a master's INFO replication (redis-py parses each slaveN field into
    a dict: ip, port, state, offset, lag)."""
    return [v for k, v in sorted(info.items()) if k.startswith("slave") and isinstance(v, dict)]


def check_replication(redis: Any, settings: Settings) -> list[Finding]:
    """The master's own view: its role and its connected replicas, against
    SVDQ_REDIS_MIN_REPLICAS."""
    info = redis.info("replication")
    role = info.get("role")
    if role != "master":
        return [Finding("unsafe", "redis role", f"svdq's Redis answers as {role}, not master")]
    replicas = replicas_of(info)
    online = [r for r in replicas if r.get("state") == "online"]
    described = ", ".join(
        f"{r.get('ip')}:{r.get('port')} {r.get('state')} lag {r.get('lag')} s" for r in replicas
    )
    wanted = settings.redis_min_replicas
    if wanted and len(online) < wanted:
        return [
            Finding(
                "unsafe",
                "redis replicas",
                f"{len(online)} replica(s) online ({described or 'none'}) but "
                f"SVDQ_REDIS_MIN_REPLICAS={wanted}: every submit will fail",
            )
        ]
    if not replicas:
        level = "warn" if settings.redis_url.startswith("sentinel://") else "ok"
        return [Finding(level, "redis replicas", "none connected: a failover has nowhere to go")]
    level = "ok" if len(online) == len(replicas) else "warn"
    return [Finding(level, "redis replicas", f"{len(online)} online: {described}")]


def _refused_login(exc: Exception) -> bool:
    """Whether a sentinel turned the connection away for its password (redis-py raises
    AuthenticationError for NOAUTH, WRONGPASS and "invalid password" alike)."""
    import redis

    return isinstance(exc, redis.exceptions.AuthenticationError)


def password_hint(settings: Settings) -> str:
    """What to do when the sentinels refuse svdq's login. The password on SVDQ_REDIS_URL is
    the master's and is never sent to a sentinel; the sentinels' own (`requirepass` in
    sentinel.conf) is SVDQ_REDIS_SENTINEL_PASSWORD."""
    if settings.redis_sentinel_password:
        return (
            "the sentinels refused SVDQ_REDIS_SENTINEL_PASSWORD: it must be their own "
            "password (requirepass in sentinel.conf), which may differ from the master's"
        )
    return (
        "the sentinels ask for a password: set SVDQ_REDIS_SENTINEL_PASSWORD to their own "
        "(requirepass in sentinel.conf); the password on SVDQ_REDIS_URL is the master's and is "
        "never sent to a sentinel"
    )


def check_sentinels(sentinel: Any, settings: Settings) -> list[Finding]:
    """What each sentinel says of the master: its address, whether they agree, how many
    sentinels each one sees, and the replicas they know of (asked of each sentinel that
    answered, in turn, until one lists them: the first may be the one that is down)."""
    name = settings.redis_master_name
    answers, errors, refused = [], [], False
    for node in sentinel.sentinels:
        where = "{host}:{port}".format_map(node.connection_pool.connection_kwargs)
        try:
            state = node.sentinel_master(name)
        except Exception as exc:  # down, refused the password, or does not know the name
            errors.append(f"{where}: {type(exc).__name__}: {exc}")
            refused = refused or _refused_login(exc)
            continue
        answers.append((where, state, node))
    hint = f" ({password_hint(settings)})" if refused else ""
    if not answers:
        detail = "no sentinel answered: " + "; ".join(errors) + hint
        return [Finding("unsafe", "sentinels", detail)]
    masters = {f"{s['ip']}:{s['port']}" for _, s, _ in answers}
    out = []
    if len(masters) != 1:
        out.append(Finding("unsafe", "sentinel master", f"sentinels disagree: {sorted(masters)}"))
    else:
        quorum = answers[0][1].get("quorum")
        level = "ok" if not errors else "warn"
        detail = (
            f"{name} at {masters.pop()} ({len(answers)} of {len(sentinel.sentinels)} "
            f"sentinel(s) answer, quorum {quorum})"
        )
        out.append(
            Finding(level, "sentinel master", detail + "".join(f"; {e}" for e in errors) + hint)
        )
    out.append(_sentinel_replicas([node for _, _, node in answers], name))
    return out


def _sentinel_replicas(nodes: list[Any], name: str) -> Finding:
    """The replicas the first sentinel to answer knows of, with their state."""
    failures = []
    for node in nodes:
        try:
            known = node.sentinel_slaves(name)
        except Exception as exc:  # it answered a moment ago; the next one may still
            where = "{host}:{port}".format_map(node.connection_pool.connection_kwargs)
            failures.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        if not known:
            return Finding("warn", "sentinel replicas", "none known: a failover has nowhere to go")
        listed = ", ".join(
            f"{r['ip']}:{r['port']} {'down' if r['is_sdown'] or r['is_odown'] else 'up'}"
            f" link {r.get('master-link-status', '?')}"
            for r in known
        )
        down = any(r["is_sdown"] or r["is_odown"] for r in known)
        return Finding("warn" if down else "ok", "sentinel replicas", listed)
    return Finding("warn", "sentinel replicas", "no sentinel listed them: " + "; ".join(failures))
