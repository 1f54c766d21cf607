"""Test-only fault injection, chosen per job, inert unless the worker was started with
SVDQ_ENABLE_TEST_FAULTS=1. A job asks for a fault through its metadata:

    {"svdq_test_fault": "oom_once"}    CUDA out-of-memory on this process's first try of the job
    {"svdq_test_fault": "sleep:5"}     sleep 5 s before generating (a slow job)
    {"svdq_test_fault": "kill"}        SIGKILL this process (a crashing pool child)
    {"svdq_test_fault": "hang"}        sleep forever (a hung job; time limits must end it)
    {"svdq_test_fault": "transient"}   raise TransientError (a flaky dependency)
    {"svdq_test_fault": "kill_once"}   SIGKILL this process on the job's first delivery only
    {"svdq_test_fault": "transient_once"}  TransientError on the job's first delivery only

Fault tests drive real worker processes with these, the way cog's test fixtures do.
"""

from __future__ import annotations

import os
import signal
import time

from svdq.shared.errors import TransientError
from svdq.shared.spec import JobSpec

FAULT_KEY = "svdq_test_fault"
_seen: set[tuple[str, str]] = set()  # (job_id, fault) already injected in this process
# The job's delivery number (from Redis, so it survives the process): the *_once faults fire
# on delivery 1 only, however many processes the job passes through.
_delivery = {"n": 1}


def set_delivery(number: int) -> None:
    """Tell the fault hooks which delivery of the job is running (worker.delivery calls it)."""
    _delivery["n"] = number


def enabled() -> bool:
    """Whether this process honours fault requests at all."""
    return os.environ.get("SVDQ_ENABLE_TEST_FAULTS") == "1"


def requested(spec: JobSpec) -> str | None:
    """The fault this job asks for, if faults are enabled here."""
    if not enabled() or not spec.metadata:
        return None
    value = spec.metadata.get(FAULT_KEY)
    return str(value) if value else None


def before_generate(spec: JobSpec) -> None:
    """Called right before the pipeline runs: inject the job's fault, if any."""
    fault = requested(spec)
    if fault is None:
        return
    key = (spec.job_id or "", fault)
    if fault == "oom_once":
        if key not in _seen:
            _seen.add(key)
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by svdq test fault)")
    elif fault.startswith("sleep:"):
        time.sleep(float(fault.split(":", 1)[1]))
    elif fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "hang":
        while True:
            time.sleep(3600)
    elif fault == "transient":
        raise TransientError("injected transient fault")
    elif fault == "kill_once" and _delivery["n"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "transient_once" and _delivery["n"] == 1:
        raise TransientError("injected transient fault (first delivery only)")
