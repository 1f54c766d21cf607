"""The adversary's list, through a real worker and real services: whatever arrives on a queue
or sits in the store, no input from outside stops a worker or makes a job lie.

Poison messages (issue 10, defect 1): published raw with kombu, one after another, each is set
aside on the dead-letter list with its reason and acknowledged, and the same worker process
then runs a good job. Before worker/intake.py, the first ({"a": 1}) made Celery's Request raise
ValueError in the worker's main process: "Unrecoverable error", and every worker after it died
on the same restored message.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from svdq.producer.dead import retry_dead
from svdq.producer.services import free_port
from svdq.shared.constants import (
    DEAD_DROPPED_KEY,
    DEAD_LETTER_KEY,
    TASK_GENERATE,
    queue_for,
    worker_key,
)
from svdq.shared.errors import InvalidJobError
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker.delivery import dead_letter
from svdq.worker.intake import KEPT_BODY_CHARS, MAX_MESSAGE_BYTES
from tests.conftest import run_svdq
from tests.faults.conftest import wait_all_final
from tests.integration.helpers import FAST, make_image, queued_messages

pytestmark = pytest.mark.integration

QUEUE = queue_for("tiny")
JSON = "application/json"
# Items no kombu message is made of: not JSON, JSON but not an envelope, an envelope whose
# headers kombu cannot read. Each stopped the worker's main process before brokerguard.
RAW_ITEMS = [
    b"garbage{",
    b"[1, 2]",
    b'{"body": "x"}',
    b'{"body": "eA==", "headers": [1], "properties": {"delivery_tag": "t"}}',
]


def publish_raw(redis_url: str, body: bytes, headers: dict[str, Any], content_type: str) -> None:
    """Put one message on the tiny queue exactly as given: no serializer, no Celery."""
    from kombu import Exchange, Producer

    from svdq.shared.celery_app import make_celery

    app = make_celery(Settings.from_env({"SVDQ_REDIS_URL": redis_url}))
    with app.connection_for_write() as conn:  # svdq's transport options (binding separator)
        Producer(conn.channel()).publish(
            body,
            content_type=content_type,
            content_encoding="utf-8",
            exchange=Exchange(QUEUE, type="direct"),
            routing_key=QUEUE,
            headers=headers,
        )


def task_message(task_id: str, args: Any, kwargs: Any = None, task: str = TASK_GENERATE):
    """(body, headers) of a protocol 2 message as Celery would send it, with `args`."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([args, {} if kwargs is None else kwargs, embed]).encode()
    return body, {"task": task, "id": task_id, "lang": "py", "retries": 0}


def poison_messages(spec: dict[str, Any]) -> dict[str, tuple[bytes, dict[str, Any], str, str]]:
    """name -> (body, headers, content type, what the reason must say)."""
    json_ct = "application/json"
    kinds: dict[str, tuple[bytes, dict[str, Any], str, str]] = {
        # The reproduction: a JSON object where Celery expects [args, kwargs, embed].
        "wrong shape": (
            b'{"a": 1}',
            {"task": TASK_GENERATE, "id": "p-shape"},
            json_ct,
            "[args, kwargs, embed]",
        ),
        "no task header": (
            b'{"task": "svdq.generate", "id": "p-proto1"}',
            {},
            json_ct,
            "protocol 2",
        ),
        "wrong types": (
            *task_message("p-types", [{**spec, "job_id": "p-types", "num_frames": "many"}]),
            json_ct,
            "num_frames",
        ),
        "unknown field": (
            *task_message("p-field", [{**spec, "job_id": "p-field", "colour": "red"}]),
            json_ct,
            "unknown field 'colour'",
        ),
        "args not a spec": (*task_message("p-args", [1, 2, 3]), json_ct, "exactly one"),
        "no job_id": (*task_message("p-noid", [spec]), json_ct, "job_id is missing"),
        "id mismatch": (
            *task_message("p-other", [{**spec, "job_id": "p-mine"}]),
            json_ct,
            "must be equal",
        ),
        "another task": (
            *task_message("p-task", [spec], task="celery.accumulate"),
            json_ct,
            "is not served here",
        ),
        "bad time limit": (
            task_message("p-limit", [{**spec, "job_id": "p-limit"}])[0],
            {"task": TASK_GENERATE, "id": "p-limit", "timelimit": "soon"},
            json_ct,
            "timelimit",
        ),
        "chained": (
            json.dumps(
                [[{**spec, "job_id": "p-chain"}], {}, {"callbacks": [{"task": "x"}]}]
            ).encode(),
            {"task": TASK_GENERATE, "id": "p-chain"},
            json_ct,
            "embed",
        ),
        "not json": (
            b"\x00\xffnot json at all{",
            {"task": TASK_GENERATE, "id": "p-json"},
            json_ct,
            "could not be read",
        ),
        "not json content": (
            b"<xml/>",
            {"task": TASK_GENERATE, "id": "p-xml"},
            "application/xml",
            "could not be read",
        ),
        "huge": (
            *task_message("p-huge", [{**spec, "job_id": "p-huge", "x": "y" * MAX_MESSAGE_BYTES}]),
            json_ct,
            "MAX_MESSAGE_BYTES",
        ),
    }
    return kinds


