"""JobSpec and JobResult: the versioned JSON records producers and workers exchange.

`JobSpec.from_dict` checks every field against `shared.fields.FIELDS`; the producer calls it
before anything is queued and the worker calls it again before anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from svdq.shared import SCHEMA_VERSION
from svdq.shared.errors import InvalidJobError
from svdq.shared.fields import (
    FIELD_BY_NAME,
    FIELDS,
    MAX_FLICKER,
    MAX_GUIDANCE_SCALE,
    MAX_METADATA_BYTES,
    MAX_PREFIX_LEN,
    MAX_URL_LEN,
    MIN_GUIDANCE_SCALE,
    MIN_MOTION,
    SAFE_ID,
    SAFE_PREFIX,
    Field,
)
from svdq.shared.formats import DEFAULT as DEFAULT_FORMATS
from svdq.shared.formats import expand as expand_format


@dataclass(frozen=True)
class JobSpec:
    """One image-to-video job. Field names and defaults are diffusers' (see shared.fields)."""

    image: str
    variant: str | None = None
    num_frames: int | None = None
    num_inference_steps: int = 25
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = MIN_GUIDANCE_SCALE
    max_guidance_scale: float = MAX_GUIDANCE_SCALE
    fps: int = 7
    output_fps: int | None = None
    decode_chunk_size: int | None = None
    seed: int | None = None
    width: int = 1024
    height: int = 576
    resize: str = "crop"
    formats: tuple[str, ...] = DEFAULT_FORMATS
    on_static: str = "keep"
    on_flicker: str = "keep"
    min_motion: float = MIN_MOTION
    max_flicker: float = MAX_FLICKER
    repair_attempts: int = 2
    candidates: int = 1
    keep_candidates: bool = False
    priority: int = 5
    job_id: str | None = None
    output_prefix: str | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Validate `data` and build a spec; raise InvalidJobError naming the first bad field."""
        if not isinstance(data, dict):
            raise InvalidJobError(f"a job must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or not (1 <= version <= SCHEMA_VERSION)
        ):
            raise InvalidJobError(
                f"schema_version={version!r} is not understood here: allowed 1–{SCHEMA_VERSION}; "
                "upgrade svdq on this machine",
                field="schema_version",
            )
        unknown = sorted(set(data) - set(FIELD_BY_NAME) - {"schema_version"})
        if unknown:
            raise InvalidJobError(
                f"unknown field {unknown[0]!r}: allowed fields are {', '.join(FIELD_BY_NAME)}",
                field=unknown[0],
            )
        if "image" not in data:
            raise InvalidJobError("image is required: a local path, s3:// or https:// URL", "image")
        values = {
            name: check_field(FIELD_BY_NAME[name], value)
            for name, value in data.items()
            if name != "schema_version"
        }
        _check_guidance(
            values.get("min_guidance_scale", MIN_GUIDANCE_SCALE),
            values.get("max_guidance_scale", MAX_GUIDANCE_SCALE),
        )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field, lists for tuples.

        Built field by field rather than with dataclasses.asdict, which deep-copies every
        value and was a fifth of `svdq bulk`'s time; only `metadata` can hold anything nested.
        """
        out = {name: getattr(self, name) for name in _SPEC_FIELD_NAMES}
        out["formats"] = list(self.formats)
        if self.metadata is not None:
            out["metadata"] = copy.deepcopy(self.metadata)
        return out

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with `changes` applied and checked."""
        return JobSpec.from_dict({**self.to_dict(), **changes})


_SPEC_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(JobSpec))


def check_field(f: Field, value: Any) -> Any:
    """Return `value` checked (and normalised) for field `f`, or raise InvalidJobError."""
    if value is None:
        if f.nullable:
            return None
        raise InvalidJobError(f"{f.name}=None is not allowed: {f.allowed()}", field=f.name)
    bad = f"{f.name}={value!r} is not allowed: {f.allowed()}"
    if f.type == "boolean":
        if not isinstance(value, bool):
            raise InvalidJobError(bad, field=f.name)
        return value
    if f.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise InvalidJobError(bad, field=f.name)
    elif f.type == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidJobError(bad, field=f.name)
        try:
            value = float(value)  # an int too large for a float raises OverflowError
        except OverflowError:
            raise InvalidJobError(bad, field=f.name) from None
        if not math.isfinite(value):
            raise InvalidJobError(bad, field=f.name)
    if f.type in ("integer", "number"):
        if (f.minimum is not None and value < f.minimum) or (
            f.maximum is not None and value > f.maximum
        ):
            raise InvalidJobError(f"{f.name}={value!r} is out of range: {f.allowed()}", f.name)
        if f.multiple_of and value % f.multiple_of:
            raise InvalidJobError(bad, field=f.name)
        return value
    if f.type == "array":
        return _check_formats(f, value)
    if f.type == "object":
        return _check_metadata(value)
    if not isinstance(value, str):
        what = f.allowed() if f.choices else f.help
        raise InvalidJobError(f"{f.name}={value!r} must be a string: {what}", field=f.name)
    if f.choices and value not in f.choices:
        raise InvalidJobError(bad, field=f.name)
    return _STRING_CHECKS.get(f.name, lambda v: v)(value)


def _check_guidance(low: float, high: float) -> None:
    """The guidance ramp rises from the first frame to the last: min ≤ max."""
    if low > high:
        raise InvalidJobError(
            f"min_guidance_scale={low!r} is above max_guidance_scale={high!r}: guidance rises "
            "linearly from min_guidance_scale on the first frame to max_guidance_scale on the "
            "last, so min_guidance_scale must be <= max_guidance_scale; lower the first or "
            "raise the second",
            field="min_guidance_scale",
        )


def _check_formats(f: Field, value: Any) -> tuple[str, ...]:
    """A list of format names (or one name), aliases expanded, duplicates dropped, in order."""
    allowed = ", ".join(f.choices or ())
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InvalidJobError(
            f"formats={value!r} is not allowed: a non-empty list of {allowed}", field="formats"
        )
    out: list[str] = []
    for item in items:
        for name in expand_format(item) if isinstance(item, str) else (item,):
            if not isinstance(name, str) or name not in (f.choices or ()):
                raise InvalidJobError(
                    f"formats={value!r} is not allowed: {name!r} is not one of {allowed}",
                    field="formats",
                )
            if name not in out:
                out.append(name)
    return tuple(out)


def _check_metadata(value: Any) -> dict[str, Any]:
    shown = repr(value)[:200]
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidJobError(
            f"metadata={shown} is not allowed: an object with string keys", field="metadata"
        )
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(
            f"metadata={shown} is not allowed: plain JSON values only ({exc})", field="metadata"
        ) from exc
    if size > MAX_METADATA_BYTES:
        raise InvalidJobError(
            f"metadata is {size:,} bytes as JSON: allowed up to MAX_METADATA_BYTES="
            f"{MAX_METADATA_BYTES:,} ({MAX_METADATA_BYTES // 1024} KiB); keep larger data in "
            "the store or elsewhere and put its address in metadata",
            field="metadata",
        )
    return value


def _refused(field: str, value: str, allowed: str, shown: int = 80) -> InvalidJobError:
    """The error for a string field's value: the field, the value (cut to `shown` characters,
    so a hostile megabyte never reaches a log) and what is allowed."""
    return InvalidJobError(f"{field}={value[:shown]!r} is not allowed: {allowed}", field=field)


def _check_image(value: str) -> str:
    if not value or len(value) > MAX_URL_LEN or "\x00" in value:
        raise _refused(
            "image",
            value,
            f"a local path, s3://bucket/key or https:// URL of at most {MAX_URL_LEN} characters",
        )
    lowered = value.lower()
    if "://" in value and not lowered.startswith(("s3://", "https://", "file://")):
        raise _refused("image", value, "only local paths, s3:// and https:// URLs")
    bucket, _, key = value[5:].partition("/")
    if lowered.startswith("s3://") and not (bucket and key):
        raise _refused("image", value, "s3://bucket/key", shown=MAX_URL_LEN)
    return value


def check_job_id(value: str) -> str:
    """`value` if it is an allowed job id; InvalidJobError naming it and the rule if not."""
    if not SAFE_ID.fullmatch(value) or ".." in value:  # fullmatch: `$` allows a final "\n"
        allowed = "1–128 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'"
        raise _refused("job_id", value, allowed, shown=140)
    return value


def _check_prefix(value: str) -> str:
    parts = value.split("/")
    too_long = len(value) > MAX_PREFIX_LEN
    if too_long or not SAFE_PREFIX.fullmatch(value) or any(p in (".", "..") for p in parts):
        allowed = (
            f"up to {MAX_PREFIX_LEN} characters of letters, digits, '.', '_', '-' in "
            "'/'-separated parts, no leading '/', no '..'"
        )
        raise _refused("output_prefix", value, allowed, shown=220)
    return value


def _check_callback(value: str) -> str:
    allowed = (
        f"an http(s):// URL of at most {MAX_URL_LEN} characters with a host, a port (if any) "
        "of 1–65535 and an IPv6 address in brackets"
    )
    if len(value) > MAX_URL_LEN or not value.lower().startswith(("https://", "http://")):
        raise _refused("callback_url", value, allowed)
    try:  # what `svdq callbacks` reads it with (worker/callbacks.py): it must parse there
        parts = urlsplit(value)
        port, host = parts.port, parts.hostname
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL", ...
        raise _refused("callback_url", value, f"{allowed} ({exc})") from None
    if not host or port == 0:
        raise _refused("callback_url", value, allowed)
    return value


_STRING_CHECKS = {
    "image": _check_image,
    "job_id": check_job_id,
    "output_prefix": _check_prefix,
    "callback_url": _check_callback,
}


@dataclass
class JobResult:
    """What a finished job produced; written as result.json, last, and returned by the task."""

    job_id: str
    status: str  # succeeded | failed
    spec: dict[str, Any]
    variant: str = ""
    model: str = ""
    seed: int | None = None
    num_frames: int = 0
    width: int = 0
    height: int = 0
    output_fps: int = 0
    decode_chunk_size: int = 0
    profile: dict[str, Any] = field(default_factory=dict)
    # every try, in order: {"profile", "outcome": "oom"|"succeeded", "seconds",
    # "decode_chunk_size"} ("phase": "denoise"|"decode" on an "oom"), or a rung that did not
    # load: {"profile", "outcome": "load_failed", "seconds", "error"} (worker/stepdown.py);
    # a job that generates more than once (repair, candidates) lists every generation's, each
    # with the "try" it belongs to, and a batch of candidates too large for the card an "oom"
    # with "phase": "batch" and its "videos"
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # every generation of a job with repair or candidates, in order (worker/quality.py):
    # {"try", "reason": "first"|"candidate"|"static"|"flicker"|"static+flicker", "params":
    # {"seed", "noise_seed", "motion_bucket_id", "noise_aug_strength", "decode_chunk_size"}
    # (seed: the starting latents', noise_seed: the conditioning image's noise's), "scores",
    # "problems", "seconds", "kept"} (+ "candidate", "call" for a candidate); [] otherwise
    tries: list[dict[str, Any]] = field(default_factory=list)
    # what the checks found and what was done: {"checks", "kept", "found", "left", "repaired",
    # "candidates": {"n", "per_call", "calls", "mode", "kept"} | None}; None without repair
    # or candidates
    quality: dict[str, Any] | None = None
    worker: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    motion: float | None = None  # = scores["motion"], kept for readers of older records
    # shared/scores.py: motion, displacement, flicker, chunk_jump, psnr, ssim
    scores: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    note: str = ""
    error: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        """Read a result record, ignoring fields from newer writers."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a JobSpec, built from the same table as validation."""
    props: dict[str, Any] = {}
    for f in FIELDS:
        p: dict[str, Any] = {"description": f.help}
        if f.type == "array":
            p.update(
                type="array", items={"enum": list(f.choices or ())}, minItems=1, uniqueItems=True
            )
        else:
            p["type"] = [f.type, "null"] if f.nullable else f.type
        if f.choices and f.type != "array":
            p["enum"] = [*f.choices, None] if f.nullable else list(f.choices)
        for key, val in (
            ("minimum", f.minimum),
            ("maximum", f.maximum),
            ("multipleOf", f.multiple_of),
        ):
            if val is not None:
                p[key] = val
        if f.default is not None:  # False is a default too
            p["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        props[f.name] = p
    props["schema_version"] = {"type": "integer", "const": SCHEMA_VERSION}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "svdq JobSpec",
        "type": "object",
        "required": ["image"],
        "additionalProperties": False,
        "properties": props,
    }
