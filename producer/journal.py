"""The local journal of a bulk batch: what survives when Redis forgets.

Redis holds a batch's record and every job's spec; a Redis restarted without AOF (or a
failover that lost the last writes) forgets them, and the jobs then read `unknown`, like jobs
never submitted. So `svdq bulk` also writes, on the machine that ran it, in SVDQ_BATCH_DIR:

- `<batch>.jsonl`: one line per job of the batch, its finalized spec (job id, seed, and the
  input as its content-addressed s3:// URI). That is a bulk manifest: `svdq bulk <batch>.jsonl
  --batch-id <batch>` queues again exactly the jobs that are neither done (result.json) nor
  still known to Redis, and nothing twice (producer/bulkrows.py sorts the rows by state).
- `<batch>.json`: where the batch came from (source, created_at).

Lines are appended per chunk before the chunk is published, so every job Redis was told about
is in the journal (a line for a job whose publish then failed only means a re-run sends it).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdq.shared.errors import ConfigError
from svdq.shared.settings import Settings

SCAN_LIMIT = 500  # journals (newest first) searched for one job id


def resubmit_command(path: Path, batch_id: str) -> str:
    """The one command that queues the journal's lost jobs again, into the same batch."""
    return f"svdq bulk {shlex.quote(str(path))} --batch-id {shlex.quote(batch_id)}"


@dataclass(frozen=True)
class Found:
    """Where a job's spec is kept: its batch, the journal and the line in it."""

    batch_id: str
    path: Path
    line: int
    spec: dict[str, Any]


class BatchJournal:
    """Appends a batch's job specs to `<dir>/<batch>.jsonl`, each job id once."""

    def __init__(self, settings: Settings, batch_id: str, source: str) -> None:
        folder = settings.batch_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.path = folder / f"{batch_id}.jsonl"
            self.ids = set(journal_ids(self.path))
            meta = folder / f"{batch_id}.json"
            if not meta.exists():  # a re-run into the same batch keeps the first record
                record = {"batch_id": batch_id, "source": source, "created_at": time.time()}
                meta.write_text(json.dumps(record) + "\n", encoding="utf-8")
            self._fh = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"SVDQ_BATCH_DIR={str(folder)!r}: cannot write the batch journal there "
                f"({exc.strerror or exc}); set SVDQ_BATCH_DIR to a writable folder"
            ) from None

    def add(self, specs: Iterable[dict[str, Any]]) -> None:
        """Append the specs of jobs not in the journal yet, and flush them to the file."""
        lines = []
        for spec in specs:
            job_id = str(spec["job_id"])
            if job_id not in self.ids:
                self.ids.add(job_id)
                lines.append(json.dumps(spec, sort_keys=True) + "\n")
        if lines:
            self._fh.write("".join(lines))
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def journal_path(settings: Settings, batch_id: str) -> Path:
    """Where the journal of `batch_id` is (or would be) on this machine."""
    return settings.batch_dir / f"{batch_id}.jsonl"


def journal_meta(settings: Settings, batch_id: str) -> dict[str, Any]:
    """The batch's `<batch>.json` record ({} when missing or unreadable)."""
    try:
        data = json.loads((settings.batch_dir / f"{batch_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def journal_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, spec) of every readable line; a missing file has none."""
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        return
    with fh:
        for number, text in enumerate(fh, start=1):
            try:
                spec = json.loads(text)
            except ValueError:
                continue  # a line cut short (the disk filled up): the rest still counts
            if isinstance(spec, dict) and spec.get("job_id"):
                yield number, spec


def journal_ids(path: Path) -> Iterator[str]:
    """The job ids a journal lists, in order."""
    for _, spec in journal_lines(path):
        yield str(spec["job_id"])


def find_job(settings: Settings, job_id: str) -> Found | None:
    """The newest journal on this machine listing `job_id`, or None."""
    try:
        paths = sorted(
            settings.batch_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True
        )
    except OSError:
        return None
    needle = f'"job_id": {json.dumps(job_id)}'
    for path in paths[:SCAN_LIMIT]:
        try:
            if needle not in path.read_text(encoding="utf-8", errors="replace"):
                continue
        except OSError:
            continue
        for number, spec in journal_lines(path):
            if spec["job_id"] == job_id:
                return Found(path.stem, path, number, spec)
    return None


def journal_age(settings: Settings, batch_id: str) -> float | None:
    """Seconds since the batch was first submitted from this machine, if known."""
    created = journal_meta(settings, batch_id).get("created_at")
    if isinstance(created, int | float):
        return max(0.0, time.time() - created)
    path = journal_path(settings, batch_id)
    try:
        return max(0.0, time.time() - os.path.getmtime(path))
    except OSError:
        return None
