"""shared/redisjson.py: the one reader of JSON entries from Redis answers None, never raises,
for whatever a writer of the database planted."""

from __future__ import annotations

import pytest

from svdq.shared import redisjson


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"not json",
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
        b"1" + b"0" * 5000,  # over Python's 4300-digit limit for int()
        12,  # not text at all
    ],
)
def test_unreadable_values_are_none(raw: object) -> None:
    assert redisjson.value(raw) is None
    assert redisjson.obj(raw) is None


def test_obj_requires_an_object() -> None:
    assert redisjson.obj(b"[1, 2]") is None
    assert redisjson.obj(b'"text"') is None
    assert redisjson.obj(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (1.5, 1.5),
        (3, 3.0),
        ("2.25", 2.25),
        (b"7", 7.0),
        (10**400, None),  # OverflowError in float()
        (float("nan"), None),
        (float("inf"), None),
        ("-Infinity", None),
        ("soon", None),
        (True, None),
        ([1], None),
        ({"at": 1}, None),
        (None, None),
    ],
)
def test_number_is_finite_or_none(found: object, expected: float | None) -> None:
    assert redisjson.number(found) == expected


def test_nan_from_json_is_rejected() -> None:
    entry = redisjson.obj(b'{"at": NaN}')
    assert entry is not None and redisjson.number(entry["at"]) is None
