"""`svdq dead list | retry` and `svdq doctor`, run as a person would, against real Redis."""

from __future__ import annotations

import json

import pytest

from svdq.shared.constants import DEAD_LETTER_KEY, deliveries_key
from svdq.worker.delivery import Attempt, dead_letter
from tests.conftest import run_svdq
from tests.integration.helpers import FAST, make_image, queued_messages

pytestmark = pytest.mark.integration


def test_dead_list_and_retry(fault_env, fault_client, rdb, tmp_path):
    spec = fault_client.prepare(
        {"image": str(make_image(tmp_path / "d.png")), "job_id": "doomed", **FAST}
    )
    for worker in ("w1@h", "w2@h"):
        Attempt(rdb, "doomed", 600, worker).close("transient: S3 put_object failed")
    dead_letter(rdb, spec, "transient: S3 put_object failed", 600)

    listed = run_svdq(["dead", "list", "--json"], fault_env)
    assert listed.returncode == 0, listed.stderr
    record = json.loads(listed.stdout)
    assert record["job_id"] == "doomed" and record["spec"] == spec.to_dict()
    assert [(a["n"], a["worker"]) for a in record["attempts"]] == [(1, "w1@h"), (2, "w2@h")]
    human = run_svdq(["dead", "list"], fault_env).stdout
    assert "doomed: transient: S3 put_object failed" in human and "#2 w2@h" in human

    retried = run_svdq(["dead", "retry", "doomed"], fault_env)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == "doomed: queued again"
    assert not rdb.hexists(DEAD_LETTER_KEY, "doomed")
    assert not rdb.exists(deliveries_key("doomed"))  # a fresh count of deliveries
    assert queued_messages(fault_env["SVDQ_REDIS_URL"]) == 1

    again = run_svdq(["dead", "retry", "doomed"], fault_env)
    assert again.returncode == 2 and "is not on the dead-letter list" in again.stderr


def test_doctor_passes_a_safe_setup_and_names_what_is_unsafe(fault_env, svdq_env):
    safe = run_svdq(["doctor", "--json"], fault_env)  # the suite's Redis has AOF on
    findings = [json.loads(line) for line in safe.stdout.splitlines()]
    assert safe.returncode == 0, safe.stdout
    assert {f["check"] for f in findings if f["level"] == "ok"} >= {
        "time limits",
        "lease",
        "serializer",
        "redis aof",
    }
    unsafe = run_svdq(
        ["doctor"], {**fault_env, "SVDQ_LEASE_TTL": "60", "SVDQ_VISIBILITY_TIMEOUT": "30"}
    )
    assert unsafe.returncode == 1
    assert "UNSAFE lease: SVDQ_LEASE_TTL=60 ≥ SVDQ_VISIBILITY_TIMEOUT=30" in unsafe.stdout
    remote = run_svdq(["doctor"], {**fault_env, "SVDQ_REDIS_URL": "redis://10.255.255.1:6379/0"})
    assert remote.returncode == 1
    assert "UNSAFE redis auth" in remote.stdout and "UNSAFE redis: cannot reach" in remote.stdout
