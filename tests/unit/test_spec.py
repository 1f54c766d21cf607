"""JobSpec validation, job identity and the JSON Schema: every bound on both sides.

The bound tests are generated from `shared.fields.FIELDS`, so a new field is covered (or a
test fails asking for a decision) without editing this file's explicit cases.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from svdq.shared import SCHEMA_VERSION
from svdq.shared.errors import InvalidJobError
from svdq.shared.fields import (
    FIELD_BY_NAME,
    FIELDS,
    MAX_METADATA_BYTES,
    MAX_PREFIX_LEN,
    MAX_URL_LEN,
    SEED_MAX,
    Field,
)
from svdq.shared.spec import JobSpec

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


# --- generated from the field table -------------------------------------------------------

NUMERIC = [f for f in FIELDS if f.type in ("integer", "number")]
# Fields bound to another (the guidance ramp: min <= max): what the other must be for any value
# of this one within its bounds to be accepted.
PARTNER = {
    "min_guidance_scale": {"max_guidance_scale": 20},
    "max_guidance_scale": {"min_guidance_scale": 0},
}


def _inside(f: Field) -> list[Any]:
    step = f.multiple_of or 1
    lo, hi = f.minimum, f.maximum
    assert lo is not None and hi is not None, f"{f.name} has no bounds: add a test for it"
    if f.type == "integer":
        return [int(lo) if not f.multiple_of else math.ceil(lo / step) * step, int(hi)]
    return [lo, hi]


def _outside(f: Field) -> list[Any]:
    lo, hi = f.minimum, f.maximum
    assert lo is not None and hi is not None
    if f.type == "integer":
        step = f.multiple_of or 1
        return [int(lo) - step, int(hi) + step]
    return [lo - 0.01, hi + 0.01]


@pytest.mark.parametrize(
    ("name", "value"),
    [(f.name, v) for f in NUMERIC for v in _inside(f)],
)
def test_numeric_bound_inside_is_accepted(name: str, value: Any) -> None:
    assert getattr(spec(**PARTNER.get(name, {}), **{name: value}), name) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [(f.name, v) for f in NUMERIC for v in _outside(f)],
)
def test_numeric_bound_outside_is_rejected(name: str, value: Any) -> None:
    f = FIELD_BY_NAME[name]
    rejected(name, value, num(f.minimum), num(f.maximum))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [f.name for f in NUMERIC])
def test_numeric_field_rejects_bool(name: str) -> None:
    rejected(name, True, num(FIELD_BY_NAME[name].minimum))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [f.name for f in NUMERIC])
def test_numeric_field_rejects_nan_and_inf(name: str) -> None:
    f = FIELD_BY_NAME[name]
    for bad in (float("nan"), float("inf"), float("-inf")):
        rejected(name, bad, num(f.minimum))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [f.name for f in NUMERIC])
def test_numeric_field_rejects_strings(name: str) -> None:
    f = FIELD_BY_NAME[name]
    rejected(name, str(_inside(f)[0]), num(f.minimum))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [f.name for f in FIELDS if f.type == "integer"])
def test_integer_field_rejects_fraction(name: str) -> None:
    f = FIELD_BY_NAME[name]
    rejected(name, _inside(f)[0] + 0.5, "an integer")


@pytest.mark.parametrize("name", [f.name for f in FIELDS if f.multiple_of])
def test_multiple_of_rejects_a_value_in_range_off_the_grid(name: str) -> None:
    f = FIELD_BY_NAME[name]
    rejected(name, _inside(f)[0] + 1, f"a multiple of {f.multiple_of}")


@pytest.mark.parametrize(
    ("name", "choice"),
    [(f.name, c) for f in FIELDS if f.choices and f.type == "string" for c in f.choices],
)
def test_every_choice_is_accepted(name: str, choice: str) -> None:
    assert getattr(spec(**{name: choice}), name) == choice


@pytest.mark.parametrize("name", [f.name for f in FIELDS if f.choices and f.type == "string"])
def test_value_outside_choices_is_rejected(name: str) -> None:
    rejected(name, "nope", *FIELD_BY_NAME[name].choices)  # type: ignore[misc]


@pytest.mark.parametrize("name", [f.name for f in FIELDS if f.nullable])
def test_nullable_field_accepts_none(name: str) -> None:
    assert getattr(spec(**{name: None}), name) is None


@pytest.mark.parametrize("name", [f.name for f in FIELDS if not f.nullable and f.name != "image"])
def test_non_nullable_field_rejects_none(name: str) -> None:
    exc = rejected(name, None)
    assert FIELD_BY_NAME[name].allowed() in str(exc)


@pytest.mark.parametrize("f", [f for f in FIELDS if f.name != "image"], ids=lambda f: f.name)
def test_default_in_table_is_the_dataclass_default(f: Field) -> None:
    assert getattr(JobSpec(image="x"), f.name) == f.default


@pytest.mark.parametrize("f", [f for f in FIELDS if f.default is not None], ids=lambda f: f.name)
def test_default_in_table_passes_its_own_check(f: Field) -> None:
    assert getattr(spec(**{f.name: f.default}), f.name) == f.default


# --- explicit cases -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("motion_bucket_id", 0),
        ("motion_bucket_id", 255),
        ("noise_aug_strength", 0),
        ("noise_aug_strength", 1),
        ("noise_aug_strength", 0.0),
        ("noise_aug_strength", 1.0),
        ("num_inference_steps", 1),
        ("decode_chunk_size", 1),
        ("width", 64),
        ("width", 2048),
        ("height", 64),
        ("height", 2048),
        ("seed", 0),
        ("seed", 2**32 - 1),
        ("priority", 0),
        ("priority", 9),
    ],
)
def test_explicit_bounds_accepted(name: str, value: Any) -> None:
    got = getattr(spec(**{name: value}), name)
    assert got == value
    assert type(got) is (float if FIELD_BY_NAME[name].type == "number" else int)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("motion_bucket_id", -1, "motion_bucket_id=-1 is out of range: an integer 0–255"),
        ("motion_bucket_id", 256, "motion_bucket_id=256 is out of range: an integer 0–255"),
        ("noise_aug_strength", -0.01, "noise_aug_strength=-0.01 is out of range: a number 0–1"),
        ("noise_aug_strength", 1.01, "noise_aug_strength=1.01 is out of range: a number 0–1"),
        ("num_inference_steps", 0, "num_inference_steps=0 is out of range: an integer 1–150"),
        ("decode_chunk_size", 0, "decode_chunk_size=0 is out of range: an integer 1–64"),
        ("width", 100, "width=100 is not allowed: an integer 64–2048, a multiple of 64"),
        ("width", 2112, "width=2112 is out of range: an integer 64–2048, a multiple of 64"),
        ("height", 100, "height=100 is not allowed: an integer 64–2048, a multiple of 64"),
        ("height", 2112, "height=2112 is out of range: an integer 64–2048, a multiple of 64"),
        ("seed", -1, "seed=-1 is out of range: an integer 0–4294967295"),
        ("seed", 2**32, "seed=4294967296 is out of range: an integer 0–4294967295"),
        ("priority", -1, "priority=-1 is out of range: an integer 0–9"),
        ("priority", 10, "priority=10 is out of range: an integer 0–9"),
        ("priority", True, "priority=True is not allowed: an integer 0–9"),
        ("seed", False, "seed=False is not allowed: an integer 0–4294967295"),
        ("noise_aug_strength", True, "noise_aug_strength=True is not allowed: a number 0–1"),
        ("resize", "fill", "resize='fill' is not allowed: one of crop, pad, stretch"),
        (
            "variant",
            "svd-2",
            "variant='svd-2' is not allowed: one of auto, svd, svd-xt, svd-xt-1-1, tiny",
        ),
    ],
)
def test_explicit_bounds_rejected_with_exact_message(name: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        spec(**{name: value})
    assert str(info.value) == message
    assert info.value.field == name


def test_nan_is_rejected_for_numbers() -> None:
    rejected("noise_aug_strength", float("nan"), "0–1")


def test_huge_integer_for_a_number_field_is_rejected_not_crashing() -> None:
    with pytest.raises(InvalidJobError) as info:
        spec(noise_aug_strength=10**400)
    assert info.value.field == "noise_aug_strength"
    assert "0–1" in str(info.value)


def test_whole_float_is_accepted_for_integer_and_becomes_int() -> None:
    got = spec(num_inference_steps=30.0).num_inference_steps
    assert got == 30
    assert type(got) is int


def test_seed_bounds_match_the_table() -> None:
    assert FIELD_BY_NAME["seed"].minimum == 0
    assert FIELD_BY_NAME["seed"].maximum == SEED_MAX == 2**32 - 1


# formats


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("mp4", ("mp4",)),
        ("gif", ("gif",)),
        (["mp4"], ("mp4",)),
        (["gif"], ("gif",)),
        (["mp4", "gif"], ("mp4", "gif")),
        (["gif", "mp4"], ("gif", "mp4")),
        ("both", ("mp4", "gif")),
        (["both"], ("mp4", "gif")),
        (["mp4", "mp4"], ("mp4",)),
        (["gif", "both"], ("gif", "mp4")),
        (["both", "mp4", "gif", "both"], ("mp4", "gif")),
        (("gif",), ("gif",)),
    ],
)
def test_formats_accepted_and_normalised(given: Any, expected: tuple[str, ...]) -> None:
    assert spec(formats=given).formats == expected


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ([], "non-empty list of mp4, gif"),
        ((), "non-empty list of mp4, gif"),
        ("", "one of mp4, gif"),
        ("mov", "'mov' is not one of mp4, gif"),
        (["mov"], "'mov' is not one of mp4, gif"),
        (["mp4", "mov"], "'mov' is not one of mp4, gif"),
        (["MP4"], "'MP4' is not one of mp4, gif"),
        ([None], "None is not one of mp4, gif"),
        ([1], "1 is not one of mp4, gif"),
        ({"mp4": 1}, "non-empty list of mp4, gif"),
        (5, "non-empty list of mp4, gif"),
    ],
)
def test_formats_rejected(given: Any, hint: str) -> None:
    rejected("formats", given, hint)


# job_id


@pytest.mark.parametrize("job_id", ["abc-1.2_3", "a", "A" * 128, "0abc", "x.y.z", "a-_-b"])
def test_job_id_accepted(job_id: str) -> None:
    assert spec(job_id=job_id).job_id == job_id


@pytest.mark.parametrize(
    "job_id",
    [
        "../x",
        "/abs",
        "a/b",
        ".hidden",
        "a" * 129,
        "",
        "a..b",
        "-x",
        "_x",
        "a b",
        "a\\b",
        "a\x00b",
        "é",
        "a:b",
        "x/",
        "abc\n",
        "a\nb",
    ],
)
def test_job_id_rejected(job_id: str) -> None:
    rejected("job_id", job_id, "letters, digits", "128")


def test_job_id_non_string_rejected() -> None:
    rejected("job_id", 12, "must be a string")


# output_prefix


@pytest.mark.parametrize(
    "prefix", ["a/b/c", "a", "team-1/run_2.v3", "x" * MAX_PREFIX_LEN, "a.b/c", "...x"]
)
def test_output_prefix_accepted(prefix: str) -> None:
    assert spec(output_prefix=prefix).output_prefix == prefix


@pytest.mark.parametrize(
    "prefix",
    [
        "/a",
        "a/../b",
        "a//b",
        "..",
        ".",
        "a/./b",
        "a/..",
        "../a",
        "a/",
        "x" * (MAX_PREFIX_LEN + 1),
        "",
        "a b",
        "a\\b",
        "a/b\n",
        "s3://x",
    ],
)
def test_output_prefix_rejected(prefix: str) -> None:
    rejected("output_prefix", prefix, str(MAX_PREFIX_LEN), "no '..'")


# callback_url


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://10.0.0.1:8080/cb",
        "HTTPS://EXAMPLE.COM/x",
        "https://e.com/" + "a" * (MAX_URL_LEN - len("https://e.com/")),
    ],
)
def test_callback_url_accepted(url: str) -> None:
    assert spec(callback_url=url).callback_url == url


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "example.com/hook", "", "javascript:alert(1)", "file:///etc/x"]
)
def test_callback_url_rejected(url: str) -> None:
    rejected("callback_url", url, "http(s)://", str(MAX_URL_LEN))


@pytest.mark.parametrize(
    ("url", "why"),
    [  # review finding 9: each passed, then made `svdq callbacks` raise ValueError
        ("http://127.0.0.1:99999/hook", "Port out of range"),
        ("http://[::1/hook", "Invalid IPv6 URL"),
        ("http://::1/hook", "Port could not be cast"),
        ("http://h:0/hook", "1–65535"),
        ("https:///hook", "with a host"),
    ],
)
def test_a_callback_url_that_does_not_parse_is_rejected(url: str, why: str) -> None:
    rejected("callback_url", url, why)


def test_callback_url_with_ipv6_and_port_accepted() -> None:
    assert spec(callback_url="http://[::1]:8080/x").callback_url == "http://[::1]:8080/x"


def test_callback_url_too_long_rejected() -> None:
    url = "https://e.com/" + "a" * (MAX_URL_LEN - len("https://e.com/") + 1)
    with pytest.raises(InvalidJobError) as info:
        spec(callback_url=url)
    assert info.value.field == "callback_url"
    assert repr(url[:80]) in str(info.value)
    assert str(MAX_URL_LEN) in str(info.value)


# metadata


@pytest.mark.parametrize(
    "meta",
    [{}, {"a": "1"}, {"a": [1, 2.5, None, True], "b": {"c": "d"}}, {"k": "x" * 16_000}],
)
def test_metadata_accepted_untouched(meta: dict[str, Any]) -> None:
    assert spec(metadata=meta).metadata == meta


def test_metadata_at_the_size_limit_accepted() -> None:
    overhead = len(json.dumps({"k": ""}))
    meta = {"k": "x" * (MAX_METADATA_BYTES - overhead)}
    assert len(json.dumps(meta)) == MAX_METADATA_BYTES
    assert spec(metadata=meta).metadata == meta


TOO_BIG_METADATA = (
    "metadata is 16,385 bytes as JSON: allowed up to MAX_METADATA_BYTES=16,384 (16 KiB); "
    "keep larger data in the store or elsewhere and put its address in metadata"
)


def test_metadata_over_16_kib_rejected_naming_field_size_and_limit(tmp_path: Any) -> None:
    """The same words at the producer (Client.prepare, before anything is uploaded or queued)
    and at the worker (its intake checks every message before Celery parses it)."""
    from kombu import Message
    from kombu.serialization import prepare_accept_content

    from svdq.producer.client import Client
    from svdq.shared.constants import TASK_GENERATE
    from svdq.shared.settings import Settings
    from svdq.shared.storage import LocalStore
    from svdq.worker.intake import ARGUMENT_CHECKS, check_message

    overhead = len(json.dumps({"k": ""}))
    meta = {"k": "x" * (MAX_METADATA_BYTES - overhead + 1)}
    with pytest.raises(InvalidJobError) as info:
        spec(metadata=meta)
    assert (info.value.field, str(info.value)) == ("metadata", TOO_BIG_METADATA)

    client = Client(Settings.from_env({}), LocalStore(tmp_path))
    with pytest.raises(InvalidJobError) as info:
        client.prepare({"image": str(tmp_path / "in.png"), "metadata": meta})
    assert (info.value.field, str(info.value)) == ("metadata", TOO_BIG_METADATA)
    assert list(tmp_path.iterdir()) == []  # refused before anything was stored

    body = [[{"image": "s3://b/inputs/x.png", "job_id": "j", "metadata": meta}], {}, {}]
    message = Message(
        body=json.dumps(body).encode(),
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": TASK_GENERATE, "id": "j"},
        accept=prepare_accept_content(["json"]),
    )
    with pytest.raises(InvalidJobError) as info:
        check_message(message, {TASK_GENERATE: ARGUMENT_CHECKS[TASK_GENERATE]})
    assert (info.value.field, str(info.value)) == ("metadata", TOO_BIG_METADATA)


@pytest.mark.parametrize(
    ("meta", "hint"),
    [
        ({1: "a"}, "string keys"),
        ({"a": 1, (1, 2): "b"}, "string keys"),
        ("a=1", "an object"),
        (["a", 1], "an object"),
        ({"a": {1, 2}}, "plain JSON"),
        ({"a": b"bytes"}, "plain JSON"),
        ({"a": float("nan")}, "plain JSON"),
        ({"a": {"b": float("inf")}}, "plain JSON"),
    ],
)
def test_metadata_rejected(meta: Any, hint: str) -> None:
    rejected("metadata", meta, hint)


# image, unknown fields, schema_version, not an object


def test_missing_image_rejected() -> None:
    with pytest.raises(InvalidJobError) as info:
        JobSpec.from_dict({"priority": 3})
    assert info.value.field == "image"
    assert "image is required" in str(info.value)
    assert "s3://" in str(info.value)


@pytest.mark.parametrize(
    "image", ["in.png", "/abs/in.png", "s3://bucket/key.png", "https://e.com/a.jpg", "file:///x"]
)
def test_image_accepted(image: str) -> None:
    assert spec(image=image).image == image


@pytest.mark.parametrize(
    "image", ["", "ftp://e.com/a.png", "s3://bucket", "s3://", "a\x00b", "x" * (MAX_URL_LEN + 1)]
)
def test_image_rejected(image: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        spec(image=image)
    assert info.value.field == "image"
    assert repr(image[:80]) in str(info.value)


def test_image_non_string_rejected() -> None:
    rejected("image", 5, "must be a string")


def test_unknown_field_rejected_naming_it() -> None:
    with pytest.raises(InvalidJobError) as info:
        JobSpec.from_dict({**BASE, "guidance_scale": 3.0})
    assert info.value.field == "guidance_scale"
    assert str(info.value).startswith("unknown field 'guidance_scale': allowed fields are image, ")
    for f in FIELDS:
        assert f.name in str(info.value)


def test_unknown_fields_first_in_sorted_order_is_named() -> None:
    with pytest.raises(InvalidJobError) as info:
        JobSpec.from_dict({**BASE, "zeta": 1, "alpha": 2})
    assert info.value.field == "alpha"


@pytest.mark.parametrize("data", [[], "in.png", None, 3])
def test_non_object_rejected(data: Any) -> None:
    with pytest.raises(InvalidJobError) as info:
        JobSpec.from_dict(data)
    assert str(info.value) == f"a job must be a JSON object, got {type(data).__name__}"


def test_schema_version_current_accepted() -> None:
    assert JobSpec.from_dict({**BASE, "schema_version": SCHEMA_VERSION}).schema_version == 1


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, -1, "1", True, 1.5, None])
def test_schema_version_not_understood_rejected(version: Any) -> None:
    exc = rejected("schema_version", version, f"1–{SCHEMA_VERSION}", "upgrade svdq")
    assert str(exc).startswith(f"schema_version={version!r} is not understood here")


def test_replace_rechecks() -> None:
    s = spec()
    assert s.replace(priority=9).priority == 9
    with pytest.raises(InvalidJobError) as info:
        s.replace(priority=10)
    assert info.value.field == "priority"


def test_invalid_job_error_pickles_with_field() -> None:
    import pickle

    with pytest.raises(InvalidJobError) as info:
        spec(priority=10)
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.field == "priority"
    assert str(copy) == str(info.value)
