"""The HTTP API's pure parts: what a caller may name as an image, how a batch line becomes a
row, problem details, and that the API process never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from svdq.producer.api.batches import MAX_LINE, parse_line
from svdq.producer.api.problems import Problem
from svdq.producer.api.requests import check_remote_image
from svdq.shared.errors import InvalidJobError
from svdq.shared.settings import Settings

SETTINGS = Settings.from_env({"SVDQ_S3_BUCKET": "b"})
URLS = Settings.from_env({"SVDQ_S3_BUCKET": "b", "SVDQ_ALLOW_URLS": "1"})


def test_the_api_process_imports_no_torch() -> None:
    code = (
        "import sys; from svdq.producer.api.app import create_app; "
        "import svdq.producer.apicli; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "image",
    [
        "/etc/hostname",
        "../x.png",
        "x.png",
        "file:///etc/hostname",
        "~/.ssh/id_rsa",
        "http://example.com/x.png",
        "s3://b/results/j/poster.jpg",
        "s3://b/team/results/j/clip.gif",
        None,
        7,
    ],
)
def test_images_a_caller_may_not_name(image: object) -> None:
    with pytest.raises(InvalidJobError) as info:
        check_remote_image(image, URLS)
    assert info.value.field == "image"
    assert "is not allowed" in str(info.value)


def test_urls_only_when_allowed() -> None:
    assert check_remote_image("https://example.com/x.png", URLS) == "https://example.com/x.png"
    with pytest.raises(InvalidJobError, match="SVDQ_ALLOW_URLS=1"):
        check_remote_image("https://example.com/x.png", SETTINGS)
    with pytest.raises(InvalidJobError):
        check_remote_image("https://example.com/x.png", URLS, urls=False)
    assert check_remote_image("s3://b/uploads/x.png", SETTINGS) == "s3://b/uploads/x.png"


def test_batch_lines() -> None:
    assert parse_line(b"  \n", 1, SETTINGS) is None
    row = parse_line(b'{"image": "s3://b/in/x.png", "seed": 3}', 2, SETTINGS)
    assert row is not None and row.data == {"image": "s3://b/in/x.png", "seed": 3}
    bad = parse_line(b"{nope", 3, SETTINGS)
    assert bad is not None and bad.data is None and "line 3: not valid JSON" in str(bad.error)
    local = parse_line(b'{"image": "/etc/passwd"}', 4, SETTINGS)
    assert local is not None and local.field == "image" and "line 4" in str(local.error)
    long = parse_line(b"x" * (MAX_LINE + 1), 5, SETTINGS)
    assert long is not None and "allowed" in str(long.error)
    listed = parse_line(b"[1]", 6, SETTINGS)
    assert listed is not None and "JSON object" in str(listed.error)


def test_problem_details_carry_the_cli_wording() -> None:
    exc = InvalidJobError("num_frames=999 is not allowed: an integer 1–100", field="num_frames")
    body = Problem.invalid(exc).body("/v1/jobs")
    assert body == {
        "type": "https://svdq.dev/problems/invalid-job",
        "title": "Bad Request",
        "status": 400,
        "detail": "num_frames=999 is not allowed: an integer 1–100",
        "reason": "invalid-job",
        "instance": "/v1/jobs",
        "field": "num_frames",
    }
