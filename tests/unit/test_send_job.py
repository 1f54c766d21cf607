"""shared/celery_app.send_job refuses a job that was not prepared, in a sentence naming the
missing field (issue 10, defect 9: it was a bare AssertionError)."""

from __future__ import annotations

import pytest

from svdq.shared.celery_app import make_celery, send_job
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
