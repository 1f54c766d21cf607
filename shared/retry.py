"""The one backoff formula, and the one retry loop built on it.

Every wait svdq computes before trying again comes from `compute_backoff` (as every wait in
dramatiq comes from `common.compute_backoff`): a job's transient fault sent back to the queue,
an upload retried inside a job, a callback POST retried by `svdq callbacks`, a worker process
restarted by the supervisor. They differ only in their base, their cap and whether they jitter.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from svdq.shared.errors import TransientError
from svdq.shared.settings import Settings

log = logging.getLogger(__name__)

# 2**60 × any sane base is already beyond every cap; stops the power from overflowing a float.
_MAX_EXPONENT = 60


def compute_backoff(
    attempt: int,
    base: float,
    cap: float = math.inf,
    *,
    jitter: bool = True,
    rnd: random.Random | None = None,
) -> float:
    """Seconds to wait before retry `attempt` (1-based): base·2^(attempt-1), at most `cap`.

    With `jitter` the wait is drawn from [half, all] of that, so the retries of many jobs that
    failed together spread out instead of arriving together again.
    """
    if attempt < 1:
        raise ValueError(f"attempt={attempt} is not allowed: retries count from 1")
    ceiling = min(cap, base * 2 ** min(attempt - 1, _MAX_EXPONENT))
    if not jitter:
        return ceiling
    return ceiling * (0.5 + 0.5 * (rnd or random).random())


def with_retries(
    action: Callable[[], Any],
    what: str,
    settings: Settings,
    tries: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Run `action`, retrying a TransientError up to `tries` times in all, waiting
    `compute_backoff` (SVDQ_RETRY_BACKOFF, capped at SVDQ_RETRY_BACKOFF_MAX) between tries.

    Used for uploads, so a storage hiccup redoes the upload and never the generation."""
    for attempt in range(1, tries + 1):
        try:
            return action()
        except TransientError as exc:
            if attempt == tries:
                raise TransientError(f"{what} failed {tries} times; last: {exc}") from exc
            wait = compute_backoff(attempt, settings.retry_backoff, settings.retry_backoff_max)
            log.warning(
                "%s failed (%s); try %d of %d in %.1fs", what, exc, attempt + 1, tries, wait
            )
            sleep(wait)
    raise AssertionError("not reached")
