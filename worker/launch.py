"""`svdq worker` and `svdq plan`: read the GPUs, plan each worker, start them supervised.

The parent never imports torch or touches CUDA: GPUs are read through NVML / nvidia-smi and
the model loads in each worker's pool child (with SVDQ_OVERLAP ≥ 2: in each worker process,
which runs Celery's threads pool, worker/overlap.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

from svdq.shared import shapes
from svdq.shared.errors import ConfigError, ModelNotFoundError
from svdq.shared.settings import Settings
from svdq.worker.compilecache import check_root
from svdq.worker.devices import DevicePlan, device_plan
from svdq.worker.gpuinfo import (
    Device,
    parse_capability,
    parse_size,
    read_devices,
    torch_build,
    use_pci_bus_order,
    visible,
)
from svdq.worker.profiles import GB, GIB, Profile

APP = "svdq.worker.tasks"  # the Celery app (-A) every worker runs
THREAD_POOL = "svdq.worker.threadpool:TaskPool"  # Celery's threads pool, Terminate = cancel
CUDA_WHEELS = "https://download.pytorch.org/whl/cu128"  # CUDA 12.8: drivers 570 and newer


def pool_args(overlap: int) -> list[str]:
    """The pool for SVDQ_OVERLAP: 1, prefork with one child (Celery's time limits and
    lost-child detection); 2 or more, that many threads in one process (worker/overlap.py)."""
    if overlap <= 1:
        return ["--pool=prefork", "--concurrency=1"]
    # Celery's CLI takes only its own pool names; "custom" is the class named by
    # CELERY_CUSTOM_WORKER_POOL (celery/concurrency/__init__.py: `ALIASES['custom'] = custom`),
    # which `pool_env` sets.
    return ["--pool=custom", f"--concurrency={overlap}"]


def pool_env(overlap: int) -> dict[str, str]:
    """The environment `pool_args` needs: the threads pool's class (worker/threadpool.py)."""
    return {"CELERY_CUSTOM_WORKER_POOL": THREAD_POOL} if overlap > 1 else {}


def worker_argv(
    queues: list[str], name: str, log_level: str, app: str = APP, overlap: int = 1
) -> list[str]:
    """The celery command line for one worker: prefork and one process (or, with overlap,
    threads), one message prefetched per job slot, late acks, events."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        *pool_args(overlap),
        "--prefetch-multiplier=1",
        f"--queues={','.join(queues)}",
        f"--hostname={name}",
        f"--loglevel={log_level}",
        "--task-events",
        "--without-gossip",
        "--without-mingle",
    ]


def pick_gpus(choice: str | None, devices: list[Device]) -> list[Device]:
    """The devices `--gpus` selects: all (the default), a comma list of indices, or none."""
    if choice in (None, "") and not devices:
        return []
    if choice == "none":
        return []
    if choice in (None, "", "all"):
        if not devices:
            raise ConfigError(
                "--gpus=all found no GPU (NVML and nvidia-smi report none); use --gpus none "
                "for a CPU worker"
            )
        return devices
    assert choice is not None
    known = {d.index: d for d in devices}
    picked = []
    for part in choice.split(","):
        if not part.strip().isdigit() or int(part) not in known:
            raise ConfigError(
                f"--gpus={choice!r} is not allowed: 'all', 'none' or GPU indices from "
                f"{sorted(known) or 'none (no GPU visible)'}, e.g. 0,2"
            )
        picked.append(known[int(part)])
    return picked


def weights_note(settings: Settings, variant: str) -> str:
    """Where the variant's weights load from, or why they cannot."""
    from svdq.worker.models import model_source

    try:
        return str(model_source(settings, variant))
    except ModelNotFoundError as exc:
        return "MISSING: " + " ".join(line.strip() for line in str(exc).splitlines())


def missing_weights(plan: DevicePlan, settings: Settings) -> list[str]:
    """Variants the device could run besides its default whose weights are not here: the
    worker leaves their queues alone rather than take jobs it would fail."""
    from svdq.worker.models import model_source

    missing = []
    for queue in plan.queues:
        variant = queue.removeprefix("svdq.")
        if variant in ("auto", "tiny", plan.default_variant):
            continue
        try:
            model_source(settings, variant)
        except ModelNotFoundError:
            missing.append(variant)
    return missing


def consumed_queues(plan: DevicePlan, settings: Settings) -> list[str]:
    """The plan's queues less those of variants whose weights are missing."""
    skip = {f"svdq.{v}" for v in missing_weights(plan, settings)}
    return [q for q in plan.queues if q not in skip]


