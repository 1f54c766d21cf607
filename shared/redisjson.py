"""One reader for the JSON entries svdq reads back from Redis: holder entries, last-seen
entries, attempts, kombu's unacked entries and queued messages.

Why one reader: anybody who can write the Redis database can put anything in these entries,
and a reader that raises stops every reaper scan and `svdq stats` (the scan reads every entry
of a hash in one pass). Each reader once caught its own short list of exceptions, and each
list missed one: `json.loads` raises RecursionError past about 1000 nested brackets, `float()`
raises OverflowError on a JSON integer over 308 digits, an entry of the wrong shape raises
AttributeError on `.get`. So every such read goes through here, catches Exception, checks the
shape the caller needs, and answers None for anything else: a tampered entry is treated as
an absent one, never as a reason to stop.
"""

from __future__ import annotations

import json
import math
from typing import Any


def value(raw: Any) -> Any:
    """The JSON value in `raw` (bytes or str), or None when it is absent or unreadable for any
    reason (not JSON, bad encoding, nested too deep, a number Python refuses)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except Exception:
        return None


def obj(raw: Any) -> dict[str, Any] | None:
    """The JSON object in `raw`; None for anything else (a list, a number, unreadable)."""
    found = value(raw)
    return found if isinstance(found, dict) else None


def number(found: Any) -> float | None:
    """`found` (a JSON number, or a number's text) as a finite float; None for anything else:
    a string that is no number, a bool, an integer too large for a float, NaN or infinity
    (json.loads accepts NaN and Infinity, and an infinite time would make every age 0 or
    every entry ancient)."""
    if isinstance(found, bool) or not isinstance(found, (int, float, str, bytes)):
        return None
    try:
        result = float(found)
    except Exception:
        return None
    return result if math.isfinite(result) else None


def text(value: Any) -> str:
    """A Redis reply (bytes, or str from a decoding client) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)
