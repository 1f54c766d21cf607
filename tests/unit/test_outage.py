"""producer/services.outage: which errors mean a service is down or refused us, and the
sentence each gets (the commands themselves are run against closed ports in
tests/faults/test_outages.py)."""

from __future__ import annotations

import pytest
import redis
from botocore.exceptions import EndpointConnectionError, NoCredentialsError
from kombu.exceptions import OperationalError

from svdq.producer.services import outage
from svdq.shared.errors import InvalidJobError, TransientError
from svdq.shared.settings import Settings

SETTINGS = Settings.from_env(
    {
        "SVDQ_REDIS_URL": "redis://:hunter2@redis.example:6379/0",
        "SVDQ_S3_ENDPOINT": "http://minio.example:9000",
        "SVDQ_S3_BUCKET": "clips",
    }
)
REDIS_AT = "at redis://:***@redis.example:6379/0, set by SVDQ_REDIS_URL"


def wrapped(exc: Exception) -> TransientError:
    """`exc` as svdq's storage layer hands it on: raised from it."""
    try:
        raise TransientError("S3 head_object failed") from exc
    except TransientError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (redis.ConnectionError("Error 111 connecting"), f"is unreachable {REDIS_AT}"),
        (redis.TimeoutError("Timeout connecting"), f"is unreachable {REDIS_AT}"),
        (OperationalError("Error 111 connecting"), f"is unreachable {REDIS_AT}"),
        (redis.AuthenticationError("invalid password"), f"refused the password {REDIS_AT}"),
        (redis.ResponseError("WRONGPASS invalid username"), "refused the password"),
        (redis.ResponseError("DB index is out of range"), "refused the database number"),
        (
            wrapped(EndpointConnectionError(endpoint_url="http://minio.example:9000/clips")),
            "the object store (S3 bucket 'clips') is unreachable at http://minio.example:9000",
        ),
        (wrapped(NoCredentialsError()), "has no credentials to use"),
    ],
)
def test_a_service_down_gets_a_sentence(exc: Exception, says: str) -> None:
    sentence = outage(exc, SETTINGS)
    assert sentence is not None and says in sentence
    assert "hunter2" not in sentence and "Check that" in sentence


@pytest.mark.parametrize(
    "exc",
    [
        InvalidJobError("num_frames=0 is not allowed", "num_frames"),
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        TransientError("S3 put_object failed: SlowDown"),
        ValueError("x"),
    ],
)
def test_other_errors_are_not_outages(exc: Exception) -> None:
    assert outage(exc, SETTINGS) is None
