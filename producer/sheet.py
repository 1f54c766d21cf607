"""The contact sheet of a batch: `svdq report --batch B -o sheet.html`, or `--report out.html`
on `svdq bulk --wait` / `svdq wait --batch`. One HTML file a team opens to review a batch:
each row's poster beside a thumbnail of its source image, its scores and badges, why it
failed, and presigned links to every output (their expiry printed at the top).

The rows are the bulk report's (producer/report.py: same order, same badges); this module
adds the pictures. Posters and inputs come from the store and are decoded through
`open_image` (the input limits and Pillow's decompression-bomb guard, its warning an error:
an object in the bucket is outside input as much as an upload is), then shrunk to
thumbnails and embedded, so the written file needs nothing to show them. A picture that
cannot be had (gone, not an image, too large, a source outside the store) leaves a note on
its card, never a failed sheet. Cards are fetched in parallel and written as they come,
so a batch of ten thousand never sits in memory; the counts at the top are written last.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from svdq.producer.batch import Batch
from svdq.producer.report import report_entries, report_rows, write_report
from svdq.producer.sheethtml import (
    Card,
    badge_counts,
    data_uri,
    render_card,
    render_head,
    render_tail,
)
from svdq.shared.errors import InvalidJobError
from svdq.shared.images import open_image, to_rgb
from svdq.shared.scores import SCORES
from svdq.shared.settings import Settings
from svdq.shared.storage import ObjectNotFoundError, ObjectStore

THUMB = 320  # pixels: the longer side of an embedded picture (about 15 kB as JPEG)
PRESIGN = 7 * 86400  # the default link lifetime: S3's longest for a SigV4 presigned URL
CHUNK = 64  # rows fetched in parallel at a time


def thumbnail(data: bytes, settings: Settings, size: int, what: str) -> str:
    """`data` decoded as an input would be (limits, bomb guard), shrunk so its longer side
    is at most `size`, as a JPEG data: URI. InvalidJobError when it is no usable image."""
    image = open_image(
        data,
        max_bytes=settings.max_input_bytes,
        max_pixels=settings.max_input_pixels,
        source=what,
    )
    picture = to_rgb(image)
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=82)
    return data_uri(out.getvalue(), "image/jpeg")


def build_card(
    index: int,
    row: dict[str, Any],
    entry: dict[str, Any] | None,
    batch: Batch,
    size: int,
) -> Card:
    """The card of one report row: its pictures fetched, shrunk and embedded."""
    store, jobqueue = batch.jobqueue.store, batch.jobqueue
    result = (entry or {}).get("result") or {}
    card = Card(
        index=index,
        job_id=str(row.get("job_id") or ""),
        source=str(row.get("source") or ""),
        status=str(row.get("status") or ""),
        reason=str(row.get("reason") or ""),
        badges=list(row.get("badges") or ()),
        scores={k: row.get(k) for k in (*SCORES, "seconds")},
        links=dict(row.get("presigned") or {}),
    )
    notes = []
    spec = result.get("spec")
    if entry is not None and not isinstance(spec, dict):
        known = jobqueue.job_spec(card.job_id)  # a job without a result: its submission
        spec = known.to_dict() if known else None
    if isinstance(spec, dict):
        card.metadata = spec.get("metadata")
        source_uri = spec.get("image")
        if isinstance(source_uri, str):
            card.thumb, note = _picture(store, batch, source_uri, size, "source")
            notes.append(note)
    if result:
        card.size = (
            f"{result.get('width')}×{result.get('height')}, {result.get('num_frames')} frames"
        )
        poster = (result.get("outputs") or {}).get("poster") or {}
        if isinstance(poster.get("key"), str):
            card.poster, note = _picture(store, batch, store.uri(poster["key"]), size, "poster")
            notes.append(note)
    card.note = "; ".join(n for n in notes if n)
    return card


def _picture(
    store: ObjectStore, batch: Batch, uri: str, size: int, what: str
) -> tuple[str | None, str]:
    """(data: URI, "") for the stored picture `uri` names, or (None, why not)."""
    key = store.key_from_uri(uri)
    if key is None:
        return None, f"{what} {uri[:200]} is outside the store: not embedded"
    try:
        data = store.get_bytes(key)
        return thumbnail(data, batch.jobqueue.settings, size, f"{what} {key}"), ""
    except ObjectNotFoundError:
        return None, f"{what} {key} is no longer in the store"
    except InvalidJobError as exc:  # not an image, too large, a bomb: a note, not a failure
        return None, f"{what} not shown: {exc}"


def cards(batch: Batch, presign: int, size: int, threads: int) -> Iterator[Card]:
    """Every row of the batch as a card, in the report's order."""
    numbered = enumerate(report_entries(batch, presign))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        while chunk := list(itertools.islice(numbered, CHUNK)):
            yield from pool.map(lambda c: build_card(c[0], c[1][0], c[1][1], batch, size), chunk)


def write_sheet(
    path: str | Path,
    batch: Batch,
    presign: int | None = None,
    size: int = THUMB,
    threads: int = 8,
) -> dict[str, int]:
    """Write the batch's contact sheet to `path` (whole or not at all: a temporary file
    beside it is renamed over it); return the rows counted by status."""
    seconds = presign or PRESIGN
    if not 0 < seconds <= PRESIGN:
        raise InvalidJobError(
            f"presign={seconds} is not allowed: 1 to {PRESIGN} seconds (7 days, S3's limit)",
            field="presign",
        )
    target = Path(path)
    counts: dict[str, int] = {}
    tally: dict[str, int] = {}
    info = batch.info()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as body:
        for card in cards(batch, seconds, size, threads):
            counts[card.status] = counts.get(card.status, 0) + 1
            for name, n in badge_counts([card]).items():
                tally[name] = tally.get(name, 0) + n
            body.write(render_card(card))
        body.seek(0)
        facts = [f"source {info['source']}", f"{info['jobs']:,} jobs"]
        if not info["complete"]:
            facts.append("submission INCOMPLETE (interrupted; run bulk again)")
        head = render_head(f"svdq batch {batch.batch_id}", facts, counts, tally, seconds)
        fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(head)
                shutil.copyfileobj(body, out)
                out.write(render_tail())
            os.chmod(partial, 0o644)
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    return counts


def write_batch_report(
    path: str | Path, batch: Batch, presign: int | None = None
) -> dict[str, int]:
    """The report `--report PATH` asks for: the contact sheet for .html/.htm, else the rows
    (CSV for .csv, JSON lines otherwise); the rows counted by status."""
    if Path(path).suffix.lower() in (".html", ".htm"):
        return write_sheet(path, batch, presign)
    return write_report(path, report_rows(batch, presign))
