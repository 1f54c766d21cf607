"""The one poll-until-deadline loop (like arq's utils.poll): every wait in svdq asks "is it
done yet?" a pass at a time, sleeping between passes, until the answer is yes or time is up.

    for _ in poll(step=0.5, timeout=60):
        if done():
            return result
    raise WaitTimeoutError(...)   # the loop ran out: time is up
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator


def poll(
    step: float,
    timeout: float | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[float]:
    """Yield the seconds elapsed, at once and then every `step` seconds, until `timeout`
    seconds have passed (None: forever); then stop, so the caller knows it timed out.

    The caller breaks out (or returns) when it is done. A pass that starts before the deadline
    always runs to its end: the deadline is checked between passes, never inside one.
    """
    if step < 0:
        raise ValueError(f"step={step} is not allowed: 0 seconds or more")
    start = clock()
    while True:
        yield clock() - start
        if timeout is not None and clock() - start > timeout:
            return
        sleep(step)
