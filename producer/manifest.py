"""What `svdq bulk` reads: a folder of images, a .csv or a .jsonl manifest, one row at a time.

Everything here streams: a 100 000-row manifest or folder is walked lazily, never held in
memory. Each row becomes a dict of JobSpec fields (flags give the defaults, the row overrides
them) or the reason it cannot be one, with the line it came from.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdq.shared.fields import FIELD_BY_NAME

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_DEPTH = 32  # nesting of a JSON value from outside (a JobSpec needs 3: metadata's own)


def loads(text: str | bytes) -> Any:
    """JSON from outside (a manifest line, a request body, a form cell), or ValueError with
    the reason: not JSON, nested deeper than MAX_DEPTH, or a number Python refuses (over
    4300 digits). json.loads itself raises RecursionError (not a ValueError) past about
    1000 levels, and a value nested a little less breaks later code that recurses on it; so
    the depth is checked before parsing, on the brackets outside strings."""
    raw = text.encode() if isinstance(text, str) else text
    depth = 0
    quoted = escaped = False
    for byte in raw:
        if quoted:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # "
                quoted = False
        elif byte == 0x22:
            quoted = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(exc.msg if isinstance(text, str) else str(exc)) from None
    except (ValueError, RecursionError) as exc:  # a number over 4300 digits; a bad encoding
        raise ValueError(str(exc)[:200] or type(exc).__name__) from None


MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class Row:
    """One job to submit, or one entry that cannot be (`skipped` or `error` says why)."""

    source: str  # the file, or "<manifest>:<line>"
    line: int  # 1-based line in the manifest (0 for folder entries)
    data: dict[str, Any] | None = None  # JobSpec fields, defaults already merged in
    error: str | None = None  # a bad row: the field and what is wrong
    field: str | None = None
    skipped: str | None = None  # not a job at all (e.g. not an image file)


def iter_source(source: str | Path, defaults: dict[str, Any] | None = None) -> Iterator[Row]:
    """The rows of a folder, a .csv or a .jsonl manifest, in order, lazily."""
    path = Path(source).expanduser()
    defaults = dict(defaults or {})
    if path.is_dir():
        return iter_folder(path, defaults)
    if not path.is_file():
        raise FileNotFoundError(f"SOURCE={str(source)!r}: no such folder or manifest file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return iter_csv(path, defaults)
    if suffix in (".jsonl", ".ndjson"):
        return iter_jsonl(path, defaults)
    raise ValueError(
        f"SOURCE={str(source)!r} is not allowed: a folder of images, or a manifest ending in "
        + ", ".join(MANIFEST_EXTENSIONS)
    )


def iter_folder(folder: Path, defaults: dict[str, Any]) -> Iterator[Row]:
    """Every file under `folder`, recursively, in name order; non-images come back skipped."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue  # .DS_Store, editor swap files: never meant as jobs
        if entry.is_dir(follow_symlinks=False):
            yield from iter_folder(Path(entry.path), defaults)
        elif entry.is_file():
            ext = os.path.splitext(entry.name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                yield Row(entry.path, 0, data={**defaults, "image": entry.path})
            else:
                yield Row(
                    entry.path,
                    0,
                    skipped=f"not an image file: extension {ext or '(none)'!r} is not one of "
                    + ", ".join(IMAGE_EXTENSIONS),
                )


def iter_jsonl(path: Path, defaults: dict[str, Any]) -> Iterator[Row]:
    """One JSON object per line; blank lines are ignored."""
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = loads(text)
            except ValueError as exc:
                yield Row(where, number, error=f"line {number}: not valid JSON ({exc})")
                continue
            if not isinstance(value, dict):
                yield Row(where, number, error=f"line {number}: a JSON object is required")
                continue
            yield _row(path, number, {**defaults, **value})


def iter_csv(path: Path, defaults: dict[str, Any]) -> Iterator[Row]:
    """A header row naming JobSpec fields, then one job per row; empty cells keep defaults."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for record in reader:
            number = reader.line_num
            data = dict(defaults)
            problem = None
            for name, cell in record.items():
                if name is None:  # more cells than header columns
                    problem = ("columns", f"line {number}: more cells than header columns")
                    break
                if cell is None or cell.strip() == "":
                    continue
                try:
                    data[name] = csv_value(name, cell.strip())
                except ValueError as exc:
                    problem = (name, f"line {number}: {exc}")
                    break
            if problem:
                yield Row(f"{path}:{number}", number, error=problem[1], field=problem[0])
            else:
                yield _row(path, number, data)


def csv_value(name: str, cell: str) -> Any:
    """A CSV cell converted to the JSON type of field `name` (unknown names pass through)."""
    f = FIELD_BY_NAME.get(name)
    if f is None:
        return cell  # JobSpec.from_dict names the unknown field later
    try:
        if f.type == "integer":
            return int(cell)
        if f.type == "number":
            return float(cell)
    except ValueError:  # also int() of over 4300 digits
        raise ValueError(f"{name}={cell[:80]!r} is not allowed: {f.allowed()}") from None
    if f.type == "boolean":  # keep_candidates: true/false, 1/0, yes/no (any case)
        lowered = cell.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no", ""):
            return False
        raise ValueError(f"{name}={cell[:80]!r} is not allowed: true or false (1/0, yes/no)")
    if f.type == "array":  # formats: "mp4|gif", "mp4 gif" or "mp4;gif"
        return [p for p in cell.replace(";", "|").replace(" ", "|").split("|") if p]
    if f.type == "object":
        try:
            return loads(cell)
        except ValueError as exc:
            raise ValueError(
                f"{name}={cell[:80]!r} is not allowed: a JSON object ({exc})"
            ) from None
    return cell


def _row(manifest: Path, number: int, data: dict[str, Any]) -> Row:
    image = data.get("image")
    # Relative paths in a manifest mean "next to the manifest", wherever svdq is run from.
    if isinstance(image, str) and "://" not in image and not os.path.isabs(image):
        data["image"] = str(manifest.parent / image)
    return Row(f"{manifest}:{number}", number, data=data)
