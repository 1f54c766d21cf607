"""The bulk commands: `svdq bulk` (submit a folder or a manifest, optionally wait and write
the report) and the `--batch` forms of `wait` and `status`, which pick a batch up again from
any process."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from svdq.producer.batch import check_batch_id, new_batch_id
from svdq.producer.bulk import BulkSubmitter
from svdq.producer.client import Client
from svdq.producer.jobflags import add_job_flags, spec_params
from svdq.producer.journal import BatchJournal
from svdq.producer.lost import lost_batch, no_journal
from svdq.producer.manifest import Row, iter_source
from svdq.producer.progress import BulkProgress, say
from svdq.producer.services import require
from svdq.producer.sheet import PRESIGN, THUMB, check_report, write_batch_report, write_sheet
from svdq.shared.constants import batch_key
from svdq.shared.errors import InvalidJobError, WaitTimeoutError
from svdq.shared.spec import JobSpec
from svdq.shared.states import JobState

REPORT_HELP = "one row per source, .csv or .jsonl; .html: the contact sheet (see svdq report)"


def add_bulk(sub: Any) -> None:
    """`svdq bulk SOURCE [job flags] [--wait] [--report FILE]`."""
    bulk = sub.add_parser(
        "bulk",
        help="submit a folder of images or a .csv/.jsonl manifest",
        description="Submit every image under a folder (recursively), or one job per manifest "
        "row (any JobSpec field as a column or key; flags give defaults, rows override). "
        "Jobs already done or queued are not submitted again.",
    )
    bulk.add_argument("source", metavar="SOURCE", help="a folder, a .csv or a .jsonl manifest")
    bulk.add_argument("--wait", action="store_true", help="wait for every job, show progress")
    bulk.add_argument("--timeout", type=float, help="seconds --wait waits (default: forever)")
    bulk.add_argument("--report", metavar="FILE", help=f"needs --wait: {REPORT_HELP}")
    bulk.add_argument("--presign", type=int, metavar="SECONDS", help="add links to the report")
    bulk.add_argument("--force", action="store_true", help="submit again even if done or queued")
    bulk.add_argument(
        "--strict", action="store_true", help="check every row first; any bad row queues nothing"
    )
    bulk.add_argument(
        "--batch-id", help="name the batch (default: a new id); reuse it to add to one"
    )
    bulk.add_argument("--threads", type=int, default=8, help="parallel uploads (default: 8)")
    bulk.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    bulk.add_argument(
        "--no-sent-events",
        action="store_true",
        help="skip Celery's task-sent event per job: faster enqueue; monitors then see each "
        "job from when a worker receives it",
    )
    add_job_flags(bulk)
    bulk.set_defaults(handler=cmd_bulk)


def add_batch_flags(cmd: argparse.ArgumentParser, name: str) -> None:
    """`--batch` (and for wait, `--report`/`--presign`) on `status` and `wait`."""
    cmd.add_argument("--batch", help="the jobs of this bulk batch")
    if name == "wait":
        cmd.add_argument("--report", metavar="FILE", help=REPORT_HELP)
        cmd.add_argument("--presign", type=int, metavar="SECONDS", help="add links to the report")


def cmd_bulk(args: argparse.Namespace) -> int:
    """Submit SOURCE; with --wait follow the batch and write the report."""
    if args.threads < 1:
        raise InvalidJobError(f"--threads={args.threads} is not allowed: 1 or more")
    if (args.report or args.presign) and not args.wait:
        # The report is written when the jobs have ended; without --wait it never would be.
        raise InvalidJobError(
            f"--report/--presign need --wait; or submit now and later run "
            f"`svdq wait --batch BATCH --report {args.report or 'FILE'}`",
            field="report",
        )
    check_wait_report(args)  # before anything is queued: a refused report would come last
    params, random_seed = spec_params(args)
    try:
        rows = iter_source(args.source, params)
    except (FileNotFoundError, ValueError) as exc:
        raise InvalidJobError(str(exc), field="source") from None
    if args.strict:
        bad = strict_check(iter_source(args.source, params))
        if bad:
            for line in bad[:50]:
                print(f"svdq: error: {line}", file=sys.stderr)
            print(f"svdq: {len(bad)} bad row(s), --strict: nothing queued", file=sys.stderr)
            return 2
    client = Client()
    # Redis or the store down now: one sentence (producer/cli.py), not a failure per row.
    require(client.settings)
    show = BulkProgress(as_json=args.json)
    batch_id = args.batch_id or new_batch_id()
    journal = BatchJournal(client.settings, check_batch_id(batch_id), str(args.source))
    bulk = BulkSubmitter(
        client.jobqueue,
        batch_id=batch_id,
        force=args.force,
        random_seed=random_seed,
        threads=args.threads,
        on_event=show.event,
        sent_events=False if args.no_sent_events else None,
        journal=journal,
    )
    follow = f"svdq wait --batch {batch_id}" + (f" --report {args.report}" if args.report else "")
    try:
        summary = bulk.run(rows, source=str(args.source))
    except KeyboardInterrupt:
        show.finish()
        print(
            f"svdq: interrupted; {bulk.summary.line()} so far in batch {batch_id}. Every job "
            f"already queued stays queued: follow them with `{follow}`, or run the same "
            "command again to submit the rest",
            file=sys.stderr,
        )
        return 130
    finally:
        journal.close()
    show.finish()
    say(
        args.json,
        {"event": "submitted", "batch_id": batch_id, **summary.counts},
        f"batch {batch_id}: {summary.line()} ({summary.seconds:.1f}s)",
    )
    code = 1 if summary.counts["invalid"] or summary.counts["upload_failed"] else 0
    if not args.wait:
        if not args.json:
            print(f"follow with: {follow}", file=sys.stderr)
        return code
    return max(code, _wait_batch(client, batch_id, args, show))


def check_wait_report(args: argparse.Namespace) -> None:
    """Refuse --report/--presign that could not be honoured when the jobs end (a presign out
    of range, a folder that is missing or not writable), as `svdq report` refuses them, before
    anything is queued or waited for."""
    report, presign = getattr(args, "report", None), getattr(args, "presign", None)
    if report:
        check_report(report, presign)
    elif presign is not None and presign < 1:
        raise InvalidJobError(f"--presign={presign} is not allowed: 1 or more", "presign")


def strict_check(rows: Iterable[Row]) -> list[str]:
    """Every problem `--strict` refuses: bad rows and specs that fail validation (no I/O)."""
    bad = []
    for row in rows:
        if row.error:
            bad.append(f"{row.source}: {row.error}")
        elif row.data is not None:
            try:
                JobSpec.from_dict(row.data)
            except InvalidJobError as exc:
                bad.append(f"{row.source}: {exc}")
    return bad


def _wait_batch(client: Client, batch_id: str, args: argparse.Namespace, show: BulkProgress) -> int:
    batch = client.batch(batch_id)
    try:
        counts = batch.wait(timeout=args.timeout, on_update=show.counts)
    except WaitTimeoutError as exc:
        show.finish()
        print(f"svdq: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        show.finish()
        print(
            f"svdq: stopped waiting; the jobs go on: `svdq wait --batch {batch_id}`",
            file=sys.stderr,
        )
        return 130
    show.finish()
    # No job left at all (the batch's record went while we waited) or some unknown: did Redis
    # lose them? Then say so, with the command that sends them again.
    if (not counts or counts.get(JobState.UNKNOWN)) and _said_lost(client, batch_id, args.json):
        return 1
    if args.report:
        written = write_batch_report(args.report, batch, args.presign)
        say(
            args.json,
            {"event": "report", "path": args.report, **written},
            f"report {args.report}: " + ", ".join(f"{n} {s}" for s, n in written.items()),
        )
    say(
        args.json,
        {"event": "done", "batch_id": batch_id, **counts},
        f"batch {batch_id}: " + ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items())),
    )
    ended_badly = (JobState.FAILED, JobState.CANCELLED, JobState.UNKNOWN)
    return 1 if any(counts.get(s) for s in ended_badly) else 0


def _said_lost(client: Client, batch_id: str, as_json: bool) -> bool:
    """If Redis lost the batch's record or jobs that this machine's journal lists: say so,
    with the one command that resubmits them, and return True."""
    lost = lost_batch(client.jobqueue, batch_id)
    if lost is None:
        return False
    say(as_json, lost.event(), f"svdq: {lost.text()}")
    return True


def _known(client: Client, batch_id: str, as_json: bool) -> bool:
    """Whether Redis holds the batch; if not, say what this machine knows of it (its journal
    and the store tell a lost batch from one never submitted) and return False."""
    if client.jobqueue.redis.exists(batch_key(check_batch_id(batch_id))):
        return True
    if not _said_lost(client, batch_id, as_json):
        raise InvalidJobError(no_journal(client.jobqueue, batch_id), field="batch_id")
    return False


def add_report(sub: Any) -> None:
    """`svdq report --batch B -o FILE [--presign SECONDS] [--thumb PX]`."""
    report = sub.add_parser(
        "report",
        help="a batch's report now: the HTML contact sheet, CSV or JSON lines",
        description="Write the report of a batch as it is now (open jobs show as queued or "
        "running). FILE ending in .html: a contact sheet, one self-contained page (pictures "
        "embedded, works offline) with each clip's poster beside its source, scores, badges "
        "(failed, repaired, static, flicker), reasons and presigned links; filter by badge, "
        "sort by score. .csv: CSV; anything else: JSON lines.",
    )
    report.add_argument("--batch", required=True, help="the bulk batch")
    report.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write")
    report.add_argument(
        "--presign",
        type=int,
        metavar="SECONDS",
        help=f"links valid this long (the sheet: default {PRESIGN} = 7 days, the most S3 allows; "
        ".csv/.jsonl: no links without it)",
    )
    report.add_argument(
        "--thumb", type=int, default=THUMB, metavar="PX", help=f"picture size (default {THUMB})"
    )
    report.add_argument("--threads", type=int, default=8, help="parallel fetches (default: 8)")
    report.add_argument("--json", action="store_true", help="print the counts as JSON")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the batch's report to --output as it is now."""
    if not 16 <= args.thumb <= 2048:
        raise InvalidJobError(f"--thumb={args.thumb} is not allowed: 16 to 2048", field="thumb")
    check_report(args.output, args.presign, "-o")  # before a picture is fetched
    client = Client()
    if not _known(client, args.batch, args.json):
        return 1
    batch = client.batch(args.batch)
    if args.output.lower().endswith((".html", ".htm")):
        written = write_sheet(args.output, batch, args.presign, args.thumb, args.threads)
    else:
        written = write_batch_report(args.output, batch, args.presign)
    say(
        args.json,
        {"event": "report", "path": args.output, **written},
        f"report {args.output}: " + ", ".join(f"{n} {s}" for s, n in written.items()),
    )
    return 0


