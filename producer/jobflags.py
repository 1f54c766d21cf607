"""Command-line job flags, built from the JobSpec field table so the two never drift apart."""

from __future__ import annotations

import argparse
from typing import Any

from svdq.shared import formats
from svdq.shared.errors import InvalidJobError
from svdq.shared.fields import FIELDS, Field
from svdq.shared.spec import check_job_id

SKIP = {"image"}


def flag_name(f: Field) -> str:
    """--frames, --steps, --motion-bucket-id, ..."""
    return f.flag or "--" + f.name.replace("_", "-")


def _seed(value: str) -> int | str:
    if value == "random":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not allowed: a whole number 0–4294967295 or 'random'"
        ) from None


def job_id_arg(value: str) -> str:
    """A JOB argument (status, wait, cancel, results): a job id by the spec's rule, so an
    empty or hostile one gets argparse's one-line error, not a traceback from Celery
    (celery/result.py refuses an empty task id with ValueError)."""
    try:
        return check_job_id(value)
    except InvalidJobError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _meta(value: str) -> tuple[str, str]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed: KEY=VALUE")
    key, _, val = value.partition("=")
    return key, val


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per JobSpec field; a flag left out keeps the field's default."""
    group = parser.add_argument_group("job flags (the JobSpec fields, diffusers' names)")
    for f in FIELDS:
        if f.name in SKIP:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
        default = f" (default: {f.default})" if f.default not in (None, ()) else ""
        if f.name == "formats":
            default = f" (repeatable; default: {', '.join(f.default)})"
            kwargs.update(action="append", choices=[*(f.choices or ()), *formats.ALIASES])
        elif f.name == "metadata":
            kwargs.update(action="append", type=_meta, metavar="KEY=VALUE")
            default = " (repeatable)"
        elif f.name == "seed":
            kwargs.update(type=_seed)
        elif f.type == "boolean":  # a switch: given means true, left out keeps the default
            kwargs.update(action="store_const", const=True)
            default = ""
        elif f.choices:
            kwargs.update(choices=f.choices)
        elif f.type == "integer":
            kwargs.update(type=int)
        elif f.type == "number":
            kwargs.update(type=float)
        group.add_argument(flag_name(f), help=f.help + default, **kwargs)


def spec_params(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """The job fields given on the command line, and whether a random seed was asked for."""
    params: dict[str, Any] = {}
    for f in FIELDS:
        value = getattr(args, f.name, None)
        if f.name in SKIP or value is None:
            continue
        if f.name == "metadata":
            value = dict(value)
        params[f.name] = value
    random_seed = params.get("seed") == "random"
    if random_seed:
        del params["seed"]
    return params, random_seed
