"""What the commands print while they wait, for people and for scripts.

On a terminal one line is redrawn in place; off a terminal plain lines are printed; with
`--json` one JSON object per event. Two views share that: `JobProgress` follows single jobs
(`svdq submit --wait`, `svdq wait`, the demo), `BulkProgress` follows a bulk submission and its
batch (`svdq bulk`, `svdq wait --batch`). `say` prints one event of a command either way.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from svdq.shared.states import JobState

_REDRAW = "\r\033[K"  # back to the start of the line and clear it


def say(as_json: bool, event: dict[str, Any], text: str) -> None:
    """One event: a JSON object on stdout for scripts, or `text` on stderr for people."""
    if as_json:
        print(json.dumps(event), flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


class JobProgress:
    """Prints a job's state whenever it changes; `--json` prints one JSON object per change."""

    def __init__(
        self,
        stream: TextIO | None = None,
        as_json: bool = False,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.as_json = as_json
        self.labels = labels or {}
        self.tty = self.stream.isatty() and not as_json
        self._last: dict[str, tuple[Any, ...]] = {}

    def __call__(self, status: dict[str, Any]) -> None:
        job_id = status["job_id"]
        key = (status["state"], status.get("phase"), status.get("step"), status.get("waiting_for"))
        if self._last.get(job_id) == key:
            return
        self._last[job_id] = key
        if self.as_json:
            event = {"event": "progress", **{k: v for k, v in status.items() if k != "result"}}
            print(json.dumps(event), file=self.stream)
            return
        label = self.labels.get(job_id, job_id)
        text = f"{label}: {status['state']}"
        if status.get("phase"):
            text += f" · {status['phase']} {status.get('step', 0)}/{status.get('steps', '?')}"
        if status.get("error"):
            text += f" · {status['error']}"
        if status.get("waiting_for"):  # queued where nothing consumes: say so, do not hang mute
            text += f" · {status['waiting_for']}"
        result = status.get("result")
        state = JobState(status["state"])
        if state is JobState.SUCCEEDED and isinstance(result, dict) and result.get("note"):
            text += f" · {result['note']}"  # e.g. the tiny model's "random weights" label
        if self.tty:
            end = "\n" if state.is_final else ""
            print(f"{_REDRAW}{text}", end=end, file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)


class BulkProgress:
    """Shows `bulk` events: rows as they are submitted, then batch counts while waiting. A bar
    redrawn in place on a terminal, a plain line every `every` seconds otherwise."""

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
            print(f"{_REDRAW}{label} {bar}  {detail}", end="", file=self.stream, flush=True)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every or (total and done >= total):
            self._last_line = now
            of = f"/{total:,}" if total else ""
            print(f"{label}: {done:,}{of}  {detail}", file=self.stream, flush=True)

    def _line(self, text: str) -> None:
        prefix = _REDRAW if self.tty else ""
        print(prefix + text, file=self.stream, flush=True)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in counts.items() if n)
