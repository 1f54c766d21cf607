"""`svdq cancel JOB... | --batch ID`: queued jobs never run, running ones stop at their next
step (the work itself is producer.cancel's)."""

from __future__ import annotations

import argparse
from typing import Any

from svdq.producer.client import Client
from svdq.producer.jobflags import job_id_arg
from svdq.producer.progress import say
from svdq.shared.errors import InvalidJobError


def add_cancel(sub: Any) -> None:
    """`svdq cancel JOB... | --batch ID [--json]`."""
    cancel = sub.add_parser("cancel", help="cancel jobs: queued ones never run, running ones stop")
    cancel.add_argument("jobs", nargs="*", metavar="JOB", type=job_id_arg)
    cancel.add_argument("--batch", help="cancel every unfinished job of this batch")
    cancel.add_argument("--json", action="store_true", help="JSON lines on stdout")
    cancel.set_defaults(handler=cmd_cancel)


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel the jobs named and every unfinished job of --batch; exit 1 if one is unknown."""
    if not args.jobs and not args.batch:
        raise InvalidJobError("cancel needs JOB ids or --batch ID")
    client = Client()
    if args.batch:
        counts = client.batch(args.batch).cancel()
        say(
            args.json,
            {"event": "cancel", "batch_id": args.batch, **counts},
            f"batch {args.batch}: "
            + (", ".join(f"{n:,} {w}" for w, n in counts.items()) or "no jobs"),
        )
    outcome = client.cancel(args.jobs) if args.jobs else {}
    for job_id, what in outcome.items():
        say(args.json, {"event": "cancel", "job_id": job_id, "outcome": what}, f"{job_id}: {what}")
    return 1 if "unknown" in outcome.values() else 0
