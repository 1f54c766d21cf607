"""A job's identity: which JobSpec fields change the job id (the content address of input and
parameters) and which do not; split from test_spec.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from svdq.shared.errors import InvalidJobError
from svdq.shared.fields import (
    FIELD_BY_NAME,
    FIELDS,
    SEED_MAX,
    Field,
)
from svdq.shared.jobid import finalize
from svdq.shared.spec import JobSpec
from tests.unit.test_spec import PARTNER, _inside  # the field table's cases

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


# --- job identity ---------------------------------------------------------------------------

# Every field except image and job_id changes the job id, or does not; a new field must be
# put in one of these two sets (test_every_field_is_classified).
NOT_IDENTITY = {"priority", "metadata", "callback_url"}
# output_prefix is not a clip parameter, but a job's keys hang off it, so two prefixes are two
# jobs (two result.json files) and must not share one id.
IDENTITY = {f.name for f in FIELDS if f.name not in NOT_IDENTITY | {"image", "job_id"}} | {
    "schema_version"
}


def _other_value(f: Field) -> Any:
    """A valid value for `f` different from its default."""
    if f.type == "array":
        return ["gif"]
    if f.type == "boolean":
        return not f.default
    if f.choices:
        return next(c for c in f.choices if c != f.default)
    if f.name == "output_prefix":
        return "team/a"
    if f.type in ("integer", "number"):
        return _inside(f)[1] if f.default != f.maximum else _inside(f)[0]
    raise AssertionError(f"give {f.name} an alternative value in _other_value")


def test_every_field_is_classified() -> None:
    names = {f.name for f in FIELDS} - {"image", "job_id"}
    assert names <= IDENTITY | NOT_IDENTITY
    assert not IDENTITY & NOT_IDENTITY


def test_same_input_and_params_give_same_id_and_seed() -> None:
    a = finalize(spec(motion_bucket_id=180), SHA)
    b = finalize(spec(motion_bucket_id=180), SHA)
    assert a.job_id == b.job_id
    assert a.seed == b.seed
    assert a == b


def test_derived_id_and_seed_are_stable_across_releases() -> None:
    # Changing these breaks "resubmit = same job" against results already stored: only change
    # them on purpose (and say so in the release notes).
    done = finalize(JobSpec.from_dict({"image": "in.png"}), SHA)
    assert done.seed == GOLDEN_SEED
    assert done.job_id == GOLDEN_JOB_ID


def test_guidance_at_diffusers_defaults_keeps_the_ids_derived_before_it_existed() -> None:
    # min/max_guidance_scale came later: at 1.0/3.0 (what every job ran with before) they
    # stay out of the identity; any other value is another clip, so another job.
    default = finalize(JobSpec.from_dict({"image": "in.png"}), SHA)
    explicit = finalize(spec(min_guidance_scale=1, max_guidance_scale=3.0), SHA)
    assert explicit.job_id == default.job_id == GOLDEN_JOB_ID
    ramp = finalize(spec(max_guidance_scale=2.0), SHA)
    assert ramp.job_id != default.job_id and ramp.seed != default.seed


def test_guidance_min_above_max_names_both_fields() -> None:
    with pytest.raises(InvalidJobError) as info:
        spec(min_guidance_scale=4.0)  # above the default max, 3.0
    assert info.value.field == "min_guidance_scale"
    assert str(info.value).startswith(
        "min_guidance_scale=4.0 is above max_guidance_scale=3.0: guidance rises linearly"
    )
    with pytest.raises(InvalidJobError, match=r"min_guidance_scale=2\.0 is above max_guid"):
        spec(min_guidance_scale=2, max_guidance_scale=1.5)
    flat = spec(min_guidance_scale=2.5, max_guidance_scale=2.5)  # a flat ramp is fine
    assert (flat.min_guidance_scale, flat.max_guidance_scale) == (2.5, 2.5)
    base = spec(max_guidance_scale=5)
    with pytest.raises(InvalidJobError, match=r"min_guidance_scale=6\.0 is above"):
        base.replace(min_guidance_scale=6)


GOLDEN_SEED = 3950034775
GOLDEN_JOB_ID = "6d5c40f61fbebe8d74e757f9"


def test_derived_id_shape() -> None:
    done = finalize(spec(), SHA)
    assert done.job_id is not None
    assert len(done.job_id) == 24
    assert all(c in "0123456789abcdef" for c in done.job_id)
    assert done.seed is not None
    assert 0 <= done.seed <= SEED_MAX
    # A derived id is itself a valid explicit id.
    assert spec(job_id=done.job_id).job_id == done.job_id


def test_id_changes_with_input_sha() -> None:
    a, b = finalize(spec(), SHA), finalize(spec(), OTHER_SHA)
    assert a.job_id != b.job_id
    assert a.seed != b.seed


def test_id_does_not_depend_on_the_image_path() -> None:
    # Inputs are content addressed: the same bytes under another name are the same job.
    a = finalize(spec(image="a.png"), SHA)
    b = finalize(spec(image="s3://bucket/b.png"), SHA)
    assert (a.job_id, a.seed) == (b.job_id, b.seed)


# The quality fields (worker/quality.py) pick or store clips but never shape the first one:
# they never change the derived seed, and change the id only where they change the output.
QUALITY = {
    "on_static",
    "on_flicker",
    "min_motion",
    "max_flicker",
    "repair_attempts",
    "candidates",
    "keep_candidates",
}


@pytest.mark.parametrize(
    "name", sorted(n for n in IDENTITY - QUALITY if n not in ("schema_version", "seed"))
)
def test_clip_changing_param_changes_id_and_seed(name: str) -> None:
    base = finalize(spec(**PARTNER.get(name, {})), SHA)
    other = _other_value(FIELD_BY_NAME[name])
    changed = finalize(spec(**PARTNER.get(name, {}), **{name: other}), SHA)
    assert changed.job_id != base.job_id
    assert changed.seed != base.seed


@pytest.mark.parametrize(
    ("extra", "changes_id"),
    [
        ({"on_static": "retry"}, True),
        ({"on_flicker": "retry"}, True),
        ({"candidates": 3}, True),
        ({"min_motion": 0.02}, False),  # on_static=keep, one candidate: nothing acts on it
        ({"max_flicker": 0.5}, False),
        ({"repair_attempts": 3}, False),  # no check is retried
        ({"keep_candidates": True}, False),  # one candidate: nothing more to store
        ({"on_static": "retry", "min_motion": 0.02}, True),
        ({"on_flicker": "retry", "max_flicker": 0.5}, True),
        ({"on_flicker": "retry", "repair_attempts": 3}, True),
        ({"candidates": 3, "min_motion": 0.02}, True),  # the pick ranks by it
        ({"candidates": 3, "keep_candidates": True}, True),  # stores candidates/<i>.mp4
    ],
)
def test_quality_fields_keep_the_seed_and_change_the_id_only_when_they_act(
    extra: dict[str, Any], changes_id: bool
) -> None:
    """The last field of `extra` against the same job without it (the plain job for one
    field); the seed is always the plain job's."""
    assert set(extra) <= QUALITY
    *rest, _last = extra
    base = finalize(spec(**{k: extra[k] for k in rest}), SHA)
    changed = finalize(spec(**extra), SHA)
    assert changed.seed == base.seed == finalize(spec(), SHA).seed
    assert (changed.job_id != base.job_id) is changes_id


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("priority", 9),
        ("priority", 0),
        ("metadata", {"batch": "7"}),
        ("callback_url", "https://e.com/cb"),
    ],
)
def test_non_clip_param_keeps_id_and_seed(name: str, value: Any) -> None:
    assert name in NOT_IDENTITY
    base = finalize(spec(), SHA)
    changed = finalize(spec(**{name: value}), SHA)
    assert (changed.job_id, changed.seed) == (base.job_id, base.seed)


