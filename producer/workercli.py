"""The commands that need the worker parts (`pip install 'svdq[worker]'`): `svdq run`,
`worker`, `plan`, `model` and `callbacks`.

Each imports its `svdq.worker` module only when it runs (`_worker_side`), so a producer-only
install keeps every other command, and says how to get these.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from svdq.producer.jobflags import add_job_flags, spec_params
from svdq.producer.services import require
from svdq.shared import formats, variants
from svdq.shared.errors import ConfigError
from svdq.shared.settings import Settings


def add_run(sub: Any) -> None:
    """`svdq run IMAGE -o OUT [job flags]`."""
    run = sub.add_parser("run", help="generate one clip in this process, no queue")
    run.add_argument("image", help="input image file (PNG, JPEG, WebP, GIF, BMP, TIFF)")
    run.add_argument(
        "-o",
        "--output",
        required=True,
        help=f"output file: {formats.in_words(formats.suffixes())}",
    )
    add_job_flags(run)
    run.set_defaults(handler=cmd_run)


def add_worker(sub: Any) -> None:
    """`svdq worker [--gpus ...] [--queues ...]`."""
    worker = sub.add_parser(
        "worker",
        help="run a worker on this machine (needs svdq[worker])",
        description="One supervised Celery worker per GPU (or one CPU worker). SVDQ_OVERLAP "
        "sets how many jobs each holds at once: 1 (default) runs one job at a time in a "
        "prefork child, so the GPU idles while a job encodes and uploads; 2 runs Celery's "
        "threads pool in one process with the model loaded once, the next job fetched, "
        "fitted and on the GPU while the last one encodes and uploads (the GPU phase one job "
        "at a time under a lock). Cost of 2: a second job's frames in RAM and one more CPU "
        "core per GPU; time limits become a per-step check plus a watchdog that restarts the "
        "worker (both held jobs come back), and Flower's Terminate becomes a cancel.",
    )
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
    worker.set_defaults(handler=cmd_worker)


def add_plan(sub: Any) -> None:
    """`svdq plan [--vram SIZE --capability X.Y] [--variant V]`."""
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
    plan.set_defaults(handler=cmd_plan)


def add_model(sub: Any) -> None:
    """`svdq model make-tiny [DIR]`."""
    model = sub.add_parser("model", help="model files")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    tiny = msub.add_parser("make-tiny", help="build and save the tiny random-weight pipeline")
    tiny.add_argument("dir", nargs="?", help="where (default: $SVDQ_MODEL_DIR/tiny)")
    model.set_defaults(handler=cmd_model)


def add_callbacks(sub: Any) -> None:
    """`svdq callbacks [--concurrency N]`."""
    cb = sub.add_parser("callbacks", help="deliver result callbacks (queue svdq.callbacks, no GPU)")
    cb.add_argument("--concurrency", type=int, default=8, help="parallel POSTs (default: 8)")
    cb.add_argument("--name", default="callbacks@%h", help="worker name")
    cb.set_defaults(handler=cmd_callbacks)


# What the `worker` extra adds that generating a clip needs. svdq.worker itself ships in every
# install and imports torch only inside functions, so importing it proves nothing: look first.
PIPELINE_PACKAGES = ("torch", "diffusers", "transformers", "imageio_ffmpeg")


def _worker_side(module: str, attr: str, needs: tuple[str, ...] = PIPELINE_PACKAGES) -> Any:
    """Import a worker-side command, or say how to install what it needs."""
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"this command needs the worker parts ({', '.join(missing)} not installed): "
            "pip install 'svdq[worker]'"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(
            f"this command needs the worker parts ({exc.name} is missing): "
            "pip install 'svdq[worker]'"
        ) from None


def cmd_run(args: argparse.Namespace) -> int:
    """One clip in this process (worker.run_local), the job flags parsed here."""
    run_local = _worker_side("svdq.worker.run_local", "run_local")
    params, random_seed = spec_params(args)
    return int(run_local(args.image, args.output, params, random_seed))


def cmd_worker(args: argparse.Namespace) -> int:
    """One supervised worker per GPU (worker.launch), once Redis and the store answer."""
    launch = _worker_side("svdq.worker.launch", "launch")  # what is missing is said first
    settings = Settings.from_env()
    require(settings)  # down: a sentence and exit 1, not Celery retrying forever
    from svdq.producer.doctor import redis_warnings

    for line in redis_warnings(settings):  # as `svdq doctor` says it, where operators look
        print(f"svdq worker: {line} (svdq doctor checks the rest)", file=sys.stderr)
    return int(launch(args))


def cmd_plan(args: argparse.Namespace) -> int:
    """The profile ladder and queues a worker would use (worker.launch)."""
    return int(_worker_side("svdq.worker.launch", "plan_command", needs=())(args))


def cmd_model(args: argparse.Namespace) -> int:
    """Build and save the tiny pipeline (worker.tiny)."""
    ensure = _worker_side("svdq.worker.tiny", "ensure_tiny_model")
    target = Path(args.dir) if args.dir else Settings.from_env().model_dir / "tiny"
    print(ensure(target))
    return 0


def cmd_callbacks(args: argparse.Namespace) -> int:
    """Become the callback consumer (worker.callback_worker): POSTs, no GPU, no torch."""
    require(Settings.from_env(), store=False)  # it needs Redis only
    launch = _worker_side("svdq.worker.callback_worker", "launch", needs=())
    return int(launch(args.concurrency, args.name))
