"""Progress for bulk work: a bar redrawn in place on a terminal, a plain line now and then
otherwise, and with --json one JSON object per event for scripts."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from svdq.shared.states import JobState


class BulkProgress:
    """Shows `bulk` events: rows as they are submitted, then batch counts while waiting."""

    def __init__(
        self,
        stream: TextIO | None = None,
        as_json: bool = False,
        every: float = 5.0,
        total: int | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.as_json = as_json
        self.tty = self.stream.isatty() and not as_json
        self.every = every  # seconds between plain lines off a terminal
        self.total = total
        self._last_line = 0.0
        self._rows = 0

    def event(self, event: dict[str, Any]) -> None:
        """Called by BulkSubmitter for each row and each chunk."""
        if self.as_json:
            self._json(event)
            return
        if event["event"] == "row":
            self._rows += 1
            if event["outcome"] in ("invalid", "skipped"):
                self._line(f"{event['source']}: {event['outcome']}: {event.get('reason')}")
            return
        if event["event"] == "chunk":
            counts = {k: v for k, v in event.items() if k not in ("event", "batch_id") and v}
            self._bar("submit", self._rows, self.total, _counts(counts))

    def counts(self, counts: dict[str, int]) -> None:
        """Called by Batch.wait after each pass over the batch."""
        if self.as_json:
            self._json({"event": "counts", **counts})
            return
        total = sum(counts.values())
        finished = sum(n for s, n in counts.items() if not JobState(s).is_open)
        self._bar("done", finished, total, _counts(counts))

    def finish(self) -> None:
        """End the bar's line on a terminal."""
        if self.tty:
            print(file=self.stream, flush=True)

    def _json(self, event: dict[str, Any]) -> None:
        print(json.dumps(event), file=sys.stdout, flush=True)

    def _bar(self, label: str, done: int, total: int | None, detail: str) -> None:
        if self.tty:
            if total:
                width = 30
                filled = int(width * min(done, total) / total)
                bar = f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}"
            else:
                bar = f"{done:,}"
            print(f"\r\033[K{label} {bar}  {detail}", end="", file=self.stream, flush=True)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every or (total and done >= total):
            self._last_line = now
            of = f"/{total:,}" if total else ""
            print(f"{label}: {done:,}{of}  {detail}", file=self.stream, flush=True)

    def _line(self, text: str) -> None:
        prefix = "\r\033[K" if self.tty else ""
        print(prefix + text, file=self.stream, flush=True)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in counts.items() if n)
