"""`svdq`: one command for people and scripts. Exit 0 on success, 1 when a job or service
fails, 2 for bad input (nothing is queued then). Errors go to stderr; --json to stdout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from svdq.producer import bulkcli
from svdq.producer.bulkcli import add_batch_flags
from svdq.producer.bulkcli import add_parsers as add_bulk_parsers
from svdq.producer.jobflags import add_job_flags, spec_params
from svdq.shared import formats, variants
from svdq.shared.errors import ConfigError, InvalidJobError, SvdqError
from svdq.shared.settings import describe_variables
from svdq.shared.states import JobState

EPILOG = (
    "environment (read once at start):\n"
    + describe_variables()
    + (
        "\n\nAWS credentials come from the standard AWS_* variables.\n"
        "Exit codes: 0 done, 1 a job or service failed, 2 bad input or flags (nothing queued)."
    )
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

    run = sub.add_parser("run", help="generate one clip in this process, no queue")
    run.add_argument("image", help="input image file (PNG, JPEG, WebP)")
    run.add_argument(
        "-o",
        "--output",
        required=True,
        help=f"output file: {formats.in_words(formats.suffixes())}",
    )
    add_job_flags(run)

    submit = sub.add_parser("submit", help="queue images; prints one job id per image")
    submit.add_argument(
        "images", nargs="+", metavar="IMAGE", help="local file or s3://<SVDQ_S3_BUCKET>/key"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the clips, show progress")
    submit.add_argument("--timeout", type=float, help="seconds --wait waits (default: forever)")
    submit.add_argument("--force", action="store_true", help="queue even if already done")
    submit.add_argument("--json", action="store_true", help="JSON lines on stdout")
    add_job_flags(submit)

    for name, text in (("status", "where jobs are now"), ("wait", "wait until jobs end")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("jobs", nargs="*", metavar="JOB")
        cmd.add_argument("--json", action="store_true", help="JSON lines on stdout")
        add_batch_flags(cmd, name)
        if name == "wait":
            cmd.add_argument("--timeout", type=float, help="seconds to wait (default: forever)")

    results = sub.add_parser("results", help="a finished job's outputs and links")
    results.add_argument("job", metavar="JOB")
    results.add_argument(
        "--presign",
        type=int,
        metavar="SECONDS",
        help="add links that work without credentials for SECONDS",
    )
    results.add_argument("--download", metavar="DIR", help="copy the outputs into DIR")
    results.add_argument("--json", action="store_true", help="the whole result record as JSON")

    sub.add_parser("schema", help="print the JobSpec JSON Schema")

    worker = sub.add_parser("worker", help="run a worker on this machine (needs svdq[worker])")
    worker.add_argument(
        "--variant",
        default=None,
        help=f"pin the variant every worker loads first: {', '.join(variants.BY_NAME)} "
        "(default: tiny without a GPU, else the best one each card carries: see svdq plan)",
    )
    worker.add_argument(
        "--gpus",
        default=None,
        help="'all' (default when GPUs are visible: one supervised worker per GPU), "
        "indices such as 0,2, or 'none' for one CPU worker",
    )
    worker.add_argument("--queues", help="comma-separated queues (default: what the GPU can run)")
    worker.add_argument(
        "--name", help="worker name (default: cpu@<host> / gpu<i>@<host>; %%g is the GPU index)"
    )

    plan = sub.add_parser(
        "plan",
        help="the variant, profile ladder and queues a worker here would use",
        description="The variant, memory-profile ladder and queues a worker would use on "
        "each GPU seen here, or on a card described by --vram/--capability. Honours the "
        "worker overrides SVDQ_PROFILE, SVDQ_DTYPE, SVDQ_OFFLOAD, SVDQ_FORWARD_CHUNKING, "
        "SVDQ_DECODE_CHUNK_SIZE and SVDQ_COMPILE.",
    )
    plan.add_argument("--vram", help="plan for a card with this much memory, e.g. 12GiB or 24GB")
    plan.add_argument("--capability", help="with --vram: compute capability, e.g. 8.6")
    plan.add_argument(
        "--variant",
        default="auto",
        help=f"pin the worker's variant: {', '.join(variants.VARIANTS)} (default: auto)",
    )
    plan.add_argument("--json", action="store_true", help="JSON on stdout")

    model = sub.add_parser("model", help="model files")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    tiny = msub.add_parser("make-tiny", help="build and save the tiny random-weight pipeline")
    tiny.add_argument("dir", nargs="?", help="where (default: $SVDQ_MODEL_DIR/tiny)")

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

    exporter = sub.add_parser("exporter", help="serve queue metrics to Prometheus")
    exporter.add_argument("--port", type=int, default=9800, help="HTTP port (default 9800)")
    exporter.add_argument("--once", action="store_true", help="print one scrape and exit")

    add_bulk_parsers(sub)

    dead = sub.add_parser("dead", help="jobs that used up their deliveries")
    dsub = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    dlist = dsub.add_parser("list", help="dead-lettered jobs with every attempt's reason")
    dlist.add_argument("--json", action="store_true", help="one JSON record per line")
    dretry = dsub.add_parser("retry", help="queue dead-lettered jobs again, deliveries reset")
    dretry.add_argument("jobs", nargs="+", metavar="JOB")

    doctor = sub.add_parser("doctor", help="check the settings against svdq's delivery promises")
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")

    demo = sub.add_parser("demo", help="the whole stack on this machine, end to end")
    demo.add_argument("--output", default="demo-output", help="where clips land")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `svdq` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args) or 0)
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


def _client() -> Any:
    from svdq.producer.client import Client

    return Client()


def cmd_submit(args: argparse.Namespace) -> int:
    from svdq.producer.display import ProgressPrinter

    params, random_seed = spec_params(args)
    client = _client()
    # Check every image before queueing any, so one bad file queues nothing.
    specs = [
        client.prepare({"image": img, **params}, random_seed=random_seed) for img in args.images
    ]
    handles = [client.enqueue(spec, force=args.force) for spec in specs]
    for image, h in zip(args.images, handles, strict=True):
        if args.json:
            print(
                json.dumps(
                    {
                        "event": "submitted",
                        "image": image,
                        "job_id": h.job_id,
                        "queue": h.queue,
                        "already_done": h.skipped,
                    }
                )
            )
        else:
            print(h.job_id)
            if h.skipped:
                print(f"{image}: already done as {h.job_id} (--force to redo)", file=sys.stderr)
    if not args.wait:
        return 0
    labels = dict(zip((h.job_id for h in handles), args.images, strict=True))
    printer = ProgressPrinter(as_json=args.json, labels=labels)
    return _wait(client, [h.job_id for h in handles], args.timeout, printer, args.json)


def _wait(client: Any, jobs: list[str], timeout: float | None, printer: Any, as_json: bool) -> int:
    from svdq.shared.errors import JobFailedError, WaitTimeoutError

    try:
        results = client.wait(jobs, timeout=timeout, on_progress=printer)
    except (JobFailedError, WaitTimeoutError) as exc:
        print(f"svdq: {exc}", file=sys.stderr)
        return 1
    for job_id, result in results.items():
        uris = {k: o["uri"] for k, o in result["outputs"].items()}
        if as_json:
            print(json.dumps({"event": "done", "job_id": job_id, "outputs": uris}))
        else:
            print(f"{job_id}: " + " ".join(uris.values()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.batch:
        return bulkcli.cmd_status_batch(args)
    if not args.jobs:
        raise InvalidJobError("status needs JOB ids or --batch ID")
    client, code = _client(), 0
    for job in args.jobs:
        st = client.status(job)
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
        if "result" in st:
            line += " — " + " ".join(o["uri"] for o in st["result"]["outputs"].values())
        print(line)
    return code


def cmd_wait(args: argparse.Namespace) -> int:
    from svdq.producer.display import ProgressPrinter

    if args.batch:
        return bulkcli.cmd_wait_batch(args)
    if not args.jobs:
        raise InvalidJobError("wait needs JOB ids or --batch ID")
    printer = ProgressPrinter(as_json=args.json)
    return _wait(_client(), args.jobs, args.timeout, printer, args.json)


def cmd_results(args: argparse.Namespace) -> int:
    from pathlib import Path

    client = _client()
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
    if result.get("note"):
        print(f"note: {result['note']}")
    for kind, out in result["outputs"].items():
        link = result.get("presigned", {}).get(kind)
        print(
            f"  {kind:6} {out['uri']}  ({out['bytes']:,} bytes)"
            + (f"\n         {link}" if link else "")
        )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from svdq.shared.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _worker_side(module: str, attr: str) -> Any:
    """Import a worker-side command, or say how to install it."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(
            f"this command needs the worker parts ({exc.name} is missing): "
            "pip install 'svdq[worker]'"
        ) from None


