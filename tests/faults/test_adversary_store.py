"""The adversary's storage scenarios, through a real worker, the suite's Redis and a moto S3
server the test stops and starts: the store down while a worker looks for the commit marker,
a tampered input, a damaged result.json (issue 10)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import warnings
from collections.abc import Iterator

import pytest

from svdq.producer.client import Client
from svdq.shared.constants import generations_key, result_dir, result_key
from svdq.shared.records import INVALID_PREFIX
from svdq.shared.settings import Settings
from svdq.worker.delivery import attempts
from tests.faults.conftest import check_end_state
from tests.faults.test_workers import submit
from tests.integration.helpers import FAST, make_image

pytestmark = pytest.mark.integration

SLOW = {"SVDQ_VISIBILITY_TIMEOUT": "90", "SVDQ_TASK_TIME_LIMIT": "80"}


class S3Switch:
    """A second moto server on its own port, sharing the session server's buckets (same
    process, same backend): the worker is pointed at it, and the test turns it off and on."""

    def __init__(self) -> None:
        from svdq.producer.services import free_port

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None

    def on(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def off(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def s3_switch() -> Iterator[S3Switch]:
    switch = S3Switch()
    switch.on()
    yield switch
    with contextlib.suppress(Exception):
        switch.off()


def wait_for(text: str, worker, seconds: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while text not in worker.text():
        assert time.monotonic() < deadline, worker.text()[-3000:]
        time.sleep(0.2)


def test_store_down_while_looking_for_the_marker_retries_the_job(
    fault_env, store, rdb, workers, s3_switch, tmp_path
):
    """Defect 2: the commit-marker check met a dead store and the job failed for good, with no
    delivery recorded. Now the delivery is recorded as transient and the job comes back."""
    worker = workers.start("marker", SVDQ_S3_ENDPOINT=s3_switch.endpoint, **SLOW)
    client = Client(Settings.from_env({**fault_env, **SLOW}), store)
    image = make_image(tmp_path / "m.png", (160, 96))
    s3_switch.off()  # the worker's first store call for the job is the marker check
    submit(client, image, "marker-down")
    wait_for("result.json", worker)  # the marker check's fault, logged with its retry
    s3_switch.on()
    states = check_end_state(client, store, rdb, {"marker-down": 0}, 90)
    assert states["marker-down"]["state"] == "succeeded"
    first = attempts(rdb, "marker-down")[0]
    assert first["reason"].startswith("transient: ") and "result.json" in first["reason"]
    assert not first["final"]
    assert int(rdb.get(generations_key("marker-down"))) == 1  # no generation for a lookup


def test_a_tampered_input_fails_in_the_worker_and_the_producer_uploads_it_again(
    fault_env, store, rdb, workers, tmp_path
):
    """Defect 4: inputs/<sha256>.png overwritten with another valid image. The worker checks the
    bytes against the key's hash (InvalidJobError naming both, one final attempt, no retry);
    the producer, finding a checksum that does not match (HEAD, no download), uploads again."""
    from svdq.producer.inputs import store_input
    from svdq.shared.jobid import finalize
    from svdq.shared.spec import JobSpec

    settings = Settings.from_env(fault_env)
    client = Client(settings, store)
    good = make_image(tmp_path / "good.png", (160, 96))
    other = make_image(tmp_path / "other.png", (160, 96), color=120).read_bytes()
    stored = store_input(str(good), store, settings)
    key = str(store.key_from_uri(stored.uri))
    store.put_bytes(key, other, "image/png")  # another valid PNG under the first one's hash
    tampered = finalize(JobSpec(image=stored.uri, job_id="tampered", **FAST), stored.sha256)
    client.enqueue(tampered)  # queued as a producer queued it before the tampering
    workers.start("tamper")
    states = check_end_state(client, store, rdb, {"tampered": 0}, 90)
    error = states["tampered"]["error"]
    assert error.startswith("InvalidJobError") and stored.sha256 in error
    assert hashlib.sha256(other).hexdigest() in error
    assert [a["final"] for a in attempts(rdb, "tampered")] == [True]  # not retried

    again = client.submit(str(good), job_id="resubmitted", **FAST)  # uploads the right bytes
    assert store.head(key).sha256 == stored.sha256
    states = check_end_state(client, store, rdb, {"resubmitted": 0}, 90)
    assert states["resubmitted"]["result"]["input"]["sha256"] == stored.sha256
    assert again.spec.image == stored.uri


def markers_set_aside(store, job_id: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    keys = [k for k in store.list_prefix(result_dir(job_id)) if INVALID_PREFIX in k]
    return [store.get_bytes(k) for k in keys]


def test_a_damaged_marker_is_set_aside_and_the_job_regenerates(
    fault_env, store, rdb, workers, tmp_path
):
    """Defect 5: `{}` or broken JSON as result.json made a re-submission a no-op (or failed the
    job with a raw JSONDecodeError). Now an invalid marker counts as absent: the producer
    queues the job, the worker moves the marker aside and runs it; --force (submit, like
    bulk) deletes a valid one so the job runs again."""
    client = Client(Settings.from_env(fault_env), store)
    image = make_image(tmp_path / "d.png", (160, 96))
    workers.start("damaged")
    submit(client, image, "damaged")
    check_end_state(client, store, rdb, {"damaged": 0}, 90)
    marker = result_key("damaged")
    for n, damage in enumerate([b"{}", b'{"job_id": "dama'], start=2):
        store.put_bytes(marker, damage, "application/json")
        assert not submit(client, image, "damaged").skipped  # not done: queued again
        states = check_end_state(client, store, rdb, {"damaged": n}, 90)
        assert states["damaged"]["result"]["job_id"] == "damaged"
        assert int(rdb.get(generations_key("damaged"))) == n
    assert sorted(markers_set_aside(store, "damaged")) == sorted([b"{}", b'{"job_id": "dama'])
    assert submit(client, image, "damaged").skipped  # a valid marker: done, not queued
    handle = client.submit(str(image), job_id="damaged", metadata={}, force=True, **FAST)
    assert not handle.skipped
    check_end_state(client, store, rdb, {"damaged": 4}, 90)
    assert int(rdb.get(generations_key("damaged"))) == 4  # --force ran it again


def test_no_command_prints_a_traceback_for_a_stored_record(fault_env, store) -> None:
    """Defect 5: a damaged result.json, or a forged state in Redis, made `svdq status`,
    `results` and `wait` crash with KeyError tracebacks."""
    from svdq.shared.celery_app import make_celery
    from tests.conftest import run_svdq

    def clean(args: list[str], shown: str | None = None) -> None:
        out = run_svdq(args, fault_env, timeout=60)
        said = out.stderr + out.stdout
        assert out.returncode != 0 and "Traceback" not in said, (args, said)
        assert shown is None or shown in said, (args, said)

    status, results, wait = ["status", "forged"], ["results", "forged"], ["wait", "forged"]
    # Redis knows nothing of the job: result.json alone decides, and none of these is one.
    for record in [b"[1, 2]", b'{"job_id": "forged"', b"\xff\xfe", b"{}"]:
        store.put_bytes(result_key("forged"), record, "application/json")
        clean(status, "unknown")
    clean(results)
    clean([*wait, "--timeout", "5"])
    # A SUCCESS state in Redis whose result is no record (forged, or left by an old worker).
    with warnings.catch_warnings():  # Celery's Redis backend calls redis-py's deprecated setex
        warnings.simplefilter("ignore", DeprecationWarning)
        make_celery(Settings.from_env(fault_env)).backend.store_result("forged", {}, "SUCCESS")
    for args in (status, results, wait):
        clean(args, "not valid")
    store.delete(result_key("forged"))


def test_a_store_outage_longer_than_three_deliveries_does_not_dead_letter(
    fault_env, store, rdb, workers, s3_switch, tmp_path
):
    """Defect 3: with the store down, three transient deliveries (seconds) dead-lettered every
    job that started during the outage. Transient faults now have a time budget of their own
    (SVDQ_TRANSIENT_BUDGET), do not count as deliveries, and `svdq status` says why the job
    waits."""
    env = {**SLOW, "SVDQ_TRANSIENT_BUDGET": "120", "SVDQ_MAX_DELIVERIES": "2"}
    workers.start("outage", SVDQ_S3_ENDPOINT=s3_switch.endpoint, **env)
    client = Client(Settings.from_env({**fault_env, **env}), store)
    image = make_image(tmp_path / "o.png", (160, 96))
    s3_switch.off()
    submit(client, image, "outage")
    seen, deadline = set(), time.monotonic() + 90
    while len([a for a in attempts(rdb, "outage") if a["reason"]]) < 4:  # twice the deliveries
        assert time.monotonic() < deadline, attempts(rdb, "outage")
        st = client.status("outage")
        assert st["state"] in ("queued", "running", "retrying"), st
        seen.add(re.sub(r"\d+", "N", st.get("waiting_for", "")))
        time.sleep(0.1)
    assert "waiting: storage unavailable, next try in N s" in seen
    s3_switch.on()
    states = check_end_state(client, store, rdb, {"outage": 0}, 90)
    assert states["outage"]["state"] == "succeeded"
    reasons = [a["reason"] for a in attempts(rdb, "outage")]
    assert reasons[-1] == "succeeded" and all(r.startswith("transient: ") for r in reasons[:-1])
    assert not rdb.hexists("svdq:dead", "outage")