def _describe(profile: Profile) -> str:
    chunk = profile.decode_chunk_size or "all"
    return (
        f"{profile.name:<9} {profile.variant:<10} {profile.dtype:<8} offload {profile.offload:<10}"
        f" chunking {'yes' if profile.forward_chunking else 'no ':<3}  decode {chunk!s:<3}"
        f" compile {'yes' if profile.compile else 'no'}"
        + (" (unavailable here)" if profile.compile_unavailable else "")
    )


def format_plan(plan: DevicePlan, weights: str, missing: list[str] | None = None) -> str:
    """A plan as people read it (`svdq plan`, the worker's start-up log)."""
    dev = plan.device
    if dev is None:
        head = "CPU (no CUDA)"
    else:
        cap = f"{dev.capability[0]}.{dev.capability[1]}" if dev.capability else "unknown"
        head = (
            f"GPU {dev.index}: {dev.name}, {dev.total_bytes / GB:.1f} GB "
            f"({dev.total_bytes / GIB:.1f} GiB), compute capability {cap}"
        )
    lines = [
        head,
        f"  default variant: {plan.default_variant} (what `auto` jobs get here)",
        f"  weights: {weights}",
        f"  queues: {', '.join(plan.queues)}",
        *(
            [
                f"  weights missing for {', '.join(missing)}: the worker skips their queues",
                "  consumes now: "
                + ", ".join(q for q in plan.queues if q.removeprefix("svdq.") not in missing),
            ]
            if missing
            else []
        ),
        *(
            [f"  compile unavailable: {plan.compile_unavailable}; those rungs run eagerly"]
            if any(p.compile_unavailable for p in plan.ladder)
            else []
        ),
        *(
            [
                "  compiled at load (SVDQ_WARM_SHAPES): "
                + ", ".join(map(shapes.text, plan.warm_shapes))
                + "; jobs of other shapes run eagerly"
            ]
            if plan.warm_shapes
            else []
        ),
        "  profile ladder (an out-of-memory error steps one rung down):",
    ]
    lines += [f"    {i}. {_describe(p)}" for i, p in enumerate(plan.ladder, 1)]
    return "\n".join(lines)


def plan_command(args: argparse.Namespace, devices: list[Device] | None = None) -> int:
    """`svdq plan`: the plan for every GPU here (`devices`, default: read them now), or for
    the card `--vram [--capability]` describes."""
    settings = Settings.from_env()
    if args.vram:
        cap = parse_capability(args.capability) if args.capability else None
        targets: list[Device | None] = [
            Device(0, f"--vram {args.vram}", parse_size(args.vram), None, cap)
        ]
    else:
        if args.capability:
            raise ConfigError("--capability needs --vram (a real GPU reports its own)")
        targets = [*(read_devices() if devices is None else devices)] or [None]
    plans = [device_plan(d, settings, args.variant or "auto") for d in targets]
    if args.json:
        out = [
            {
                **p.to_dict(),
                "weights": weights_note(settings, p.default_variant),
                "missing_weights": missing_weights(p, settings),
                # What `svdq worker` would consume now: `queues` less those of missing weights.
                "consumes": consumed_queues(p, settings),
            }
            for p in plans
        ]
        print(json.dumps(out, indent=2))
    else:
        texts = [
            format_plan(p, weights_note(settings, p.default_variant), missing_weights(p, settings))
            for p in plans
        ]
        print("\n\n".join(texts))
    return 0


