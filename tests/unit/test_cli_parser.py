"""The `svdq` command line: one flag per JobSpec field, parsed without running anything."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from svdq.producer.cli import build_parser, main
from svdq.producer.jobflags import add_job_flags, flag_name, spec_params
from svdq.shared.errors import InvalidJobError
from svdq.shared.fields import FIELD_BY_NAME, FIELDS
from svdq.shared.spec import JobSpec, json_schema
from svdq.shared.variables import COMPILE_VARIABLES, PROFILE_VARIABLES, VARIABLES

# field -> (flag, arguments after the flag, the value spec_params gives)
FLAGS: dict[str, tuple[str, list[str], Any]] = {
    "variant": ("--variant", ["svd-xt"], "svd-xt"),
    "num_frames": ("--frames", ["14"], 14),
    "num_inference_steps": ("--steps", ["30"], 30),
    "motion_bucket_id": ("--motion-bucket-id", ["180"], 180),
    "noise_aug_strength": ("--noise-aug-strength", ["0.1"], 0.1),
    "min_guidance_scale": ("--min-guidance-scale", ["1.5"], 1.5),
    "max_guidance_scale": ("--max-guidance-scale", ["2.5"], 2.5),
    "fps": ("--fps", ["6"], 6),
    "output_fps": ("--output-fps", ["12"], 12),
    "decode_chunk_size": ("--decode-chunk-size", ["4"], 4),
    "seed": ("--seed", ["1234"], 1234),
    "width": ("--width", ["512"], 512),
    "height": ("--height", ["320"], 320),
    "resize": ("--resize", ["pad"], "pad"),
    "formats": ("--format", ["gif"], ["gif"]),
    "on_static": ("--on-static", ["retry"], "retry"),
    "on_flicker": ("--on-flicker", ["retry"], "retry"),
    "min_motion": ("--min-motion", ["0.02"], 0.02),
    "max_flicker": ("--max-flicker", ["0.005"], 0.005),
    "repair_attempts": ("--repair-attempts", ["3"], 3),
    "candidates": ("--candidates", ["4"], 4),
    "keep_candidates": ("--keep-candidates", [], True),
    "priority": ("--priority", ["9"], 9),
    "job_id": ("--job-id", ["job-1"], "job-1"),
    "output_prefix": ("--prefix", ["team/a"], "team/a"),
    "callback_url": ("--callback-url", ["https://e.com/cb"], "https://e.com/cb"),
    "metadata": ("--meta", ["sku=A-1"], {"sku": "A-1"}),
}


def submit(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["submit", "in.png", *argv])


def test_every_field_except_image_has_a_flag_in_this_table() -> None:
    assert set(FLAGS) == {f.name for f in FIELDS} - {"image"}


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_flag_name(name: str) -> None:
    assert flag_name(FIELD_BY_NAME[name]) == FLAGS[name][0]


@pytest.mark.parametrize("command", ["run", "submit"])
@pytest.mark.parametrize("f", [f for f in FIELDS if f.name != "image"], ids=lambda f: f.name)
def test_every_field_is_a_flag_in_help(
    command: str, f: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    assert f"{flag_name(f)} " in capsys.readouterr().out


def test_image_has_no_flag() -> None:
    parser = argparse.ArgumentParser()
    add_job_flags(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--image", "x.png"])


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_each_flag_alone(name: str) -> None:
    flag, values, expected = FLAGS[name]
    params, random_seed = spec_params(submit(flag, *values))
    assert params == {name: expected}
    assert random_seed is False


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_each_flag_on_run(name: str) -> None:
    flag, values, expected = FLAGS[name]
    args = build_parser().parse_args(["run", "in.png", "-o", "out.mp4", flag, *values])
    assert spec_params(args) == ({name: expected}, False)


def test_no_flags_no_params() -> None:
    assert spec_params(submit()) == ({}, False)


def test_all_flags_together_make_a_valid_spec() -> None:
    argv = [a for flag, values, _ in FLAGS.values() for a in (flag, *values)]
    params, random_seed = spec_params(submit(*argv))
    assert random_seed is False
    assert params == {name: expected for name, (_, _, expected) in FLAGS.items()}
    s = JobSpec.from_dict({"image": "in.png", **params})
    assert s.num_frames == 14
    assert s.formats == ("gif",)
    assert s.output_prefix == "team/a"
    assert s.metadata == {"sku": "A-1"}


def test_seed_random() -> None:
    params, random_seed = spec_params(submit("--seed", "random"))
    assert params == {}
    assert random_seed is True


def test_seed_random_with_other_flags() -> None:
    params, random_seed = spec_params(submit("--seed", "random", "--fps", "8"))
    assert params == {"fps": 8}
    assert random_seed is True


@pytest.mark.parametrize("value", ["x", "1.5", "RANDOM", ""])
def test_bad_seed_exits_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        submit("--seed", value)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err
    assert "'random'" in err


def test_meta_repeated() -> None:
    params, _ = spec_params(submit("--meta", "a=1", "--meta", "b=2"))
    assert params == {"metadata": {"a": "1", "b": "2"}}


def test_meta_value_may_hold_equals_and_be_empty() -> None:
    params, _ = spec_params(submit("--meta", "q=x=y", "--meta", "empty="))
    assert params == {"metadata": {"q": "x=y", "empty": ""}}


def test_meta_last_value_wins() -> None:
    params, _ = spec_params(submit("--meta", "a=1", "--meta", "a=2"))
    assert params == {"metadata": {"a": "2"}}


def test_meta_without_equals_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        submit("--meta", "novalue")
    assert info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_format_repeatable() -> None:
    params, _ = spec_params(submit("--format", "mp4", "--format", "gif"))
    assert params == {"formats": ["mp4", "gif"]}
    assert JobSpec.from_dict({"image": "x", **params}).formats == ("mp4", "gif")


def test_format_both() -> None:
    params, _ = spec_params(submit("--format", "both"))
    assert params == {"formats": ["both"]}
    assert JobSpec.from_dict({"image": "x", **params}).formats == ("mp4", "gif")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--steps", "x"),
        ("--steps", "2.5"),
        ("--frames", "many"),
        ("--noise-aug-strength", "lots"),
        ("--format", "mov"),
        ("--resize", "zoom"),
        ("--variant", "svd-2"),
        ("--priority", "high"),
    ],
)
def test_bad_flag_value_exits_2(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        submit(flag, value)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err
    assert repr(value) in err


def test_out_of_range_values_pass_the_parser_and_fail_the_spec() -> None:
    # Bounds live in one place (the field table); the parser only checks types.
    params, _ = spec_params(submit("--priority", "10"))
    assert params == {"priority": 10}
    with pytest.raises(InvalidJobError, match=r"priority=10 is out of range: an integer 0–9"):
        JobSpec.from_dict({"image": "x", **params})


def test_guidance_flags_reach_the_spec_and_a_falling_ramp_is_refused() -> None:
    params, _ = spec_params(submit("--min-guidance-scale", "2", "--max-guidance-scale", "4.5"))
    ramp = JobSpec.from_dict({"image": "x", **params})
    assert (ramp.min_guidance_scale, ramp.max_guidance_scale) == (2.0, 4.5)
    params, _ = spec_params(submit("--min-guidance-scale", "5", "--max-guidance-scale", "4"))
    with pytest.raises(InvalidJobError, match=r"min_guidance_scale=5\.0 is above max_guidance_"):
        JobSpec.from_dict({"image": "x", **params})
    schema = json_schema()["properties"]
    assert schema["min_guidance_scale"] | {"description": ""} == {
        "description": "",
        "type": "number",
        "minimum": 0,
        "maximum": 20,
        "default": 1.0,
    }
    assert schema["max_guidance_scale"]["default"] == 3.0
    assert "last frame" in schema["max_guidance_scale"]["description"]


def test_schema_command_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == json_schema()


def test_help_epilog_names_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in [*VARIABLES, *PROFILE_VARIABLES, *COMPILE_VARIABLES]:
        assert name in out
    assert "Exit codes: 0 done, 1 a job or service failed, 2 bad input" in out


def test_no_command_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2


def test_submit_needs_an_image() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["submit", "--fps", "7"])
    assert info.value.code == 2


def test_bulk_report_without_wait_is_refused_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bulk", str(tmp_path), "--report", "out.csv"]) == 2
    err = capsys.readouterr().err
    assert "--report/--presign need --wait" in err
    assert "svdq wait --batch BATCH --report out.csv" in err
