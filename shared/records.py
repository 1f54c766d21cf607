"""When a stored result record may be believed.

result.json is the commit marker: its presence means the job is done, so a worker returns it
instead of running the job, and a producer skips the job and shows the record. Anything can
end up under that key (a hand edit, a truncated copy, another job's record, `{}`), so a record
is valid only if it parses, has the fields every reader uses with their types, names this job,
and every output it lists has this job's key for its kind, a URI naming that key, and is in
the store with its recorded size and sha256. An invalid one counts as
absent: the worker sets it aside (results/<job>/invalid-<time>.json, kept for a person to
read) and runs the job again; a producer shows the job as not done.

`result_problem` is the pure check (the Celery-stored copy of a record is checked with it too);
`read_result` adds the store: the object, and a HEAD of each output.
"""

from __future__ import annotations

import json
import time
from typing import Any

from svdq.shared.constants import output_key, result_dir, result_key
from svdq.shared.storage import ObjectNotFoundError, ObjectStore

# The fields every reader of a result record uses (CLI, reports, callbacks), with their types.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "job_id": str,
    "status": str,
    "spec": dict,
    "variant": str,
    "num_frames": int,
    "width": int,
    "height": int,
    "output_fps": int,
    "seed": (int, type(None)),
    "worker": str,
    "outputs": dict,
    "timings": dict,
}
OUTPUT_FIELDS: dict[str, type] = {"key": str, "uri": str, "bytes": int}
INVALID_PREFIX = "invalid-"


_FROM_SPEC: Any = object()  # result_problem's output_prefix: the record's own spec's


def result_problem(record: Any, job_id: str, output_prefix: Any = _FROM_SPEC) -> str | None:
    """Why `record` is not a valid succeeded-result record of job `job_id`; None if it is.
    Checks its shape, and that each output's key is the one this job's output of that kind
    has (under `output_prefix`; by default the one the record's spec names), so a record
    cannot pass another object off as its clip. No store: see `read_result` for the rest."""
    if not isinstance(record, dict):
        return f"a result record must be a JSON object, not {type(record).__name__}"
    for name, kind in REQUIRED.items():
        if name not in record:
            return f"field {name!r} is missing"
        value = record[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"field {name!r} is {value!r:.60}, not {_names(kind)}"
    if record["job_id"] != job_id:
        return f"job_id={record['job_id']!r:.80} names another job, not {job_id!r}"
    if record["status"] != "succeeded":
        return f"status={record['status']!r:.40}: only 'succeeded' records mark a job done"
    if not record["outputs"]:
        return "outputs is empty: a finished job has at least its poster"
    for kind, output in record["outputs"].items():
        if not isinstance(output, dict):
            return f"outputs[{kind!r}] is {output!r:.60}, not an object"
        for name, want in OUTPUT_FIELDS.items():
            if not isinstance(output.get(name), want) or isinstance(output.get(name), bool):
                return f"outputs[{kind!r}].{name} is {output.get(name)!r:.60}, not {want.__name__}"
    prefix = record["spec"].get("output_prefix") if output_prefix is _FROM_SPEC else output_prefix
    for kind, output in record["outputs"].items():
        try:
            expected = output_key(job_id, kind, prefix if isinstance(prefix, str) else None)
        except KeyError:
            return f"outputs has {kind!r:.40}, which is no output svdq writes"
        if output["key"] != expected:
            return f"outputs[{kind!r}].key={output['key']!r:.120} is not this job's {expected!r}"
    return None


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def read_result(
    store: ObjectStore, job_id: str, output_prefix: str | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """The job's result.json: (record, None) when valid, (None, None) when absent, (None, why)
    when present but not to be believed. A store fault (TransientError) is raised: the caller
    cannot tell done from not done then."""
    try:
        raw = store.get_bytes(result_key(job_id, output_prefix))
    except ObjectNotFoundError:
        return None, None
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not JSON ({exc})"
    problem = result_problem(record, job_id, output_prefix)
    if problem is None:
        problem = _missing_output(store, record["outputs"])
    return (None, problem) if problem else (record, None)


def _missing_output(store: ObjectStore, outputs: dict[str, dict[str, Any]]) -> str | None:
    """Why the outputs a record lists are not all in the store as recorded (its URI, size
    and sha256); None if they are."""
    for kind, output in outputs.items():
        key = output["key"]
        if output["uri"] != store.uri(key):
            return f"its {kind} uri={output['uri']!r:.120} does not name its key {key}"
        info = store.head(key)
        if info is None:
            return f"its {kind} output {key} is not in the store"
        if info.size != output["bytes"]:
            return (
                f"its {kind} output {key} is {info.size} bytes, the record says {output['bytes']}"
            )
        recorded = output.get("sha256")
        if recorded is not None and info.sha256 != recorded:
            # svdq writes the sha256 beside every object (S3 metadata; LocalStore computes
            # it): another object, or one not written by svdq, under the output's key.
            return (
                f"its {kind} output {key} has sha256 {info.sha256}, the record says "
                f"{str(recorded)[:64]}"
            )
    return None


def repaired(record: Any) -> bool:
    """Whether the job's clip went through an automatic repair: its `quality` record
    (worker/quality.py) found a problem and `tries` holds a generation made to fix it (a try
    whose reason is neither "first" nor "candidate"). The one place that reads it, and
    tolerant: a record from before repair existed, or one of the wrong shape, was not
    repaired (never an error: records come from a bucket others can write)."""
    if not isinstance(record, dict):
        return False
    quality, tries = record.get("quality"), record.get("tries")
    if not isinstance(quality, dict) or not isinstance(tries, list):
        return False
    found = quality.get("found")
    if not (isinstance(found, list) and found):
        return False
    return any(
        isinstance(t, dict)
        and isinstance(t.get("reason"), str)
        and t["reason"] not in ("first", "candidate")
        for t in tries
    )


def set_aside(store: ObjectStore, job_id: str, output_prefix: str | None = None) -> str:
    """Move the job's result.json to results/<job>/invalid-<time>.json (kept for a person to
    read) so the job no longer counts as done; return the key it was moved to."""
    marker = result_key(job_id, output_prefix)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
    kept = f"{result_dir(job_id, output_prefix)}{INVALID_PREFIX}{stamp}Z.json"
    try:
        data = store.get_bytes(marker)
    except ObjectNotFoundError:
        return kept  # gone already (another delivery set it aside)
    store.put_bytes(kept, data, "application/json")
    store.delete(marker)
    return kept