def _prepare_model(settings: Settings, variant: str) -> None:
    """Build tiny (in a child, so this parent never runs torch) or check real weights exist."""
    if variant == "tiny":
        subprocess.run(
            [sys.executable, "-m", "svdq.worker.tiny", str(settings.model_dir / "tiny")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        from svdq.worker.models import model_source

        model_source(settings, variant)  # fail here, clearly, not in the pool child


def _child_env(plan: DevicePlan) -> dict[str, str]:
    env = {**os.environ, "SVDQ_WORKER_VARIANT": plan.default_variant}
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    use_pci_bus_order(env)  # NVML's index is the PCI bus order; make CUDA count the same way
    if plan.device is not None:
        # Its UUID when known (a MIG instance has no index), narrowing any preset list.
        env["CUDA_VISIBLE_DEVICES"] = plan.device.cuda_visible()
        env["SVDQ_GPU_INDEX"] = str(plan.device.index)
    return env


def usable_plans(
    settings: Settings, targets: list[Device | None], variant: str
) -> list[DevicePlan]:
    """A plan per target whose model can load here. With several GPUs, one that cannot run
    the variant or lacks its weights is left out, saying why; with one, that is an error."""
    plans, prepared = [], set()
    for device in targets:
        try:
            plan = device_plan(device, settings, variant)
            if plan.default_variant not in prepared:
                _prepare_model(settings, plan.default_variant)
                prepared.add(plan.default_variant)
        except ConfigError as exc:
            if len(targets) == 1:
                raise
            assert device is not None
            print(f"GPU {device.index} ({device.name}): not started: {exc}", file=sys.stderr)
            continue
        plans.append(plan)
    if not plans:
        raise ConfigError("no selected GPU can start a worker (reasons above)")
    return plans


def refuse_cpu_torch(gpu: Device) -> None:
    """A GPU next to a CPU build of torch would run every job on the CPU: stop, with the fix.
    (pip takes 2.13.0+cpu as meeting torch==2.13.0, so a venv made on a CPU host keeps it.)"""
    build = torch_build()
    if build is not None and build[1] is not None:
        return
    version = build[0].split("+")[0] if build else "2.13.0"
    have = f"torch {build[0]} here is a CPU build" if build else "torch is not installed here"
    raise ConfigError(
        f"GPU {gpu.index} ({gpu.name}) found, but {have}: the worker would not use the GPU. "
        f"Install a CUDA build (pick the CUDA version your driver supports, `nvidia-smi`):\n"
        f"  {sys.executable} -m pip install --force-reinstall torch=={version} --index-url "
        f'{CUDA_WHEELS}\nor, in a checkout: make install TORCH_SPEC="torch=={version} '
        f'--index-url {CUDA_WHEELS}". Or run a CPU worker: svdq worker --gpus none'
    )


def launch(args: argparse.Namespace, devices: list[Device] | None = None, app: str = APP) -> int:
    """Plan a worker per selected GPU (or one CPU worker) among `devices` (default: read them
    now) and run them, each a Celery worker of `app`."""
    settings = Settings.from_env()
    if settings.worker.compile_cache is not None:  # a writable directory, or stop here
        check_root(settings.worker.compile_cache)
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    found = read_devices() if devices is None else devices
    gpus = pick_gpus(args.gpus, visible(found, preset))
    if preset is not None and found:
        shown = ", ".join(str(d.index) for d in gpus) or "none"
        print(
            f"CUDA_VISIBLE_DEVICES={preset!r} was set: GPUs {shown} of this host", file=sys.stderr
        )
    if gpus:
        refuse_cpu_torch(gpus[0])
    host = socket.gethostname()
    targets: list[Device | None] = [*gpus] if gpus else [None]
    plans = usable_plans(settings, targets, args.variant or "auto")
    if args.name and len(plans) > 1 and "%g" not in args.name:
        raise ConfigError(
            f"--name={args.name!r} is not allowed with {len(plans)} GPUs: include %g (the GPU "
            "index), e.g. gpu%g@%h, so every worker gets its own name"
        )
    workers = []
    for plan in plans:
        queues = args.queues.split(",") if args.queues else consumed_queues(plan, settings)
        if plan.device is None:
            name = args.name or f"cpu@{host}"
        else:
            index = str(plan.device.index)
            name = args.name.replace("%g", index) if args.name else f"gpu{index}@{host}"
        text = format_plan(
            plan, weights_note(settings, plan.default_variant), missing_weights(plan, settings)
        )
        print(text, file=sys.stderr)
        print(f"  consuming: {', '.join(queues)}", file=sys.stderr)
        print(f"  worker name: {name}", file=sys.stderr)
        argv = worker_argv(queues, name, settings.log_level, app, settings.overlap)
        workers.append((name, argv, {**_child_env(plan), **pool_env(settings.overlap)}))
    # With overlap nothing replaces a dead process (no prefork parent; the hard-limit watchdog
    # ends the process on purpose): a CPU worker is supervised too.
    if gpus or settings.overlap > 1:
        from svdq.worker.supervisor import Child, Supervisor

        children = [Child(name, argv, env) for name, argv, env in workers]
        return Supervisor(children).run()
    # One CPU worker: become it (Celery's own prefork pool replaces a dead pool child).
    _, argv, env = workers[0]
    os.execve(sys.executable, argv, env)
    return 0  # not reached
