"""`svdq worker` says at start what `svdq doctor` would flag about its Redis (issue 11: AOF off
means a Redis restart loses every queued job)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_lib

pytestmark = pytest.mark.integration


def test_worker_prints_the_aof_warning_at_start(worker: str, redis_url: str) -> None:
    """The session's worker (tests/conftest.py) runs on the suite's Redis; its start-up output
    has the warning exactly when that Redis has AOF off."""
    aof = redis_lib.Redis.from_url(redis_url).config_get("appendonly").get("appendonly")
    text = Path(worker).read_text(errors="replace")
    warned = "svdq worker: UNSAFE redis aof: appendonly=no" in text
    assert warned == (aof != "yes"), text[:2000]
