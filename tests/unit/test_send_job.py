"""shared/celery_app.send_job refuses a job that was not prepared, in a sentence naming the
missing field (issue 10, defect 9: it was a bare AssertionError)."""

from __future__ import annotations

import pytest

from svdq.shared.celery_app import ARGSREPR_MAX, job_argsrepr, make_celery, send_job
from svdq.shared.errors import InvalidJobError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec


@pytest.mark.parametrize(
    ("fields", "missing"),
    [({"variant": "tiny"}, "job_id"), ({"job_id": "j-1"}, "variant")],
)
def test_an_unprepared_job_is_refused_by_name(fields: dict[str, str], missing: str) -> None:
    settings = Settings.from_env({})
    spec = JobSpec.from_dict({"image": "s3://b/inputs/x.png", **fields})
    with pytest.raises(InvalidJobError, match=f"{missing} is missing") as caught:
        send_job(make_celery(settings), spec, settings)  # refused before anything connects
    assert caught.value.field == missing


@pytest.mark.parametrize(
    ("image", "name"),
    [
        # a long name keeps its start and its end (the extension), 59 characters in all
        (
            "s3://b/inputs/" + "0123456789" * 7 + ".png",
            "0123456789" * 2 + "012345678" + "…" + "56789" + "0123456789" * 2 + ".png",
        ),
        ("https://cdn.test/p/cat.jpg?X-Amz-Signature=secret#frag", "cat.jpg"),
        ("/home/me/shots/dog.webp", "dog.webp"),
        ("C:\\Users\\me\\bird.gif", "bird.gif"),
        ("folder/with\nnewline\x1b[31m.png", "with_newline_[31m.png"),
        ("https://cdn.test/", "?"),
    ],
)
def test_argsrepr_names_the_file_and_nothing_secret(image: str, name: str) -> None:
    spec = JobSpec.from_dict(
        {
            "image": "s3://b/inputs/x.png",
            "variant": "svd-xt",
            "num_frames": 25,
            "metadata": {"token": "hidden"},
            "callback_url": "https://h.test/cb?key=hidden",
        }
    )
    text = job_argsrepr(spec, image)
    assert text == f"svd-xt 1024x576 25f 25 steps motion 127 {name}"
    assert "hidden" not in text and "secret" not in text and len(text) <= ARGSREPR_MAX


def test_argsrepr_defaults() -> None:
    spec = JobSpec.from_dict({"image": "s3://b/inputs/abc.png"})
    assert job_argsrepr(spec) == "auto 1024x576 default frames 25 steps motion 127 abc.png"
