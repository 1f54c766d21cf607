"""A service that is down gets a sentence, not a traceback (issue 10, defect 10): every command
family that needs Redis or the object store, run as a person would with one of them down,
names the service and its address (password masked), says what to check, and exits 1.

Down means nothing listens on the port: real connection refusals from redis-py, kombu and
botocore, no mocks. Before producer/services.outage, `svdq submit` printed redis-py's
ConnectionError with a 17-frame traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from svdq.producer.services import free_port
from tests.conftest import run_svdq
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration

PASSWORD = "outage-test-pw-31f"


def redis_down(env: dict[str, str]) -> dict[str, str]:
    return {**env, "SVDQ_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"}


def store_down(env: dict[str, str]) -> dict[str, str]:
    return {**env, "SVDQ_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}


def says_down(result, service: str, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Exit 1, and one sentence on stderr naming `service`, its address and what to check."""
    err = result.stderr
    assert result.returncode == 1, (result.returncode, err)
    assert "Traceback" not in err and PASSWORD not in err + result.stdout, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("svdq: ") and "Check that" in line, err
    if service == "redis":
        masked = env["SVDQ_REDIS_URL"].replace(PASSWORD, "***")
        assert f"Redis (the queue and job states) is unreachable at {masked}" in line, err
    else:
        bucket, endpoint = env["SVDQ_S3_BUCKET"], env["SVDQ_S3_ENDPOINT"]
        assert f"the object store (S3 bucket {bucket!r}) is unreachable at {endpoint}" in line


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "in" / "a.png", (160, 96))


@pytest.mark.parametrize("down", ["redis", "store"])
def test_submit(svdq_env, image, down):
    env = redis_down(svdq_env) if down == "redis" else store_down(svdq_env)
    says_down(run_svdq(["submit", str(image), "--variant", "tiny"], env, 120), down, env)


@pytest.mark.parametrize("down", ["redis", "store"])
def test_bulk(svdq_env, image, tmp_path, down):
    env = redis_down(svdq_env) if down == "redis" else store_down(svdq_env)
    result = run_svdq(
        ["bulk", str(image.parent), "--variant", "tiny"],
        env,
        120,
    )
    says_down(result, down, env)


@pytest.mark.parametrize("command", [["status", "j-1"], ["wait", "j-1", "--timeout", "5"]])
def test_status_and_wait(svdq_env, command):
    env = redis_down(svdq_env)
    says_down(run_svdq(command, env, 60), "redis", env)


def test_stats(svdq_env):
    env = redis_down(svdq_env)
    says_down(run_svdq(["stats"], env, 60), "redis", env)


@pytest.mark.parametrize("down", ["redis", "store"])
def test_worker(svdq_env, down):
    env = redis_down(svdq_env) if down == "redis" else store_down(svdq_env)
    says_down(run_svdq(["worker", "--gpus", "none", "--variant", "tiny"], env, 120), down, env)


def test_callbacks(svdq_env):
    env = {**redis_down(svdq_env), "SVDQ_CALLBACK_SECRET": "s"}
    says_down(run_svdq(["callbacks"], env, 60), "redis", env)


def test_exporter(svdq_env):
    env = redis_down(svdq_env)
    says_down(run_svdq(["exporter", "--once"], env, 60), "redis", env)
