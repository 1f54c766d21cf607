"""The single-job commands: `svdq submit`, `status`, `wait`, `results` and `schema`.

The `--batch` forms of `status` and `wait` belong to bulk submissions (producer.bulkcli).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from svdq.producer import bulkcli
from svdq.producer.client import Client
from svdq.producer.jobflags import add_job_flags, job_id_arg, spec_params
from svdq.producer.lost import unknown_job
from svdq.producer.progress import JobProgress
from svdq.shared import scores
from svdq.shared.errors import InvalidJobError, JobFailedError, WaitTimeoutError
from svdq.shared.spec import json_schema
from svdq.shared.states import JobState


def add_submit(sub: Any) -> None:
    """`svdq submit IMAGE... [job flags] [--wait]`."""
    submit = sub.add_parser("submit", help="queue images; prints one job id per image")
    submit.add_argument(
        "images", nargs="+", metavar="IMAGE", help="local file or s3://<SVDQ_S3_BUCKET>/key"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the clips, show progress")
    submit.add_argument("--timeout", type=float, help="seconds --wait waits (default: forever)")
    submit.add_argument("--force", action="store_true", help="queue even if already done")
    submit.add_argument("--json", action="store_true", help="JSON lines on stdout")
    add_job_flags(submit)
    submit.set_defaults(handler=cmd_submit)


def add_status(sub: Any) -> None:
    """`svdq status JOB... | --batch ID`."""
    _add_jobs_command(sub, "status", "where jobs are now", cmd_status)


def add_wait(sub: Any) -> None:
    """`svdq wait JOB... | --batch ID [--report FILE]`."""
    wait = _add_jobs_command(sub, "wait", "wait until jobs end", cmd_wait)
    wait.add_argument("--timeout", type=float, help="seconds to wait (default: forever)")


def _add_jobs_command(
    sub: Any, name: str, text: str, handler: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """A command over JOB ids or a whole --batch (status, wait)."""
    cmd: argparse.ArgumentParser = sub.add_parser(name, help=text)
    cmd.add_argument("jobs", nargs="*", metavar="JOB", type=job_id_arg)
    cmd.add_argument("--json", action="store_true", help="JSON lines on stdout")
    bulkcli.add_batch_flags(cmd, name)
    cmd.set_defaults(handler=handler)
    return cmd


def add_results(sub: Any) -> None:
    """`svdq results JOB [--presign SECONDS] [--download DIR]`."""
    results = sub.add_parser("results", help="a finished job's outputs and links")
    results.add_argument("job", metavar="JOB", type=job_id_arg)
    results.add_argument(
        "--presign",
        type=int,
        metavar="SECONDS",
        help="add links that work without credentials for SECONDS",
    )
    results.add_argument("--download", metavar="DIR", help="copy the outputs into DIR")
    results.add_argument("--json", action="store_true", help="the whole result record as JSON")
    results.set_defaults(handler=cmd_results)


def add_schema(sub: Any) -> None:
    """`svdq schema`."""
    sub.add_parser("schema", help="print the JobSpec JSON Schema").set_defaults(handler=cmd_schema)


def cmd_submit(args: argparse.Namespace) -> int:
    """Check every image, then queue them; with --wait follow them to the end."""
    params, random_seed = spec_params(args)
    client = Client()
    # Check every image before queueing any, so one bad file queues nothing.
    specs = [
        client.prepare({"image": img, **params}, random_seed=random_seed) for img in args.images
    ]
    handles = [
        client.enqueue(spec, force=args.force, image_name=image)
        for spec, image in zip(specs, args.images, strict=True)
    ]
    for image, h in zip(args.images, handles, strict=True):
        if args.json:
            event = {
                "event": "submitted",
                "image": image,
                "job_id": h.job_id,
                "queue": h.queue,
                "already_done": h.skipped,
            }
            print(json.dumps(event))
        else:
            print(h.job_id)
            if h.skipped:
                print(f"{image}: already done as {h.job_id} (--force to redo)", file=sys.stderr)
    if not args.wait:
        return 0
    labels = dict(zip((h.job_id for h in handles), args.images, strict=True))
    printer = JobProgress(as_json=args.json, labels=labels)
    return _wait(client, [h.job_id for h in handles], args.timeout, printer, args.json)


def _wait(
    client: Client, jobs: list[str], timeout: float | None, printer: JobProgress, as_json: bool
) -> int:
    try:
        results = client.wait(jobs, timeout=timeout, on_progress=printer)
    except (JobFailedError, WaitTimeoutError) as exc:
        print(f"svdq: {exc}", file=sys.stderr)
        for job in jobs:  # an unknown job: never submitted, or did Redis lose it? Say.
            if isinstance(exc, JobFailedError) and client.status(job)["state"] is JobState.UNKNOWN:
                print(f"svdq: {job}: {unknown_job(client.jobqueue, job)}", file=sys.stderr)
        return 1
    for job_id, result in results.items():
        uris = {k: o["uri"] for k, o in result["outputs"].items()}
        if as_json:
            print(json.dumps({"event": "done", "job_id": job_id, "outputs": uris}))
        else:
            print(f"{job_id}: " + " ".join(uris.values()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """One line (or JSON object) per job; exit 1 if any failed, was cancelled or is unknown."""
    if args.batch:
        return bulkcli.cmd_status_batch(args)
    if not args.jobs:
        raise InvalidJobError("status needs JOB ids or --batch ID")
    client, code = Client(), 0
    for job in args.jobs:
        st = client.status(job)
        if st["state"] is JobState.UNKNOWN:  # never submitted, or did Redis lose it? Say.
            st["unknown"] = unknown_job(client.jobqueue, job)
        if st["state"] in (JobState.FAILED, JobState.CANCELLED, JobState.UNKNOWN):
            code = 1
        if args.json:
            print(json.dumps(st))
            continue
        line = f"{job}: {st['state']}"
        if "phase" in st:
            line += f" ({st['phase']} {st.get('step')}/{st.get('steps')})"
        if "error" in st:
            line += f" — {st['error']}"
        if "waiting_for" in st:
            line += f" — {st['waiting_for']}"
        if "unknown" in st:
            line += f" — {st['unknown']}"
        for note in ("lost", "requeued"):  # a dead host's job: not running, and what follows
            if note in st:
                line += f" — {note}: {st[note]}"
        if "result" in st:
            line += " — " + " ".join(o["uri"] for o in st["result"]["outputs"].values())
            if text := scores.summary(st["result"].get("scores") or {}):
                line += f" — {text}"
            if text := repaired(st["result"]):
                line += f" — {text}"
        print(line)
    return code


def cmd_wait(args: argparse.Namespace) -> int:
    """Follow jobs (or a batch) until they end."""
    if args.batch:
        return bulkcli.cmd_wait_batch(args)
    if not args.jobs:
        raise InvalidJobError("wait needs JOB ids or --batch ID")
    printer = JobProgress(as_json=args.json)
    return _wait(Client(), args.jobs, args.timeout, printer, args.json)


def cmd_results(args: argparse.Namespace) -> int:
    """A finished job's record, outputs, links (--presign) and files (--download)."""
    client = Client()
    result = client.result(args.job)
    if args.presign:
        result["presigned"] = client.presign(args.job, args.presign)
    if args.download:
        folder = Path(args.download)
        folder.mkdir(parents=True, exist_ok=True)
        for kind, out in result["outputs"].items():
            (folder / out["key"].rsplit("/", 1)[-1]).write_bytes(client.download(args.job, kind))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"job {result['job_id']}: {result['variant']}, {result['num_frames']} frames "
        f"{result['width']}×{result['height']} @ {result['output_fps']} fps, seed "
        f"{result['seed']}, {result['timings'].get('total', 0):.1f}s on {result['worker']}"
    )
    if text := scores.summary(result.get("scores") or {}):
        print(f"scores: {text}")
    if text := repaired(result):
        print(text)
    if result.get("note"):
        print(f"note: {result['note']}")
    for kind, out in result["outputs"].items():
        link = result.get("presigned", {}).get(kind)
        print(
            f"  {kind:6} {out['uri']}  ({out['bytes']:,} bytes)"
            + (f"\n         {link}" if link else "")
        )
    return 0


