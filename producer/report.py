"""The bulk report: one row per source (image or manifest line), as JSON lines or CSV.

Columns: source, job_id, status, reason, outputs (S3 URIs), presigned (with --presign),
seconds (the job's total time), then one column per clip score (shared/scores.py: motion,
displacement, flicker, chunk_jump, psnr, ssim; empty when the job has none), so a
spreadsheet can sort a batch by them, and `badges` (failed, repaired, static, flicker: see
`row_badges`). Rows stream out of the batch record: nothing is held. A path ending in .html
gets the contact sheet instead (producer/sheet.py).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from svdq.producer.batch import Batch
from svdq.shared.records import repaired
from svdq.shared.scores import BADGES, SCORES, badges, finite
from svdq.shared.states import JobState

COLUMNS = (
    "source", "job_id", "status", "reason", "outputs", "presigned", "seconds", *SCORES, "badges"
)  # fmt: skip
# Rows a reviewer must look at: a job that failed, a row that never became a job for a fault.
FAILED_STATUSES = frozenset({"failed", "invalid"})  # a reject whose upload failed: "failed"
BADGE_ORDER = ("failed", "repaired", *BADGES)


def report_rows(batch: Batch, presign: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows for every job of `batch`, then the rows that did not become jobs of their own:
    invalid, skipped, upload failed, and duplicates of another row."""
    for row, _ in report_entries(batch, presign):
        yield row


def report_entries(
    batch: Batch, presign: int | None = None
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each report row with the job's state entry it came from (None for a row that was not a
    job): the contact sheet (producer/sheet.py) reads the result record's keys from it."""
    store = batch.jobqueue.store
    for entry in batch.states():
        result = entry.get("result") or {}
        outputs = {k: o["uri"] for k, o in result.get("outputs", {}).items()}
        scores = result.get("scores")
        scores = scores if isinstance(scores, dict) else {}  # a tampered record: none
        timings = result.get("timings")
        timings = timings if isinstance(timings, dict) else {}
        row: dict[str, Any] = {
            "source": entry.get("source", ""),
            "job_id": entry["job_id"],
            "status": entry["state"],
            "reason": entry.get("error", ""),
            "outputs": outputs,
            "presigned": {},
            "seconds": finite(timings.get("total")),
            **{name: finite(scores.get(name)) for name in SCORES},
        }
        if entry["state"] is JobState.CANCELLED:
            row["reason"] = "cancelled"
        if presign and result:
            row["presigned"] = {
                k: store.presign(o["key"], presign) for k, o in result["outputs"].items()
            }
        row["badges"] = row_badges(str(entry["state"]), result)
        yield row, entry
    for reject in batch.record.rejects():
        status = reject.get("status", "invalid")
        status = status if isinstance(status, str) else str(status)  # tampered: shown, counted
        row = {
            "source": reject.get("source", ""),
            "job_id": reject.get("job_id", ""),  # a duplicate row: the job that serves it
            "status": status,
            "reason": reject.get("reason", ""),
            "outputs": {},
            "presigned": {},
            "seconds": None,
            **dict.fromkeys(SCORES),
            "badges": row_badges(status, None),
        }
        yield row, None


def row_badges(status: Any, result: Any) -> list[str]:
    """A row's badges, in BADGE_ORDER: "failed" for a job that failed or a row that could not
    become one, "repaired" (shared/records.py: `repaired`), and the score badges under the
    job's own thresholds (shared/scores.py: `badges`, the rule its repair used). Any shape of
    a tampered record earns what it can, never an error."""
    out = ["failed"] if isinstance(status, str) and status in FAILED_STATUSES else []
    if not isinstance(result, dict):
        return out
    if repaired(result):
        out.append("repaired")
    spec = result.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    return out + badges(result.get("scores"), spec.get("min_motion"), spec.get("max_flicker"))


def write_report(path: str | Path, rows: Iterator[dict[str, Any]]) -> dict[str, int]:
    """Write `rows` to `path` (.csv → CSV, anything else → JSON lines); counts by status."""
    target = Path(path)
    counts: dict[str, int] = {}
    with target.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS) if target.suffix.lower() == ".csv" else None
        if writer:
            writer.writeheader()
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            if writer:
                flat = dict(row)
                # In CSV the maps become space-separated "kind=value" cells.
                for name in ("outputs", "presigned"):
                    flat[name] = " ".join(f"{k}={v}" for k, v in row[name].items())
                flat["badges"] = " ".join(row.get("badges", ()))
                for name in ("seconds", *SCORES):
                    flat[name] = "" if row.get(name) is None else row[name]
                writer.writerow(flat)
            else:
                fh.write(json.dumps(row) + "\n")
    return counts