def test_poison_messages_are_set_aside_and_the_same_worker_goes_on(
    fault_client, fault_env, store, rdb, workers, tmp_path
):
    """Every kind of message a worker cannot read, then a good job: each poison one lands on
    the dead-letter list with its reason and a truncated body, nothing is left on the queue,
    no job state is written for the ids they claimed, and the same worker runs the good job."""
    image = make_image(tmp_path / "a.png", (160, 96))
    spec = fault_client.prepare({"image": str(image), **FAST}).to_dict()
    spec.pop("job_id")
    metrics_port = free_port()
    kinds = poison_messages(spec)
    cap = len(kinds) + len(RAW_ITEMS)  # the dead-letter list is full once they are all in
    worker = workers.start(
        "adversary", SVDQ_METRICS_PORT=str(metrics_port), SVDQ_DEAD_LETTER_MAX=str(cap)
    )
    first = _beat(rdb, "adversary")
    for body, headers, content_type, _ in kinds.values():
        publish_raw(fault_env["SVDQ_REDIS_URL"], body, headers, content_type)
    # Not messages at all: pushed onto the queue's list by hand (worker/brokerguard.py).
    for item in RAW_ITEMS:
        rdb.lpush(QUEUE, item)
    fault_client.submit(str(image), job_id="after-poison", **FAST)

    states = wait_all_final(fault_client, ["after-poison"], 90)
    assert states["after-poison"]["state"] == "succeeded"
    deadline = time.monotonic() + 20
    while rdb.hlen(DEAD_LETTER_KEY) < len(kinds) and time.monotonic() < deadline:
        time.sleep(0.2)
    dead = [json.loads(v) for v in rdb.hvals(DEAD_LETTER_KEY)]
    assert len(dead) == len(kinds) + len(RAW_ITEMS), [d["reason"] for d in dead]
    items = sorted(d["body"] for d in dead if d["reason"].startswith("queue item set aside"))
    assert items == sorted(i.decode() for i in RAW_ITEMS)
    for name, (body, _, _, says) in kinds.items():
        found = [
            d for d in dead if d["body_bytes"] == len(body) and says in d["reason"] and "queue" in d
        ]
        assert len(found) == 1, f"{name}: no entry saying {says!r} in {[d['reason'] for d in dead]}"
        entry = found[0]
        assert entry["kind"] == "message" and entry["queue"] == QUEUE, name
        assert entry["job_id"].startswith("message:") and entry["worker"].startswith("adversary@")
        assert len(entry["body"]) <= KEPT_BODY_CHARS
        assert entry["body"] == body[:KEPT_BODY_CHARS].decode("utf-8", "replace"), name
    # Not a job: `svdq dead retry` refuses it in a sentence.
    with pytest.raises(InvalidJobError, match="cannot be retried"):
        retry_dead(fault_client, dead[0]["job_id"])
    # Acknowledged: nothing waits or hangs unacknowledged; no state for the ids they claimed.
    assert rdb.llen(QUEUE) == 0 and rdb.hlen("unacked") == 0
    assert not [k for k in rdb.keys("celery-task-meta-p-*")]
    # The same worker: one start, one pool child all along, never an unrecoverable error.
    text = worker.text()
    assert text.count("ready.") == 1 and "Unrecoverable error" not in text
    assert worker.proc.poll() is None
    assert _beat(rdb, "adversary")[b"pid"] == first[b"pid"]
    # Its /metrics listens on this machine only (SVDQ_METRICS_HOST unset: 127.0.0.1).
    assert listening(metrics_port) == {"127.0.0.1"}
    _more_push_the_oldest_out(fault_env, rdb, spec, cap, dead)