def repaired(result: Any) -> str:
    """What a job's quality repair and candidates did, in one line ("" for a plain job):
    "repaired: static clip repaired: try 2 kept of 3 (...)", "candidates: 4 in 1 call, #2 kept".

    The record may come from a result.json someone edited (shared/records.py refuses a
    malformed one, but a status line also shows records it did not check, e.g. Celery's
    copy): a part of the wrong shape is left out, never an error."""
    quality = result.get("quality") if isinstance(result, dict) else None
    if not isinstance(quality, dict):
        return ""
    parts = []
    if isinstance(text := quality.get("repaired"), str) and text:
        parts.append(f"repaired: {text[:300]}")
    cand = quality.get("candidates")
    if isinstance(cand, dict) and all(k in cand for k in ("n", "calls", "mode")):
        kept = cand.get("kept")
        which = f"#{kept} kept" if isinstance(kept, int) else "a repair of the best kept"
        parts.append(
            f"candidates: {cand['n']!s:.10} in {cand['calls']!s:.10} call(s) "
            f"({cand['mode']!s:.40}), {which}"
        )
    return "; ".join(parts)


def cmd_schema(args: argparse.Namespace) -> int:
    """The JobSpec JSON Schema."""
    print(json.dumps(json_schema(), indent=2))
    return 0
