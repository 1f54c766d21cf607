"""Time limits per job: a pure function of the variant, the generations the job may run and
the settings.

Both limits sit below `SVDQ_VISIBILITY_TIMEOUT` (Settings refuses a hard limit at or above
it), so Redis never hands a job that is still running to a second worker. Each variant's share
of `SVDQ_TASK_TIME_LIMIT` is its `time_scale` in shared/variants.py. A job that asks for
candidates or repair (worker/quality.py) may generate several clips: `generations` of them
(its candidates, plus its repair attempts when a check is retried), and its limits grow with
that number, up to `CEILING` of the visibility timeout (never below one generation's limit).
"""

from __future__ import annotations

import math

from svdq.shared.fields import MAX_REPAIR_ATTEMPTS
from svdq.shared.formats import MAX_CANDIDATES
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.variants import time_scale

# The most clips one job may generate: every candidate, then every repair.
MAX_GENERATIONS = MAX_CANDIDATES + MAX_REPAIR_ATTEMPTS
# A job's hard limit stays at or below this share of SVDQ_VISIBILITY_TIMEOUT (a margin for the
# kill, the result upload and the acknowledgement before Redis would redeliver it).
CEILING = 0.9


def generations(spec: JobSpec) -> int:
    """The most clips `spec` may generate (worker/quality.py): its candidates, plus its
    repair attempts when it retries a static or flickering clip; 1 for a plain job. A batch of
    candidates in one pipeline call costs about as much GPU time as the clips one by one."""
    repairs = spec.repair_attempts if "retry" in (spec.on_static, spec.on_flicker) else 0
    return spec.candidates + repairs


def time_limits(variant: str | None, settings: Settings, clips: int = 1) -> tuple[int, int]:
    """(soft, hard) seconds for a job of `variant` that may generate `clips` clips
    (`generations`). The soft limit ends the job with a reason; the hard one, a little later,
    kills the pool child if the soft one could not. One clip's hard limit is the variant's
    share of SVDQ_TASK_TIME_LIMIT; `clips` clips get that many times it, bounded by `CEILING`
    of SVDQ_VISIBILITY_TIMEOUT (and never below one clip's)."""
    one = max(2, math.ceil(settings.task_time_limit * time_scale(variant)))
    ceiling = max(one, math.floor(settings.visibility_timeout * CEILING))
    hard = min(one * max(1, clips), ceiling)
    # Grace between the two: a tenth of the limit, between 1 and 60 seconds.
    soft = hard - min(60, max(1, hard // 10))
    return soft, hard
