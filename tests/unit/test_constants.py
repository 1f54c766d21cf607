"""The key and queue layout: what a job leaves behind, spelled out exactly."""

from __future__ import annotations

import pytest

from svdq.shared import constants, formats
from svdq.shared.constants import (
    RESULT_CONTENT_TYPE,
    input_key,
    job_key,
    output_key,
    queue_for,
    result_dir,
    result_key,
)
from svdq.shared.variants import REAL_VARIANTS, VARIANTS


def test_input_key_is_content_addressed() -> None:
    sha = "ab" * 32
    assert input_key(sha, "png") == "inputs/" + "ab" * 32 + ".png"
    assert input_key(sha, "jpg") == f"inputs/{sha}.jpg"


def test_result_key() -> None:
    assert result_key("j1") == "results/j1/result.json"
    assert result_key("j1", None) == "results/j1/result.json"
    assert result_key("j1", "team/a") == "team/a/results/j1/result.json"


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("mp4", "results/j1/clip.mp4"),
        ("gif", "results/j1/clip.gif"),
        ("poster", "results/j1/poster.jpg"),
    ],
)
def test_output_key(kind: str, key: str) -> None:
    assert output_key("j1", kind) == key
    assert output_key("j1", kind, "team/a") == "team/a/" + key


def test_output_key_unknown_kind_fails() -> None:
    with pytest.raises(KeyError):
        output_key("j1", "mov")


def test_output_prefix_with_stray_slashes_is_normalised() -> None:
    assert output_key("j1", "mp4", "/team/a/") == "team/a/results/j1/clip.mp4"


def test_empty_output_prefix_means_none() -> None:
    assert result_dir("j1", "") == "results/j1/"
    assert result_dir("j1") == "results/j1/"


def test_output_files_and_content_types() -> None:
    kinds = (*formats.names(), formats.POSTER.name)
    assert kinds == ("mp4", "gif", "poster")
    files = {kind: formats.output(kind).file_name for kind in kinds}
    assert files == {"mp4": "clip.mp4", "gif": "clip.gif", "poster": "poster.jpg"}
    types = {kind: formats.output(kind).content_type for kind in kinds}
    assert {**types, "json": RESULT_CONTENT_TYPE} == {
        "mp4": "video/mp4",
        "gif": "image/gif",
        "poster": "image/jpeg",
        "json": "application/json",
    }


def test_queue_names() -> None:
    assert queue_for("svd-xt") == "svdq.svd-xt"
    assert queue_for("auto") == "svdq.auto"
    assert queue_for("tiny") == "svdq.tiny"
    assert [queue_for(v) for v in VARIANTS] == [
        "svdq.auto",
        "svdq.svd",
        "svdq.svd-xt",
        "svdq.svd-xt-1-1",
        "svdq.tiny",
    ]


def test_job_key() -> None:
    assert job_key("j1") == "svdq:job:j1"


def test_variants() -> None:
    assert REAL_VARIANTS == ("svd", "svd-xt", "svd-xt-1-1")
    assert VARIANTS == ("auto", "svd", "svd-xt", "svd-xt-1-1", "tiny")
    assert "tiny" not in REAL_VARIANTS


def test_task_and_state_names() -> None:
    assert constants.TASK_GENERATE == "svdq.generate"
    assert constants.STATE_PROGRESS == "PROGRESS"
