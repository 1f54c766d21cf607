"""SVDQ_REDIS_URL's checks: one redis://, rediss:// or unix:// URL, or a ';' list of
sentinel:// URLs (the master's login and DB on the first), and `redact_url` for messages."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from svdq.shared.errors import ConfigError

# The `ssl_cert_reqs` values a URL may name (shared/redisconn.py maps them to ssl's constants):
# the three every client of the URL reads. redis-py's from_url lets the query win over any
# argument and knows only these (redis/connection.py, SSLConnection.__init__: `CERT_REQS =
# {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}`,
# anything else "Invalid SSL Certificate Requirements Flag"), and Celery's result backend
# accepts them besides CERT_REQUIRED/CERT_OPTIONAL/CERT_NONE (celery/backends/redis.py,
# `ssl_string_to_constant`).
CERT_REQS = ("required", "optional", "none")


def cert_reqs(value: str) -> str:
    """The `ssl_cert_reqs` of a URL (or of the first of a ';' list); "required" when absent.
    A value svdq does not know is refused at start, not read as "required" (or left for one
    client to reject at its first connection while another accepts it)."""
    query = dict(parse_qsl(urlsplit(value.split(";", 1)[0].strip()).query, keep_blank_values=True))
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs not in CERT_REQS:
        raise ConfigError(
            f"SVDQ_REDIS_URL has ssl_cert_reqs={reqs!r}, which is not allowed: one of "
            f"{', '.join(CERT_REQS)} (e.g. rediss://host:6380/0?ssl_cert_reqs=required)"
        )
    return reqs


def checked_redis_url(value: str) -> str:
    cert_reqs(value)
    if value.startswith("sentinel://"):
        return _sentinel_urls(value)
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"SVDQ_REDIS_URL={redact_url(value)!r} is not allowed: a redis://, rediss:// or "
            "unix:// URL, e.g. redis://:password@host:6379/0, or sentinels as "
            "sentinel://host1:26379;sentinel://host2:26379"
        )
    if ";" in value:  # kombu would read a failover list, svdq's own client only the first
        raise ConfigError(
            f"SVDQ_REDIS_URL={redact_url(value)!r} is not allowed: a ';' list is only for "
            "sentinels (sentinel://host1:26379/0;sentinel://host2:26379); a redis://, "
            "rediss:// or unix:// URL names one server"
        )
    return value


def _sentinel_urls(value: str) -> str:
    """A ';'-separated list of sentinel://host:port[/db] URLs, each with a host; the master's
    login and DB are the first entry's (what kombu and Celery read), so a later entry may
    repeat them but not name others."""
    first = urlsplit(value.split(";", 1)[0].strip())
    for part in value.split(";"):
        problem = None
        try:
            parsed = urlsplit(part.strip())
            parsed.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError as exc:
            problem = str(exc)
        else:
            if parsed.scheme != "sentinel" or not parsed.hostname:
                problem = "each entry must be sentinel://host:port"
            elif parsed.path.strip("/") and not parsed.path.strip("/").isdigit():
                problem = f"the database {parsed.path!r} is not a number"
            elif (parsed.username or parsed.password) and (
                (parsed.username, parsed.password) != (first.username, first.password)
            ):
                problem = (
                    "a login on a later entry differs from the first's; the master's login "
                    "goes on the first entry only (the sentinels' own password is "
                    "SVDQ_REDIS_SENTINEL_PASSWORD)"
                )
            elif parsed.path.strip("/") not in ("", first.path.strip("/")):
                problem = (
                    f"the database {parsed.path!r} of a later entry differs from the first's "
                    f"({first.path or '/0'!r}); the DB goes on the first entry"
                )
        if problem:
            raise ConfigError(
                f"SVDQ_REDIS_URL={redact_url(value)!r} is not allowed: {problem}; e.g. "
                "sentinel://:MASTER_PASSWORD@host1:26379/0;sentinel://host2:26379 "
                "with SVDQ_REDIS_MASTER_NAME"
            )
    return value


def redact_url(url: str) -> str:
    """The URL (or ';' list of URLs) with any password replaced, for messages and logs."""
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
