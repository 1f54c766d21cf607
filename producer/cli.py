"""`svdq`: one command for people and scripts. Exit 0 on success, 1 when a job or service
fails, 2 for bad input (nothing is queued then). Errors go to stderr; --json to stdout.

This module is the command tree and the exit codes; each command's flags and code live in
the module named for what it does: jobcli (submit, status, wait, results, schema), bulkcli
(bulk, report and the --batch forms), cancelcli (cancel), workercli (run, worker, plan, model,
callbacks: the commands that need svdq[worker]), opscli (stats, exporter, dead, doctor, demo).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from svdq.producer import apicli, bulkcli, cancelcli, jobcli, opscli, workercli
from svdq.producer.services import outage
from svdq.shared.errors import ConfigError, InvalidJobError, SvdqError
from svdq.shared.settings import Settings
from svdq.shared.variables import describe_variables

EPILOG = (
    "environment (read once at start):\n"
    + describe_variables()
    + (
        "\n\nAWS credentials come from the standard AWS_* variables.\n"
        "Exit codes: 0 done, 1 a job or service failed, 2 bad input or flags (nothing queued)."
    )
)

# Every command, in the order `svdq --help` lists them. Each adds its parser and sets
# `handler`, the function that runs it.
COMMANDS: tuple[Callable[[Any], None], ...] = (
    workercli.add_run,
    jobcli.add_submit,
    jobcli.add_status,
    jobcli.add_wait,
    jobcli.add_results,
    jobcli.add_schema,
    workercli.add_worker,
    workercli.add_plan,
    workercli.add_model,
    opscli.add_stats,
    opscli.add_exporter,
    bulkcli.add_bulk,
    bulkcli.add_report,
    cancelcli.add_cancel,
    workercli.add_callbacks,
    opscli.add_dead,
    opscli.add_doctor,
    opscli.add_demo,
    apicli.add_api,
    apicli.add_token,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    p = argparse.ArgumentParser(
        prog="svdq",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="Turn still images into short videos with Stable Video Diffusion, "
        "through a Redis queue and GPU workers.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `svdq` console script."""
    args = build_parser().parse_args(argv)
    try:
        try:
            return int(args.handler(args) or 0)
        except Exception as exc:
            down = outage(exc, _settings())  # Redis or the store: a sentence, not a traceback
            if down is None:
                raise
            print(f"svdq: {down}", file=sys.stderr)
            return 1
    except InvalidJobError as exc:
        print(f"svdq: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"svdq: configuration error: {exc}", file=sys.stderr)
        return 2
    except SvdqError as exc:
        print(f"svdq: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "svdq: interrupted; queued jobs stay queued (follow them with `svdq wait`)",
            file=sys.stderr,
        )
        return 130


def _settings() -> Settings | None:
    """The settings, for naming a service's address; None when they cannot be read."""
    try:
        return Settings.from_env()
    except ConfigError:
        return None


if __name__ == "__main__":
    sys.exit(main())
