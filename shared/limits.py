"""Time limits per job: a pure function of the variant and the settings.

Both limits sit below `SVDQ_VISIBILITY_TIMEOUT` (Settings refuses a hard limit at or above
it), so Redis never hands a job that is still running to a second worker. Each variant's share
of `SVDQ_TASK_TIME_LIMIT` is its `time_scale` in shared/variants.py.
"""

from __future__ import annotations

import math

from svdq.shared.settings import Settings
from svdq.shared.variants import time_scale


def time_limits(variant: str | None, settings: Settings) -> tuple[int, int]:
    """(soft, hard) seconds for a job of `variant`. The soft limit ends the job with a reason;
    the hard one, a little later, kills the pool child if the soft one could not."""
    hard = max(2, math.ceil(settings.task_time_limit * time_scale(variant)))
    # Grace between the two: a tenth of the limit, between 1 and 60 seconds.
    soft = hard - min(60, max(1, hard // 10))
    return soft, hard
