"""Time limits per job: a pure function of the variant and the settings.

Both limits sit below `SVDQ_VISIBILITY_TIMEOUT` (Settings refuses a hard limit at or above
it), so Redis never hands a job that is still running to a second worker.
"""

from __future__ import annotations

import math

from svdq.shared.settings import Settings

# Share of SVDQ_TASK_TIME_LIMIT each variant may use. SVD-XT (25 frames) is the slowest real
# model and sets the limit; SVD makes 14 frames. tiny is the test/demo model: it keeps the whole
# limit because the machines that run it (CPU, shared CI) are the least predictable.
VARIANT_SCALE = {"svd-xt": 1.0, "svd-xt-1-1": 1.0, "auto": 1.0, "svd": 0.6, "tiny": 1.0}


def time_limits(variant: str | None, settings: Settings) -> tuple[int, int]:
    """(soft, hard) seconds for a job of `variant`. The soft limit ends the job with a reason;
    the hard one, a little later, kills the pool child if the soft one could not."""
    hard = max(2, math.ceil(settings.task_time_limit * VARIANT_SCALE.get(variant or "auto", 1.0)))
    # Grace between the two: a tenth of the limit, between 1 and 60 seconds.
    soft = hard - min(60, max(1, hard // 10))
    return soft, hard
