"""A Redis without AOF restarted under queued jobs (issue 11, item 4): `svdq wait --batch` and
`svdq status` say the records were lost, not "never submitted", and print the one command
that resubmits exactly those jobs; run as printed, it brings every job back, each run once.

Real processes throughout: a no-AOF redis-server SIGKILLed and started again (empty), the
`svdq` command in subprocesses, the session's S3 server, a real tiny worker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis as redis_lib

from svdq.shared.constants import RESULT_FILE, deliveries_key, generations_key, result_dir
from tests.conftest import REPO, run_svdq
from tests.faults.conftest import PrivateRedis, Workers
from tests.integration.helpers import make_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow (CI runs it)

QUICK = ["--variant", "tiny", "--frames", "2", "--steps", "1", "--width", "64", "--height", "64"]
COMMAND = re.compile(r"^\s*(svdq bulk .+ --batch-id \S+)\s*$", re.MULTILINE)


@pytest.fixture
def no_aof_redis() -> PrivateRedis:
    server = PrivateRedis(aof=False)
    server.start()
    yield server
    server.kill()


def test_lost_batch_is_named_and_its_printed_command_brings_every_job_back(
    svdq_env, store, no_aof_redis, tmp_path
):
    env = {
        **svdq_env,
        "SVDQ_REDIS_URL": no_aof_redis.url,
        "SVDQ_BATCH_DIR": str(tmp_path / "journals"),
        # the printed command is `svdq ...`, run as a user's shell would find it
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    folder = tmp_path / "photos"
    for i in range(3):
        make_image(folder / f"img{i}.png", (72 + 8 * i, 64), color=40 * i)
    batch = "lost-state-b1"
    sent = run_svdq(["bulk", str(folder), *QUICK, "--batch-id", batch, "--json"], env)
    assert sent.returncode == 0, sent.stderr
    rdb = redis_lib.Redis.from_url(no_aof_redis.url)
    job_ids = [j.decode() for j in rdb.lrange(f"svdq:batch:{batch}:jobs", 0, -1)]
    assert len(job_ids) == 3
    journal = tmp_path / "journals" / f"{batch}.jsonl"
    assert [json.loads(line)["job_id"] for line in journal.read_text().splitlines()] == job_ids

    # No worker took them: they are queued. Redis dies and comes back empty.
    no_aof_redis.kill()
    no_aof_redis.start()
    assert rdb.dbsize() == 0

    # A worker starts now (its start-up overlaps the commands below); nothing is queued.
    workers = Workers(env, tmp_path)
    worker = workers.start("lost", wait=False)
    try:
        resubmit_and_finish(env, rdb, store, journal, batch, job_ids, worker)
    finally:
        worker.stop()
        print(f"--- worker log (tail) ---\n{worker.text()[-4000:]}")  # shown on failure


def resubmit_and_finish(env, rdb, store, journal, batch, job_ids, worker):  # type: ignore[no-untyped-def]
    """What the user sees, the printed command run as printed (twice), then every job done."""
    waited = run_svdq(["wait", "--batch", batch, "--timeout", "5"], env, timeout=60)
    said = waited.stdout + waited.stderr
    assert waited.returncode == 1, said
    assert f"batch {batch}: its record is gone from Redis (Redis lost state?" in said, said
    assert "Redis restarted" in said and "appendonly=no" in said, said
    assert "3 unknown; 3 lost" in said, said
    commands = COMMAND.findall(said)
    assert commands == [f"svdq bulk {journal} --batch-id {batch}"], said

    status = run_svdq(["status", "--batch", batch, "--json"], env, timeout=60)
    event = json.loads(status.stdout)
    assert status.returncode == 1
    assert (event["event"], event["lost"], event["record_gone"]) == ("lost", 3, True)
    assert event["command"] == commands[0]

    one = run_svdq(["status", job_ids[0]], env, timeout=60)
    assert one.returncode == 1
    assert f"{job_ids[0]}: unknown — its record is gone: Redis lost state?" in one.stdout
    assert f"line 1 of {journal}" in one.stdout and "is in the store" in one.stdout
    assert one.stdout.rstrip().endswith(commands[0]), one.stdout

    # The printed command, exactly as printed, through a shell; then once more: nothing twice.
    again = subprocess.run(
        commands[0], shell=True, env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert f"batch {batch}: 3 submitted" in again.stderr, again.stderr
    twice = subprocess.run(
        commands[0] + " --json",
        shell=True,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert twice.returncode == 0, twice.stderr
    counts = [json.loads(line) for line in twice.stdout.splitlines()][-1]
    assert counts["event"] == "submitted", twice.stdout
    assert counts["submitted"] == counts["resubmitted"] == 0, counts
    assert counts["already_queued"] + counts["already_done"] == 3, counts
    # Each job listed once in the batch, however often the command runs.
    assert [j.decode() for j in rdb.lrange(f"svdq:batch:{batch}:jobs", 0, -1)] == job_ids

    worker.wait_ready()
    done = run_svdq(["wait", "--batch", batch, "--timeout", "180", "--json"], env, 240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["succeeded"] == 3
    for job_id in job_ids:
        markers = [k for k in store.list_prefix(result_dir(job_id)) if k.endswith(RESULT_FILE)]
        assert markers == [result_dir(job_id) + RESULT_FILE], job_id
        assert int(rdb.get(generations_key(job_id)) or 0) == 1, job_id
        assert rdb.llen(deliveries_key(job_id)) == 1, job_id
