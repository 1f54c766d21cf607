"""svdq.shared.retry's transient budget and what `svdq status` says of a waiting job (issue 10,
defect 3)."""

from __future__ import annotations

from svdq.shared.retry import transient_wait, waiting_note
from svdq.shared.settings import Settings

S = Settings.from_env(
    {"SVDQ_RETRY_BACKOFF": "2", "SVDQ_RETRY_BACKOFF_MAX": "60", "SVDQ_TRANSIENT_BUDGET": "900"}
)


def test_waits_double_are_capped_and_stop_at_the_budget() -> None:
    assert 1 <= (transient_wait(1, 1000.0, S, now=1000.0) or 0) <= 2
    assert 30 <= (transient_wait(20, 1000.0, S, now=1000.0) or 0) <= 60  # capped, jittered
    assert transient_wait(20, 1000.0, S, now=1890.0) == 10  # never past the budget's end
    assert transient_wait(2, 1000.0, S, now=1900.0) is None  # spent
    default = Settings.from_env({})
    assert default.transient_budget == 900 and default.max_deliveries == 3


def test_waiting_note() -> None:
    assert waiting_note(b"storage unavailable", b"1040.2", now=1000.0) == (
        "waiting: storage unavailable, next try in 40 s"
    )
    assert waiting_note("transient fault", "990", now=1000.0) == (
        "waiting: transient fault, next try in 0 s"
    )
    assert waiting_note(None, None) is None
    assert waiting_note(b"x", b"not a time") is None
