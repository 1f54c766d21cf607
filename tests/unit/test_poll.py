"""The one poll loop: passes at once and every `step`, the deadline checked between passes."""

from __future__ import annotations

import pytest

from svdq.shared.poll import poll


class FakeClock:
    """Time that moves only when the loop sleeps or a pass says it took a while."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_passes_until_the_deadline_then_stops() -> None:
    clock = FakeClock()
    elapsed = list(poll(1.0, timeout=3.0, clock=clock, sleep=clock.sleep))
    # A pass at 0, 1, 2 and 3 s: at 3 s the deadline is not yet passed; after it, it is.
    assert elapsed == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert clock.sleeps == [1.0] * 4


def test_the_caller_stops_when_done_and_nothing_more_is_slept() -> None:
    clock = FakeClock()
    passes = 0
    for _ in poll(0.5, timeout=60, clock=clock, sleep=clock.sleep):
        passes += 1
        if passes == 3:
            break
    assert passes == 3 and clock.sleeps == [0.5, 0.5]


def test_a_pass_that_runs_past_the_deadline_is_the_last() -> None:
    clock = FakeClock()
    passes = 0
    for _ in poll(1.0, timeout=5.0, clock=clock, sleep=clock.sleep):
        passes += 1
        clock.now += 10  # one slow pass
    assert passes == 1 and clock.sleeps == []


def test_no_timeout_polls_on() -> None:
    clock = FakeClock()
    it = poll(2.0, clock=clock, sleep=clock.sleep)
    assert [next(it) for _ in range(50)][-1] == 98.0


def test_a_negative_step_is_refused() -> None:
    with pytest.raises(ValueError, match="step=-1"):
        next(poll(-1))