def _more_push_the_oldest_out(
    fault_env: dict[str, str], rdb: Any, spec: dict[str, Any], cap: int, dead: list[Any]
) -> None:
    """The dead-letter list holds at most SVDQ_DEAD_LETTER_MAX unreadable messages: three more
    (by the transport and by the consumer) push the three oldest out, counted in Redis, in
    `svdq exporter` and in `svdq dead list`; a dead job is never pushed out."""
    dead_letter(rdb, JobSpec.from_dict({**spec, "job_id": "dead-job"}), "for the cap", 600)
    extra = [b"more garbage{1", b"more garbage{2"]
    for item in extra:
        rdb.lpush(QUEUE, item)
    body = b'{"b": 2}'
    publish_raw(fault_env["SVDQ_REDIS_URL"], body, {"task": TASK_GENERATE, "id": "p-b"}, JSON)
    deadline = time.monotonic() + 20
    while int(rdb.get(DEAD_DROPPED_KEY) or 0) < 3:
        assert time.monotonic() < deadline, rdb.hkeys(DEAD_LETTER_KEY)
        time.sleep(0.2)
    now = {json.loads(v)["job_id"]: json.loads(v) for v in rdb.hvals(DEAD_LETTER_KEY)}
    assert len(now) == cap + 1 and "dead-job" in now and int(rdb.get(DEAD_DROPPED_KEY)) == 3
    oldest = [d["job_id"] for d in sorted(dead, key=lambda d: d["dead_at"])[:3]]
    assert not set(oldest) & set(now)
    bodies = [d.get("body") for d in now.values()]
    assert all(b.decode() in bodies for b in [*extra, body])

    env = {**fault_env, "SVDQ_DEAD_LETTER_MAX": str(cap)}
    listed = run_svdq(["dead", "list"], env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert (
        f"the dead-letter list keeps at most {cap} unreadable messages (SVDQ_DEAD_LETTER_MAX; "
        f"it holds {cap}): 3 older ones were dropped; dead jobs are never dropped"
    ) in listed.stdout
    scrape = run_svdq(["exporter", "--once"], env, timeout=60)
    assert "svdq_dead_letter_dropped_total 3.0" in scrape.stdout, scrape.stdout[-2000:]


def listening(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port` on this machine (/proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_the_exporter_listens_on_this_machine_unless_told(svdq_env):
    """SVDQ_METRICS_HOST (default 127.0.0.1) decides where `svdq exporter` listens; a
    container sets 0.0.0.0."""
    for env, expected in (({}, "127.0.0.1"), ({"SVDQ_METRICS_HOST": "0.0.0.0"}, "0.0.0.0")):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "svdq.producer.cli", "exporter", "--port", str(port)],
            env={**svdq_env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not listening(port):
                assert proc.poll() is None, f"the exporter exited: {proc.returncode}"
                assert time.monotonic() < deadline, "the exporter never listened"
                time.sleep(0.1)
            assert listening(port) == {expected}
        finally:
            proc.terminate()
            proc.wait(10)


def _beat(rdb: Any, name: str) -> dict[bytes, bytes]:
    """Worker `name`'s heartbeat hash once its pool child has written one."""
    key = worker_key(f"{name}@{socket.gethostname()}")  # Celery's %h
    deadline = time.monotonic() + 30
    while not rdb.hexists(key, "pid"):
        assert time.monotonic() < deadline, f"no heartbeat at {key}"
        time.sleep(0.2)
    return rdb.hgetall(key)


def test_a_restarted_worker_has_no_job_and_job_state_stays_small(
    fault_client, fault_env, store, rdb, workers, tmp_path
):
    """Issue 10, defect 9: a job's celery-task-meta holds its result record, not a second copy
    of its spec (16 KiB of metadata stored once, not twice); a job submitted again while it
    runs stays running, with no second copy queued; a worker killed mid-job and started again
    under the same name does not show the dead one's job in its heartbeat."""
    image = make_image(tmp_path / "b.png", (160, 96))
    pad = "x" * 15_000
    worker = workers.start("same")
    fault_client.submit(str(image), job_id="big-meta", metadata={"pad": pad}, **FAST)
    assert wait_all_final(fault_client, ["big-meta"], 60)["big-meta"]["state"] == "succeeded"
    meta = rdb.get("celery-task-meta-big-meta")
    assert meta.count(pad.encode()) == 1, "the spec's metadata is stored twice"

    meta = {"svdq_test_fault": "sleep:20"}
    fault_client.submit(str(image), job_id="orphan", metadata=meta, **FAST)
    deadline = time.monotonic() + 30
    while _beat(rdb, "same").get(b"job_id") != b"orphan":
        assert time.monotonic() < deadline, worker.text()[-2000:]
        time.sleep(0.2)
    # Submitted again while it runs: the same job, still running, no second copy queued.
    again = fault_client.submit(str(image), job_id="orphan", metadata=meta, **FAST)
    assert not again.skipped and fault_client.status("orphan")["state"] == "running"
    assert queued_messages(fault_env["SVDQ_REDIS_URL"]) == 0
    dead_pid = _beat(rdb, "same")[b"pid"]
    worker.kill()
    # The orphan comes back only after the visibility timeout (30 s): this one is idle.
    workers.start("same")
    deadline = time.monotonic() + 30
    while (beat := _beat(rdb, "same"))[b"pid"] == dead_pid:
        assert time.monotonic() < deadline, "the new worker never beat"
        time.sleep(0.2)
    assert beat.get(b"job_id", b"") == b"", beat
