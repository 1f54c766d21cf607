"""The one backoff formula, the one retry loop built on it, and the retry policy of every kind
of fault, in one place.

Every wait svdq computes before trying again comes from `compute_backoff` (as every wait in
dramatiq comes from `common.compute_backoff`): a job's transient fault sent back to the queue,
an upload retried inside a job, a callback POST retried by `svdq callbacks`, a worker process
restarted by the supervisor. They differ only in their base, their cap and whether they jitter.

One policy per kind of fault (fault → who retries, how → until when):

- one S3 request fails (refused, 5xx, SlowDown, time-out) → botocore's "standard" retry mode,
  inside the request → 3 attempts of at most 2 × SVDQ_S3_TIMEOUT each (shared/storage/s3.py,
  `call_bound`), then StorageUnavailable; a job whose soft time limit comes while it waits on
  the store gets StorageUnavailable too (worker/delivery.py, `on_the_store`);
- an output upload fails → `with_retries`, in place, the frames kept → until
  SVDQ_TRANSIENT_BUDGET is spent, or the job's soft time limit comes (then the job's rule
  below: the one case where the clip is made again);
- the store or the network fails a job (input fetch, marker check, upload: any
  TransientError) → the job goes back on its queue after `transient_wait` (SVDQ_RETRY_BACKOFF
  doubling, capped at SVDQ_RETRY_BACKOFF_MAX, jittered), shown by `svdq status` as "waiting:
  storage unavailable, next try in 40 s" → SVDQ_TRANSIENT_BUDGET seconds from its first
  fault, then the dead-letter list; never counted against SVDQ_MAX_DELIVERIES;
- Redis goes away mid-job → Celery reconnects and the unacknowledged message comes back after
  the visibility timeout → the attempt is closed as transient if Redis answers again at once,
  else the next delivery counts it as lost;
- a process dies with its job (killed, host out of memory, segfault) → redelivery (visibility
  timeout, or the reaper) → SVDQ_MAX_DELIVERIES deliveries, then the dead-letter list;
- bad input, a time limit, out of memory on the last profile → never retried;
- a callback POST fails → `svdq callbacks`, compute_backoff from SVDQ_CALLBACK_BACKOFF, no
  jitter → SVDQ_CALLBACK_RETRIES;
- a worker process exits at start → the supervisor, compute_backoff, no jitter → no end.

Transient faults have a budget of their own because they say nothing about the job: an S3
outage of ten minutes must not dead-letter every job that started during it, while a job that
kills its worker three times must stop.
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

# Fields of a job's record (shared.constants.job_key) saying why a retrying job waits, and
# until when (epoch seconds): written by the worker, read by `svdq status`.
WAITING, NEXT_TRY_AT = "waiting", "next_try_at"

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
    tries: int | None = 5,
    sleep: Callable[[float], None] = time.sleep,
    budget: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Run `action`, retrying a TransientError up to `tries` times in all (None: no count)
    and, with a `budget`, only while the next try would start within `budget` seconds of the
    first failure, waiting `compute_backoff` (SVDQ_RETRY_BACKOFF, capped at
    SVDQ_RETRY_BACKOFF_MAX) between tries.

    Used for uploads, so a storage hiccup redoes the upload and never the generation: they
    retry on the job's transient budget, in place (worker/jobs.py)."""
    first_failure: float | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except TransientError as exc:
            first_failure = clock() if first_failure is None else first_failure
            wait = compute_backoff(attempt, settings.retry_backoff, settings.retry_backoff_max)
            over_budget = budget is not None and clock() + wait - first_failure > budget
            if attempt == tries or over_budget:
                spent = f" in {clock() - first_failure:.0f}s" if budget is not None else ""
                raise TransientError(f"{what} failed {attempt} times{spent}; last: {exc}") from exc
            of = f" of {tries}" if tries else ""
            log.warning("%s failed (%s); try %d%s in %.1fs", what, exc, attempt + 1, of, wait)
            sleep(wait)


def transient_wait(
    tries: int, first_fault_at: float, settings: Settings, now: float | None = None
) -> float | None:
    """Seconds before a job that met its `tries`-th transient fault (the first at
    `first_fault_at`, epoch seconds) runs again; None when SVDQ_TRANSIENT_BUDGET is spent.

    The wait never reaches past the budget's end by more than one backoff step: the last try
    falls inside it."""
    now = time.time() if now is None else now
    left = first_fault_at + settings.transient_budget - now
    if left <= 0:
        return None
    return min(compute_backoff(tries, settings.retry_backoff, settings.retry_backoff_max), left)


def waiting_note(waiting: Any, next_try_at: Any, now: float | None = None) -> str | None:
    """What `svdq status` says of a job waiting out a transient fault ("waiting: storage
    unavailable, next try in 40 s"), from its record's WAITING and NEXT_TRY_AT fields; None
    when they are missing or unreadable."""
    try:
        what = waiting.decode() if isinstance(waiting, bytes) else str(waiting)
        left = float(next_try_at) - (time.time() if now is None else now)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    if waiting is None:
        return None
    return f"waiting: {what}, next try in {max(0, round(left))} s"