def cmd_wait_batch(args: argparse.Namespace) -> int:
    """`svdq wait --batch ID [--report FILE]`: pick a batch up again from any process."""
    check_wait_report(args)
    client = Client()
    if not _known(client, args.batch, args.json):
        return 1
    return _wait_batch(client, args.batch, args, BulkProgress(as_json=args.json))


def cmd_status_batch(args: argparse.Namespace) -> int:
    """`svdq status --batch ID`: the submission record and how many jobs are in each state."""
    client = Client()
    if not _known(client, args.batch, args.json):
        return 1
    batch = client.batch(args.batch)
    info, counts = batch.info(), batch.counts()
    if args.json:
        print(json.dumps({**info, "states": counts}))
    else:
        done = "complete" if info["complete"] else "INCOMPLETE (interrupted; run bulk again)"
        print(f"batch {args.batch}: {info['jobs']:,} jobs from {info['source']}, submission {done}")
        print("  " + ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items())))
        if info["invalid"] or info["skipped"] or info["upload_failed"]:
            print(
                f"  {info['invalid']:,} invalid rows, {info['skipped']:,} skipped files, "
                f"{info['upload_failed']:,} inputs that could not be stored"
            )
    if counts.get(JobState.UNKNOWN) and _said_lost(client, args.batch, args.json):
        return 1
    return 1 if any(counts.get(s) for s in (JobState.FAILED, JobState.CANCELLED)) else 0