def cmd_run(args: argparse.Namespace) -> int:
    run_local = _worker_side("svdq.worker.run_local", "run_local")
    params, random_seed = spec_params(args)
    return int(run_local(args.image, args.output, params, random_seed))


def cmd_worker(args: argparse.Namespace) -> int:
    return int(_worker_side("svdq.worker.launch", "launch")(args))


def cmd_plan(args: argparse.Namespace) -> int:
    return int(_worker_side("svdq.worker.launch", "plan_command")(args))


def cmd_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from svdq.shared.settings import Settings

    ensure = _worker_side("svdq.worker.tiny", "ensure_tiny_model")
    target = Path(args.dir) if args.dir else Settings.from_env().model_dir / "tiny"
    print(ensure(target))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from svdq.producer.stats import print_stats
    from svdq.shared.settings import Settings

    return print_stats(Settings.from_env().redis_url, args.json, args.watch)


def cmd_exporter(args: argparse.Namespace) -> int:
    from svdq.producer.exporter import serve
    from svdq.shared.settings import Settings

    return serve(Settings.from_env().redis_url, args.port, once=args.once)


def cmd_demo(args: argparse.Namespace) -> int:
    from svdq.producer.demo import run_demo

    return run_demo(args.output)


def cmd_dead(args: argparse.Namespace) -> int:
    from svdq.producer.dead import dead_jobs, describe, retry_dead

    client = _client()
    if args.dead_command == "list":
        for record in dead_jobs(client.jobqueue.redis):
            print(json.dumps(record) if args.json else describe(record))
        return 0
    for job in args.jobs:
        print(f"{retry_dead(client, job).job_id}: queued again")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from svdq.producer.doctor import run_doctor

    return run_doctor(as_json=args.json)


COMMANDS = {
    "dead": cmd_dead,
    "doctor": cmd_doctor,
    "run": cmd_run,
    "submit": cmd_submit,
    "status": cmd_status,
    "wait": cmd_wait,
    "results": cmd_results,
    "schema": cmd_schema,
    "worker": cmd_worker,
    "plan": cmd_plan,
    "model": cmd_model,
    "demo": cmd_demo,
    "stats": cmd_stats,
    "exporter": cmd_exporter,
    "bulk": bulkcli.cmd_bulk,
    "cancel": bulkcli.cmd_cancel,
    "callbacks": bulkcli.cmd_callbacks,
}

if __name__ == "__main__":
    sys.exit(main())
