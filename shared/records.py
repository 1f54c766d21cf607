"""When a stored result record may be believed.

result.json is the commit marker: its presence means the job is done, so a worker returns it
instead of running the job, and a producer skips the job and shows the record. Anything can
end up under that key (a hand edit, a truncated copy, another job's record, `{}`), so a record
is valid only if it parses, has the fields every reader uses with their types (`tries` and
`quality` too when present), names this job, lists candidate outputs only when its spec kept
candidates (and only those it made), and every output it lists has this job's key for its
kind, a URI naming that key, and is in the store with its recorded size and sha256. An
invalid one counts as absent: the worker sets it aside (results/<job>/invalid-<time>.json,
kept for a person to read) and runs the job again; a producer shows the job as not done.

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
    return _candidates_problem(record) or _quality_problem(record)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _candidates_problem(record: dict[str, Any]) -> str | None:
    """A candidates/<i>.mp4 output is only written for a job whose spec asked to keep its
    candidates (keep_candidates, candidates > 1) and only for an index below its candidates:
    a record listing others lists outputs its job never made."""
    spec = record["spec"]
    asked = spec.get("candidates", 1)
    asked = asked if _int(asked) else 1
    keeps = spec.get("keep_candidates") is True and asked > 1
    for kind in record["outputs"]:
        if not kind.startswith("candidate-"):
            continue
        index = int(kind.removeprefix("candidate-"))  # output_key accepted it: 0…7
        if not keeps:
            return (
                f"outputs has {kind!r}, but its spec kept no candidates (candidates={asked}, "
                f"keep_candidates={spec.get('keep_candidates')!r:.20})"
            )
        if index >= asked:
            return f"outputs has {kind!r}, but its spec made candidates 0…{asked - 1} only"
    return None


# result.json's `quality` (worker/quality.py; shared/spec.py JobResult) and the types of the
# fields its readers use (producer/jobcli.py `repaired`, worker/metrics.py, shared/scores.py).
_QUALITY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "found": list,
    "left": list,
    "repaired": str,
    "kept": int,
    "checks": dict,
    "candidates": (dict, type(None)),
}
_CANDIDATES_FIELDS: dict[str, type | tuple[type, ...]] = {
    "n": int,
    "calls": int,
    "mode": str,
    "kept": (int, type(None)),
}
_TRY_FIELDS: dict[str, type | tuple[type, ...]] = {"try": int, "reason": str}
_TRY_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "scores": dict,
    "params": dict,
    "problems": list,
}


def _shape_problem(
    what: str, value: dict[str, Any], fields: dict[str, Any], required: bool
) -> str | None:
    """Why `value`'s `fields` do not have their types (a missing one only when `required`)."""
    for name, kind in fields.items():
        if name not in value:
            if required:
                return f"{what}.{name} is missing"
            continue
        item = value[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(item, kind) or (int in kinds and isinstance(item, bool)):
            return f"{what}.{name} is {item!r:.60}, not {_names(kind)}"
    return None


def _quality_problem(record: dict[str, Any]) -> str | None:
    """`tries` and `quality` are optional (records from before repair, and plain jobs, have
    `[]` and null), but when present they must have the shape every reader relies on: a list
    of try objects, and an object whose fields have their types."""
    tries = record.get("tries", [])
    if not isinstance(tries, list):
        return f"field 'tries' is {tries!r:.60}, not list"
    for i, one in enumerate(tries):
        if not isinstance(one, dict):
            return f"tries[{i}] is {one!r:.60}, not an object"
        problem = _shape_problem(f"tries[{i}]", one, _TRY_FIELDS, required=True)
        if problem or (problem := _shape_problem(f"tries[{i}]", one, _TRY_OPTIONAL, False)):
            return problem
    quality = record.get("quality")
    if quality is None:
        return None
    if not isinstance(quality, dict):
        return f"field 'quality' is {quality!r:.60}, not an object or null"
    if problem := _shape_problem("quality", quality, _QUALITY_FIELDS, required=False):
        return problem
    if not all(isinstance(p, str) for key in ("found", "left") for p in quality.get(key, [])):
        return "quality.found and quality.left must be lists of check names"
    candidates = quality.get("candidates")
    if isinstance(candidates, dict):
        return _shape_problem("quality.candidates", candidates, _CANDIDATES_FIELDS, True)
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
