"""`svdq doctor`: check a deployment's settings against the delivery and security promises.

Each finding is ok, warn (worth a look) or unsafe (a promise is broken: a job can be lost, run
twice, or a surface is open). Exit 1 when anything is unsafe.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from svdq.producer.topology import Finding, check_replication, check_sentinels
from svdq.shared.limits import MAX_GENERATIONS, time_limits
from svdq.shared.redisurl import redact_url
from svdq.shared.settings import Settings
from svdq.shared.variants import VARIANTS


def check_settings(settings: Settings, env: Mapping[str, str]) -> list[Finding]:
    """The checks that need no server: limits, leases, serializer, auth in the URLs."""
    from svdq.shared.celery_app import make_celery

    out: list[Finding] = []
    vt = settings.visibility_timeout
    worst = max(time_limits(v, settings, MAX_GENERATIONS)[1] for v in VARIANTS)
    if worst >= vt:
        out.append(Finding("unsafe", "time limits", f"hard limit {worst}s ≥ visibility {vt}s"))
    else:
        out.append(Finding("ok", "time limits", f"longest hard limit {worst}s < visibility {vt}s"))
    if settings.lease_ttl >= vt:
        out.append(
            Finding(
                "unsafe",
                "lease",
                f"SVDQ_LEASE_TTL={settings.lease_ttl} ≥ SVDQ_VISIBILITY_TIMEOUT={vt}: a dead "
                "worker's lease outlives the redelivery of its job",
            )
        )
    else:
        out.append(Finding("ok", "lease", f"lease {settings.lease_ttl}s, renewed while running"))
    conf = make_celery(settings).conf
    if list(conf.accept_content) != ["json"] or conf.task_serializer != "json":
        out.append(
            Finding("unsafe", "serializer", f"accept_content={conf.accept_content}: JSON only")
        )
    else:
        out.append(Finding("ok", "serializer", "JSON only; pickled messages are refused"))
    if not (conf.task_acks_late and conf.task_reject_on_worker_lost):
        out.append(Finding("unsafe", "acks", "acks_late and reject_on_worker_lost must be on"))
    url = urlsplit(settings.redis_url)
    loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
    if url.scheme == "unix" or url.password:
        out.append(Finding("ok", "redis auth", f"{redact_url(settings.redis_url)}"))
    else:
        out.append(
            Finding(
                "warn" if loopback else "unsafe",
                "redis auth",
                f"{redact_url(settings.redis_url)} has no password: anyone who reaches it can "
                "push jobs; use redis://:PASSWORD@host or rediss://",
            )
        )
    if url.scheme == "redis" and not loopback:
        out.append(Finding("warn", "redis tls", "plain redis:// across the network; rediss://"))
    if not (env.get("FLOWER_BASIC_AUTH") or env.get("FLOWER_AUTH")):
        out.append(
            Finding(
                "warn",
                "flower auth",
                "FLOWER_BASIC_AUTH / FLOWER_AUTH unset: never expose Flower without them",
            )
        )
    if settings.allow_urls:
        out.append(Finding("warn", "urls", "SVDQ_ALLOW_URLS=1: workers fetch https inputs"))
    return out


def check_redis(redis: Any) -> list[Finding]:
    """The checks that ask Redis itself: AOF persistence, whether CONFIG is open."""
    try:
        aof = redis.config_get("appendonly").get("appendonly")
    except Exception as exc:  # CONFIG is often disabled on managed Redis; say we could not tell
        return [Finding("warn", "redis aof", f"could not read CONFIG ({type(exc).__name__})")]
    if aof != "yes":
        return [
            Finding(
                "unsafe",
                "redis aof",
                "appendonly=no: queued jobs are lost when Redis restarts; set appendonly yes",
            )
        ]
    return [Finding("ok", "redis aof", "appendonly=yes")]


def redis_warnings(settings: Settings) -> list[str]:
    """What `svdq worker` says at start about the Redis it will use (AOF off: a restart loses
    every queued job): check_redis's findings that are not ok, one line each. An unreachable
    Redis says nothing here: the worker's own start-up check reports that."""
    import redis as redis_lib

    from svdq.shared.redisconn import redis_client

    client = redis_client(settings, timeout=3)
    try:
        findings = check_redis(client)
    except redis_lib.RedisError:
        return []
    finally:
        client.close()
    return [f"{f.level.upper()} {f.check}: {f.detail}" for f in findings if f.level != "ok"]


def run_doctor(as_json: bool = False, env: Mapping[str, str] | None = None) -> int:
    """Print the findings; 1 when anything is unsafe, else 0."""
    import redis as redis_lib

    from svdq.shared.redisconn import redis_client, sentinel_manager

    env = os.environ if env is None else env
    settings = Settings.from_env(env)
    findings = check_settings(settings, env)
    sentinel = sentinel_manager(settings)
    if sentinel is not None:
        findings += check_sentinels(sentinel, settings)
    client = redis_client(settings, timeout=3)
    try:
        client.ping()
        findings += check_redis(client)
        findings += check_replication(client, settings)
    except redis_lib.RedisError as exc:
        findings.append(Finding("unsafe", "redis", f"cannot reach Redis: {exc}"))
    for f in findings:
        if as_json:
            print(json.dumps(asdict(f)))
        else:
            print(f"{f.level.upper():6} {f.check}: {f.detail}")
    unsafe = sum(f.level == "unsafe" for f in findings)
    if unsafe:
        print(f"svdq doctor: {unsafe} unsafe setting(s)", file=sys.stderr)
    return 1 if unsafe else 0
