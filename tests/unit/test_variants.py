"""The variant table: every place that needs a variant's facts reads them from
shared/variants.py, so validation, queues, time limits, model loading, the profile ladder,
settings and help text all agree with it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from svdq.producer.cli import build_parser
from svdq.shared import variants
from svdq.shared.celery_app import make_celery
from svdq.shared.constants import queue_for
from svdq.shared.errors import ModelNotFoundError
from svdq.shared.fields import FIELD_BY_NAME
from svdq.shared.limits import CEILING, MAX_GENERATIONS, generations, time_limits
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.variants import AUTO, BY_NAME, REAL_VARIANTS, TABLE, VARIANTS
from svdq.worker import engine, models, profiles

GB = 10**9


def test_the_table() -> None:
    assert VARIANTS == ("auto", "svd", "svd-xt", "svd-xt-1-1", "tiny")
    assert REAL_VARIANTS == ("svd", "svd-xt", "svd-xt-1-1")
    assert {v.name: v.frames for v in TABLE} == {
        "svd": 14,
        "svd-xt": 25,
        "svd-xt-1-1": 25,
        "tiny": 14,
    }
    assert BY_NAME["svd-xt"].model_id == "stabilityai/stable-video-diffusion-img2vid-xt"
    assert [v.name for v in TABLE if v.note] == ["tiny"]  # only tiny's clips carry a warning
    assert AUTO not in BY_NAME  # auto is resolved by a worker, never loaded


def test_unknown_variant_names_the_allowed_ones() -> None:
    with pytest.raises(KeyError, match="'svd-2' is not one of svd, svd-xt, svd-xt-1-1, tiny"):
        variants.variant("svd-2")


def test_validation_and_schema_accept_exactly_the_table() -> None:
    field = FIELD_BY_NAME["variant"]
    assert field.choices == VARIANTS
    for name in VARIANTS:
        assert JobSpec.from_dict({"image": "x.png", "variant": name}).variant == name
        assert f"{name} (" in field.help
    assert (
        variants.real_frames_help()
        in FIELD_BY_NAME["num_frames"].help
        == ("frames to generate (default: the variant's, 14 or 25)")
    )


def test_one_queue_per_variant() -> None:
    app = make_celery(Settings.from_env({}))
    queues = [q.name for q in app.conf.task_queues]
    assert [queue_for(v) for v in VARIANTS] == [q for q in queues if q != "svdq.callbacks"]


@pytest.mark.parametrize("name", [*VARIANTS, None])
def test_time_limits_follow_the_table(name: str | None) -> None:
    settings = Settings.from_env({"SVDQ_TASK_TIME_LIMIT": "1000"})
    scale = (
        BY_NAME[name].time_scale
        if name in BY_NAME
        else max(BY_NAME[v].time_scale for v in REAL_VARIANTS)  # auto may become any of them
    )
    assert time_limits(name, settings)[1] == max(2, math.ceil(1000 * scale))
    assert time_limits("svd", settings)[1] < time_limits("svd-xt", settings)[1]


@pytest.mark.parametrize("name", REAL_VARIANTS)
def test_model_loading_looks_for_the_tables_model_id(name: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"SVDQ_MODEL_DIR": str(tmp_path)})
    with pytest.raises(ModelNotFoundError, match=BY_NAME[name].model_id):
        models.model_source(settings, name)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_a_jobs_default_frames_and_decode_chunk_come_from_the_table(name: str) -> None:
    row = BY_NAME[name]
    cpu = profiles.CPU_PROFILE  # decode_chunk_size None: the profile leaves it to the variant
    model = models.LoadedModel(None, row, "here", cpu, 0.0)
    plan = engine.params_for(JobSpec(image="x.png", variant=name, seed=1), model)
    assert plan.num_frames == row.frames
    assert plan.decode_chunk_size == (row.decode_chunk_size or row.frames)
    assert plan.variant == name


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_profile_rows_carry_what_the_table_says_fits(name: str) -> None:
    need = BY_NAME[name].min_vram_gb
    for floor, row in profiles.GPU_TABLE:
        assert profiles.carries(row, name) == (floor >= need), (row.name, name)
    # and the ladder refuses a card below the smallest row that fits
    smallest = min(floor for floor, row in profiles.GPU_TABLE if floor >= need)
    if smallest > 0:
        with pytest.raises(Exception, match="needs at least"):
            profiles.ladder(int(smallest * GB * 0.5), name)


def test_workers_take_the_tables_variants() -> None:
    assert profiles.runnable_variants(None, allow_cpu=True) == tuple(BY_NAME)
    assert profiles.runnable_variants(80 * GB) == REAL_VARIANTS
    assert profiles.runnable_variants(6 * GB) == tuple(
        v for v in REAL_VARIANTS if BY_NAME[v].min_vram_gb <= 0
    )
    for name in VARIANTS:  # SVDQ_DEFAULT_VARIANT takes any name a job may use
        assert Settings.from_env({"SVDQ_DEFAULT_VARIANT": name}).default_variant == name


def test_cli_help_lists_every_variant(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse would wrap svd-xt-1-1 at its hyphens
    for command in ("worker", "plan", "submit"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for name in BY_NAME:
            assert name in text, (command, name)


def test_time_limits_grow_with_the_clips_a_job_may_generate_up_to_the_ceiling() -> None:
    """shared/limits.py: a job of N clips (candidates + repairs) gets N times one clip's
    limits, bounded by CEILING of the visibility timeout and never below one clip's."""
    settings = Settings.from_env({"SVDQ_TASK_TIME_LIMIT": "100", "SVDQ_VISIBILITY_TIMEOUT": "900"})
    plain = JobSpec.from_dict({"image": "x.png"})
    assert generations(plain) == 1
    assert generations(plain.replace(candidates=3)) == 3
    assert generations(plain.replace(repair_attempts=3)) == 1  # nothing retried
    assert generations(plain.replace(on_flicker="retry", repair_attempts=3, candidates=8)) == 11
    assert MAX_GENERATIONS == 11
    one = time_limits("svd-xt", settings)
    assert time_limits("svd-xt", settings, 3) == (300 - 30, 300)
    assert one == (100 - 10, 100)
    ceiling = int(900 * CEILING)
    assert time_limits("svd-xt", settings, 11)[1] == ceiling < 900
    tight = Settings.from_env({"SVDQ_TASK_TIME_LIMIT": "899", "SVDQ_VISIBILITY_TIMEOUT": "900"})
    assert time_limits("svd-xt", tight, 11) == time_limits("svd-xt", tight)  # one clip's