def test_explicit_job_id_is_kept() -> None:
    done = finalize(spec(job_id="mine-1"), SHA)
    assert done.job_id == "mine-1"
    assert done.seed == finalize(spec(), SHA).seed


def test_explicit_seed_is_kept_and_changes_id() -> None:
    derived = finalize(spec(), SHA)
    explicit = finalize(spec(seed=42), SHA)
    assert explicit.seed == 42
    assert explicit.job_id != derived.job_id
    assert finalize(spec(seed=42), SHA).job_id == explicit.job_id


def test_explicit_seed_equal_to_the_derived_one_gives_the_same_id() -> None:
    derived = finalize(spec(), SHA)
    assert finalize(spec(seed=derived.seed), SHA).job_id == derived.job_id


def test_random_seed_draws_and_the_id_follows_the_seed() -> None:
    a = finalize(spec(), SHA, random_seed=True)
    b = finalize(spec(), SHA, random_seed=True)
    assert a.seed is not None and b.seed is not None
    assert 0 <= a.seed <= SEED_MAX
    assert a.seed != b.seed  # 1 in 2**32 chance of a false failure
    assert a.job_id != b.job_id
    assert finalize(spec(seed=a.seed), SHA).job_id == a.job_id


def test_random_seed_overrides_an_explicit_seed() -> None:
    seeds = {finalize(spec(seed=7), SHA, random_seed=True).seed for _ in range(3)}
    assert seeds != {7}


def test_finalize_is_idempotent() -> None:
    once = finalize(spec(priority=2), SHA)
    assert finalize(once, SHA) == once
    assert finalize(once, OTHER_SHA) == once  # id and seed are now explicit


def test_finalize_leaves_every_other_field_alone() -> None:
    s = spec(priority=2, metadata={"a": "b"}, formats="both")
    done = finalize(s, SHA)
    assert dataclasses.replace(done, seed=None, job_id=None) == s
