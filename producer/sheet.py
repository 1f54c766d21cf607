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

import hashlib
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
from svdq.producer.jobqueue import JobQueue
from svdq.producer.report import report_entries, report_rows, write_report
from svdq.producer.sheethtml import (
    Card,
    badge_counts,
    data_uri,
    render_card,
    render_head,
    render_tail,
)
from svdq.shared.constants import INPUT_PREFIX
from svdq.shared.errors import InvalidJobError
from svdq.shared.images import open_image, to_rgb
from svdq.shared.jobid import identity
from svdq.shared.scores import SCORES
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
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
    spec = source_spec(jobqueue, card.job_id, result) if entry is not None else None
    if spec is not None:
        card.metadata = spec.metadata
        sha = content_address(store, spec.image)
        card.thumb, note = _picture(store, batch, spec.image, size, "source", sha)
        notes.append(note)
    elif entry is not None and isinstance(result.get("spec"), dict):
        notes.append("source not shown: its submission record is gone and the result's spec "
                     "does not name this job's own input")  # fmt: skip
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


def source_spec(jobqueue: JobQueue, job_id: str, result: dict[str, Any]) -> JobSpec | None:
    """The spec whose image is this job's source: the one the producer recorded at submission
    (Redis), never the result record's alone, which nothing checks but its output keys (a
    forged record could embed any image of the bucket as this job's source). When Redis no
    longer has the submission, the result's spec counts only if its image is at the content
    address its job id was derived from (inputs/<sha256>.<ext>, shared/spec.py `finalize`)."""
    try:
        known = jobqueue.job_spec(job_id)
    except (InvalidJobError, ValueError):  # a tampered submission record: no source
        return None
    if known is not None:
        return known
    try:
        spec = JobSpec.from_dict(result["spec"]) if isinstance(result.get("spec"), dict) else None
    except InvalidJobError:
        return None
    sha = content_address(jobqueue.store, spec.image) if spec else None
    if spec is None or sha is None or spec.job_id != job_id:
        return None
    return spec if job_id.endswith(identity(spec, sha)[:24]) else None


def content_address(store: ObjectStore, uri: str) -> str | None:
    """The sha256 an input's key names (inputs/<sha256>.<ext>), or None for any other key."""
    key = store.key_from_uri(uri)
    name = key[len(INPUT_PREFIX) :] if key and key.startswith(INPUT_PREFIX) else ""
    sha = name.partition(".")[0]
    return sha if len(sha) == 64 and not sha.strip("0123456789abcdef") else None


def _picture(
    store: ObjectStore, batch: Batch, uri: str, size: int, what: str, sha256: str | None = None
) -> tuple[str | None, str]:
    """(data: URI, "") for the stored picture `uri` names, or (None, why not). Its size is
    asked first (head): an object over SVDQ_MAX_INPUT_BYTES is never downloaded (one of
    gigabytes, times the fetching threads, would exhaust this machine's memory). With
    `sha256` (an input's content address) bytes that hash otherwise are not shown: the object
    was replaced in the bucket, and is not the image the job was submitted with."""
    key = store.key_from_uri(uri)
    if key is None:
        return None, f"{what} {uri[:200]} is outside the store: not embedded"
    limit = batch.jobqueue.settings.max_input_bytes
    try:
        found = store.head(key)
        if found is None:
            raise ObjectNotFoundError(key)
        if found.size > limit:
            return None, (
                f"{what} not shown: {key} is {found.size:,} bytes, more than "
                f"SVDQ_MAX_INPUT_BYTES={limit:,}"
            )
        data = store.get_bytes(key)  # open_image checks the size again: it may have changed
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            return None, (
                f"{what} not shown: {key} is not the image submitted (its bytes do not hash to "
                "the sha256 its name records: the object was replaced)"
            )
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


def check_report(path: str | Path, presign: int | None, flag: str = "--report") -> None:
    """Refuse, before anything is fetched or queued, a report that could not be written: a
    presign out of range (the sheet's links: 1 to 7 days, S3's limit; other reports: 1 or
    more) or a path whose folder is missing or not writable, or that is a folder itself.
    InvalidJobError naming the flag, the value and what is allowed."""
    sheet = Path(path).suffix.lower() in (".html", ".htm")
    if presign is not None and not (0 < presign <= PRESIGN if sheet else presign > 0):
        allowed = f"1 to {PRESIGN} seconds (7 days, S3's limit)" if sheet else "1 or more"
        raise InvalidJobError(f"--presign={presign} is not allowed: {allowed}", field="presign")
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise InvalidJobError(f"{flag}={path} is a folder: give a file path", flag.strip("-"))
    if not folder.is_dir():
        raise InvalidJobError(
            f"{flag}={path}: the folder {folder} does not exist; create it or choose another",
            field=flag.strip("-"),
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidJobError(
            f"{flag}={path}: the folder {folder} is not writable", field=flag.strip("-")
        )


def write_sheet(
    path: str | Path,
    batch: Batch,
    presign: int | None = None,
    size: int = THUMB,
    threads: int = 8,
) -> dict[str, int]:
    """Write the batch's contact sheet to `path` (whole or not at all: a temporary file
    beside it is renamed over it); return the rows counted by status. A path or presign
    that cannot do is refused (`check_report`) before any picture is fetched."""
    seconds = PRESIGN if presign is None else presign
    check_report(path, seconds, "path")
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
    check_report(path, presign)
    return write_report(path, report_rows(batch, presign))
