"""The result record a worker writes (JobResult) and the JobSpec's JSON Schema; split from
test_spec.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from svdq.shared import SCHEMA_VERSION
from svdq.shared.errors import InvalidJobError
from svdq.shared.fields import (
    FIELDS,
    Field,
)
from svdq.shared.jobid import finalize
from svdq.shared.spec import JobResult, JobSpec, json_schema

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
BASE = {"image": "in.png"}


def spec(**params: Any) -> JobSpec:
    return JobSpec.from_dict({**BASE, **params})


def rejected(field: str, value: Any, *hints: str) -> InvalidJobError:
    """Assert {field: value} is refused with a message naming field, value and what's allowed."""
    with pytest.raises(InvalidJobError) as info:
        JobSpec.from_dict({**BASE, field: value})
    exc = info.value
    msg = str(exc)
    assert exc.field == field
    assert field in msg
    assert repr(value) in msg, msg
    for hint in hints:
        assert hint in msg, f"{hint!r} not in {msg!r}"
    return exc


def num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --- records --------------------------------------------------------------------------------

FULL = {
    "image": "s3://bucket/in.png",
    "variant": "svd-xt",
    "num_frames": 25,
    "num_inference_steps": 30,
    "motion_bucket_id": 200,
    "noise_aug_strength": 0.1,
    "min_guidance_scale": 1.5,
    "max_guidance_scale": 2.5,
    "fps": 6,
    "output_fps": 12,
    "decode_chunk_size": 4,
    "seed": 1234,
    "width": 512,
    "height": 320,
    "resize": "pad",
    "formats": ["gif", "mp4"],
    "on_static": "retry",
    "on_flicker": "retry",
    "min_motion": 0.02,
    "max_flicker": 0.005,
    "repair_attempts": 3,
    "candidates": 4,
    "keep_candidates": True,
    "priority": 8,
    "job_id": "job-1",
    "output_prefix": "team/a",
    "callback_url": "https://e.com/cb",
    "metadata": {"sku": "A-1", "n": [1, 2]},
    "schema_version": 1,
}


def test_full_dict_covers_every_field() -> None:
    assert set(FULL) == {f.name for f in FIELDS} | {"schema_version"}


def test_to_dict_from_dict_round_trip() -> None:
    s = JobSpec.from_dict(FULL)
    assert s.to_dict() == FULL
    assert JobSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_to_dict_of_defaults() -> None:
    d = JobSpec(image="x").to_dict()
    assert d["formats"] == ["mp4"]
    assert d["schema_version"] == SCHEMA_VERSION
    assert set(d) == {f.name for f in FIELDS} | {"schema_version"}
    assert JobSpec.from_dict(d) == JobSpec(image="x")


def test_job_result_round_trip_and_ignores_unknown_fields() -> None:
    r = JobResult(
        job_id="j1",
        status="succeeded",
        spec=FULL,
        seed=3,
        num_frames=25,
        outputs={"mp4": {"key": "results/j1/clip.mp4"}},
        timings={"total": 1.5},
    )
    d = r.to_dict()
    assert JobResult.from_dict(d) == r
    newer = {**json.loads(json.dumps(d)), "gpu_temperature": 71, "schema_version": 2}
    back = JobResult.from_dict(newer)
    assert back.job_id == "j1"
    assert back.seed == 3
    assert back.schema_version == 2
    assert not hasattr(back, "gpu_temperature")


def test_job_result_defaults() -> None:
    r = JobResult.from_dict({"job_id": "j", "status": "failed", "spec": {}})
    assert r.error is None
    assert r.outputs == {}
    assert r.schema_version == SCHEMA_VERSION


# --- JSON Schema ----------------------------------------------------------------------------


def test_json_schema_shape() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["image"]
    assert set(schema["properties"]) == {f.name for f in FIELDS} | {"schema_version"}
    assert schema["properties"]["schema_version"] == {"type": "integer", "const": SCHEMA_VERSION}
    json.dumps(schema)  # plain JSON


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_json_schema_property_matches_the_table(f: Field) -> None:
    p = json_schema()["properties"][f.name]
    assert p["description"] == f.help
    assert p.get("minimum") == f.minimum
    assert p.get("maximum") == f.maximum
    assert p.get("multipleOf") == f.multiple_of
    if f.type == "array":
        assert p["type"] == "array"
        assert p["items"] == {"enum": list(f.choices or ())}
        assert p["minItems"] == 1
    else:
        assert p["type"] == ([f.type, "null"] if f.nullable else f.type)
    if f.choices and f.type != "array":
        assert p["enum"] == [*f.choices, *([None] if f.nullable else [])]
    if f.default is None:
        assert "default" not in p
    else:
        assert p["default"] == (list(f.default) if isinstance(f.default, tuple) else f.default)


def test_json_schema_explicit_bounds() -> None:
    props = json_schema()["properties"]
    assert (props["motion_bucket_id"]["minimum"], props["motion_bucket_id"]["maximum"]) == (0, 255)
    assert (props["width"]["minimum"], props["width"]["maximum"]) == (64, 2048)
    assert props["width"]["multipleOf"] == 64
    assert props["seed"]["maximum"] == 2**32 - 1
    assert (props["priority"]["minimum"], props["priority"]["maximum"]) == (0, 9)


def test_json_schema_validates_good_and_bad_documents() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    validator_cls = jsonschema.Draft202012Validator
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    assert list(validator.iter_errors({"image": "in.png"})) == []
    assert list(validator.iter_errors(FULL)) == []
    assert list(validator.iter_errors(finalize(spec(), SHA).to_dict())) == []
    for bad in (
        {},
        {"image": "in.png", "priority": 10},
        {"image": "in.png", "width": 100},
        {"image": "in.png", "formats": ["mov"]},
        {"image": "in.png", "formats": []},
        {"image": "in.png", "variant": "svd-2"},
        {"image": "in.png", "guidance_scale": 3},
        {"image": "in.png", "schema_version": 2},
        {"image": "in.png", "noise_aug_strength": 1.5},
    ):
        assert list(validator.iter_errors(bad)), bad
