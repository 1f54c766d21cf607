"""The commands for the people who run the fleet: `svdq stats`, `exporter`, `dead`, `doctor`,
and `demo` (the whole stack on one machine)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from svdq.producer.client import Client
from svdq.producer.dead import cap_note, dead_jobs, describe, retry_dead
from svdq.producer.demo import run_demo
from svdq.producer.doctor import run_doctor
from svdq.producer.exporter import serve
from svdq.producer.services import require
from svdq.producer.stats import print_stats
from svdq.shared.settings import Settings


def add_stats(sub: Any) -> None:
    """`svdq stats [--json] [--watch [SECONDS]]`."""
    stats = sub.add_parser("stats", help="queues, workers, throughput and failures now")
    stats.add_argument("--json", action="store_true", help="one JSON object (per refresh)")
    stats.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    stats.set_defaults(handler=cmd_stats)


def add_exporter(sub: Any) -> None:
    """`svdq exporter [--port N] [--once]`."""
    exporter = sub.add_parser("exporter", help="serve queue metrics to Prometheus")
    exporter.add_argument("--port", type=int, default=9800, help="HTTP port (default 9800)")
    exporter.add_argument(
        "--host",
        default=None,
        help="address to listen on (default SVDQ_METRICS_HOST: 127.0.0.1; 0.0.0.0 in a container)",
    )
    exporter.add_argument("--once", action="store_true", help="print one scrape and exit")
    exporter.set_defaults(handler=cmd_exporter)


def add_dead(sub: Any) -> None:
    """`svdq dead list [--json] | retry JOB...`."""
    dead = sub.add_parser("dead", help="jobs that used up their deliveries")
    dsub = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    dlist = dsub.add_parser("list", help="dead-lettered jobs with every attempt's reason")
    dlist.add_argument("--json", action="store_true", help="one JSON record per line")
    dretry = dsub.add_parser("retry", help="queue dead-lettered jobs again, deliveries reset")
    dretry.add_argument("jobs", nargs="+", metavar="JOB")
    dead.set_defaults(handler=cmd_dead)


def add_doctor(sub: Any) -> None:
    """`svdq doctor [--json]`."""
    doctor = sub.add_parser("doctor", help="check the settings against svdq's delivery promises")
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")
    doctor.set_defaults(handler=cmd_doctor)


def add_demo(sub: Any) -> None:
    """`svdq demo [--output DIR]`."""
    demo = sub.add_parser("demo", help="the whole stack on this machine, end to end")
    demo.add_argument("--output", default="demo-output", help="where clips land")
    demo.set_defaults(handler=cmd_demo)


def cmd_stats(args: argparse.Namespace) -> int:
    """Queues, workers, throughput and failures, once or every --watch seconds."""
    settings = Settings.from_env()
    require(settings, store=False)  # Redis down: one sentence, exit 1
    return print_stats(settings, args.json, args.watch)


def cmd_exporter(args: argparse.Namespace) -> int:
    """Serve the same numbers to Prometheus, once Redis answers (a scrape during a later
    outage reports svdq_exporter_redis_up 0)."""
    settings = Settings.from_env()
    require(settings, store=False)
    host = args.host or settings.metrics_host
    return serve(settings, args.port, once=args.once, host=host)


def cmd_dead(args: argparse.Namespace) -> int:
    """List the dead-lettered jobs, or queue some of them again."""
    client = Client()
    if args.dead_command == "list":
        for record in dead_jobs(client.jobqueue.redis):
            print(json.dumps(record) if args.json else describe(record))
        note = cap_note(client.jobqueue.redis, client.settings.dead_letter_max)
        if note:  # after the list; on stderr with --json, so stdout stays one record a line
            print(note, file=sys.stderr if args.json else sys.stdout)
        return 0
    for job in args.jobs:
        print(f"{retry_dead(client, job).job_id}: queued again")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the settings against svdq's delivery promises."""
    return run_doctor(as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    """Redis, an S3 server, a worker and three clips on this machine."""
    return run_demo(args.output)
