"""API tokens: `svdq token create|list|revoke`, and checking the one a request carries.

A token is `svdq_<id>_<secret>`. Redis keeps, under token_key(<id>), the token's name, quota and
the sha256 of the whole token, never the token itself: it is printed once, at creation. A
request's token is found by its id and checked with hmac.compare_digest on the two digests, so
the check takes the same time whichever byte differs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from svdq.shared.constants import TOKENS_KEY, token_key
from svdq.shared.errors import InvalidJobError

PREFIX = "svdq_"
_SHAPE = re.compile(r"^svdq_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Compared against when the id is unknown, so an unknown id costs what a wrong secret does.
_NOBODY = hashlib.sha256(b"svdq: no such token").hexdigest()


@dataclass(frozen=True)
class Owner:
    """Who a request is: the token's id (recorded on what it submits), name and job quota."""

    id: str
    name: str
    quota: int | None  # None: the server's SVDQ_API_MAX_QUEUED
    rate: int | None = None  # requests a minute; None: the server's SVDQ_API_RATE_LIMIT


def digest(token: str) -> str:
    """What Redis keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    """A token's name if it is safe to print and store, else InvalidJobError."""
    if not _NAME.fullmatch(name):
        raise InvalidJobError(
            f"NAME={name[:80]!r} is not allowed: 1–64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit",
            field="name",
        )
    return name


class TokenStore:
    """The tokens in Redis."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def create(
        self, name: str, quota: int | None = None, rate: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A new token for `name` (names are unique): the token, shown once, and its record."""
        check_name(name)
        for flag, value in (("quota", quota), ("rate", rate)):
            if value is not None and value < 1:
                raise InvalidJobError(f"--{flag}={value} is not allowed: 1 or more", field=flag)
        if any(t["name"] == name for t in self.all()):
            raise InvalidJobError(
                f"NAME={name!r} already has a token: revoke it first (svdq token revoke {name})",
                field="name",
            )
        token_id = secrets.token_hex(8)
        token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        record = {"name": name, "sha256": digest(token), "created_at": time.time()}
        if quota is not None:
            record["quota"] = quota
        if rate is not None:
            record["rate"] = rate
        pipe = self.redis.pipeline()
        pipe.hset(token_key(token_id), mapping=record)
        pipe.sadd(TOKENS_KEY, token_id)
        pipe.execute()
        return token, {"id": token_id, **_public(record)}

    def all(self) -> list[dict[str, Any]]:
        """Every token's id, name, quota and creation time (never a digest)."""
        ids = sorted(_s(i) for i in self.redis.smembers(TOKENS_KEY))
        pipe = self.redis.pipeline(transaction=False)
        for token_id in ids:
            pipe.hgetall(token_key(token_id))
        out = []
        for token_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out.append({"id": token_id, **_public({_s(k): _s(v) for k, v in raw.items()})})
        return sorted(out, key=lambda t: (t["created_at"], t["id"]))

    def revoke(self, name_or_id: str) -> list[str]:
        """Remove the token with that name or id; the ids removed (empty: none matched)."""
        gone = [t["id"] for t in self.all() if name_or_id in (t["name"], t["id"])]
        if gone:
            pipe = self.redis.pipeline()
            for token_id in gone:
                pipe.delete(token_key(token_id))
                pipe.srem(TOKENS_KEY, token_id)
            pipe.execute()
        return gone

    def verify(self, token: str) -> Owner | None:
        """The owner of `token`, or None when it is malformed, unknown, revoked or wrong."""
        match = _SHAPE.fullmatch(token)
        raw = self.redis.hgetall(token_key(match.group(1))) if match else {}
        record = {_s(k): _s(v) for k, v in raw.items()}
        good = hmac.compare_digest(digest(token), record.get("sha256", _NOBODY))
        if not (match and record and good):
            return None
        quota, rate = record.get("quota"), record.get("rate")
        return Owner(
            match.group(1),
            record["name"],
            int(quota) if quota else None,
            int(rate) if rate else None,
        )


def _public(record: dict[str, Any]) -> dict[str, Any]:
    quota, rate = record.get("quota"), record.get("rate")
    return {
        "name": record["name"],
        "quota": int(quota) if quota not in (None, "") else None,
        "rate": int(rate) if rate not in (None, "") else None,
        "created_at": float(record["created_at"]),
    }


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
