"""Keeps one Celery worker process per GPU alive: restart with backoff, forward signals.

The supervisor is a plain loop over subprocesses; it never imports torch (the children load
the model), so it can enumerate GPUs and fork freely.

Signals: the first SIGTERM or SIGINT is passed to every child as SIGTERM — Celery's warm
shutdown, the running job finishes — and nothing is restarted any more. A second one sends
SIGQUIT (Celery's cold shutdown: stop now).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from svdq.shared.retry import compute_backoff

log = logging.getLogger("svdq.supervisor")

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
HEALTHY_AFTER = 60.0  # a child that lived this long restarts with the shortest backoff again


@dataclass
class Child:
    """One supervised worker: how to start it, and its current process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0  # deaths in a row, each after less than HEALTHY_AFTER seconds
    backoff: float = BACKOFF_START
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)  # exit codes seen


def restart_wait(quick_deaths: int) -> float:
    """Seconds before restarting a child that died `quick_deaths` times in a row without a
    healthy run: BACKOFF_START, doubling with each, never above BACKOFF_MAX."""
    return compute_backoff(quick_deaths, BACKOFF_START, BACKOFF_MAX, jitter=False)


class Supervisor:
    """Start children, restart the dead ones, stop them all on a signal."""

    def __init__(
        self,
        children: list[Child],
        output: IO[bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll: float = 0.5,
    ) -> None:
        self.children = children
        self.output = output
        self.clock = clock
        self.poll = poll
        self.stopping = 0  # signals received

    def start(self, child: Child) -> None:
        """Launch (or relaunch) one child."""
        child.proc = subprocess.Popen(child.argv, env=child.env, stdout=self.output, stderr=None)
        child.started = self.clock()
        child.restart_at = None
        log.warning("started %s (pid %d)", child.name, child.proc.pid)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """First signal: warm shutdown of every child. Second: cold shutdown."""
        self.stopping += 1
        sig = signal.SIGTERM if self.stopping == 1 else signal.SIGQUIT
        what = "warm shutdown (running jobs finish)" if sig == signal.SIGTERM else "stop now"
        log.warning("signal %d: %s of %d workers", signum, what, len(self.children))
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(sig)

    def check(self) -> None:
        """Reap dead children and relaunch the ones whose backoff has passed."""
        now = self.clock()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                code = child.proc.returncode
                child.history.append(code)
                lived = now - child.started
                # A healthy run starts the count again: its death gets the shortest wait.
                child.quick_deaths = 1 if lived >= HEALTHY_AFTER else child.quick_deaths + 1
                child.backoff = restart_wait(child.quick_deaths)
                child.proc = None
                if not self.stopping:
                    child.restart_at = now + child.backoff
                    log.warning(
                        "%s exited with %s after %.0fs; restarting in %.0fs",
                        child.name,
                        code,
                        lived,
                        child.backoff,
                    )
            if (
                not self.stopping
                and child.proc is None
                and child.restart_at is not None
                and now >= child.restart_at
            ):
                child.restarts += 1
                self.start(child)

    def run(self) -> int:
        """Supervise until a signal stopped every child; return 0, or 1 if a child failed
        during shutdown."""
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        for child in self.children:
            self.start(child)
        while True:
            self.check()
            alive = [c for c in self.children if c.proc is not None]
            if self.stopping and not alive:
                bad = [c.history[-1] for c in self.children if c.history and c.history[-1]]
                return 1 if bad else 0
            time.sleep(self.poll)
