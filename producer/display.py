"""Progress lines for people: one updating line on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from svdq.shared.states import JobState


class ProgressPrinter:
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
            print(
                json.dumps(
                    {"event": "progress", **{k: v for k, v in status.items() if k != "result"}}
                ),
                file=self.stream,
            )
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
            print(f"\r\033[K{text}", end=end, file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)
