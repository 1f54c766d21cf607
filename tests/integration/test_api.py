"""The HTTP API (`svdq api`) as a caller sees it: a real uvicorn server on a loopback port, real
Redis, the S3 server and the session's real tiny worker. One API server for the session
(tests/integration/conftest.py)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import requests

from svdq.shared.constants import batch_jobs_key, deliveries_key, job_key, job_owner_key
from svdq.shared.storage import S3Store
from tests.conftest import TEST_BUCKET, run_svdq
from tests.integration.apiserver import Api, auth, events, upload
from tests.integration.helpers import FAST, make_image, png_bytes
from tests.media import mp4_info

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
JOB = {**FAST, "num_frames": 3, "formats": ["mp4"]}


@pytest.fixture(scope="module")
def alice(api: Api) -> str:
    return api.token("alice")


@pytest.fixture(scope="module")
def bob(api: Api) -> str:
    return api.token("bob")


def test_multipart_submit_streams_to_succeeded_and_the_presigned_mp4_plays(
    api: Api, alice: str, worker: str, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "cat.png", (192, 128), 7)
    fields = {k: str(v) for k, v in JOB.items() if k != "formats"}
    r = requests.post(
        f"{api.url}/v1/jobs",
        headers=auth(alice),
        files={"image": ("cat.png", image.read_bytes(), "image/png")},
        data={**fields, "formats": "mp4"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running") and r.headers["location"] == job["links"]["self"]
    seen = events(api, alice, job["job_id"])
    states = [e["state"] for e in seen]
    assert states[-1] == "succeeded", seen
    running = [e for e in seen if e["state"] == "running" and e.get("phase") == "denoise"]
    assert running and running[-1]["steps"] == JOB["num_inference_steps"], seen
    clip = requests.get(seen[-1]["links"]["mp4"], timeout=30)
    assert clip.status_code == 200
    info = mp4_info(clip.content)
    assert (info["width"], info["height"], info["frames"]) == (128, 64, 3)
    again = requests.get(f"{api.url}/v1/jobs/{job['job_id']}", headers=auth(alice), timeout=10)
    assert again.json()["result"]["outputs"]["mp4"]["key"].endswith("clip.mp4")


def test_put_is_idempotent(
    api: Api, alice: str, worker: str, store: S3Store, redis_url: str, tmp_path: Path
) -> None:
    body = {**JOB, "image": upload(store, "put.png", 11, tmp_path)}
    url = f"{api.url}/v1/jobs/put-once-1"
    first = requests.put(url, json=body, headers=auth(alice), timeout=30)
    second = requests.put(url, json=body, headers=auth(alice), timeout=30)
    assert first.status_code == 202, first.text
    assert second.status_code == 200, second.text
    assert second.json()["job_id"] == "put-once-1"
    other = requests.put(url, json={**body, "seed": 5}, headers=auth(alice), timeout=30)
    assert other.status_code in (409, 200), other.text  # 409 while open; 200 once done
    assert events(api, alice, "put-once-1")[-1]["state"] == "succeeded"
    r = redis_lib.Redis.from_url(redis_url)
    assert r.llen(deliveries_key("put-once-1")) == 1  # one message, one delivery
    done = requests.put(url, json=body, headers=auth(alice), timeout=30)
    assert done.status_code == 200 and done.json()["state"] == "succeeded"


def test_cancel(api: Api, alice: str, worker: str, store: S3Store, tmp_path: Path) -> None:
    body = {**JOB, "num_inference_steps": 40, "image": upload(store, "c.png", 3, tmp_path)}
    r = requests.post(f"{api.url}/v1/jobs", json=body, headers=auth(alice), timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    gone = requests.delete(f"{api.url}/v1/jobs/{job_id}", headers=auth(alice), timeout=10)
    assert gone.status_code == 200 and gone.json()["cancel"] in ("cancelled", "cancelling")
    assert events(api, alice, job_id)[-1]["state"] == "cancelled"


def test_a_stream_ends_when_its_queued_job_is_cancelled(
    api: Api, alice: str, store: S3Store, redis_url: str, tmp_path: Path
) -> None:
    """Cancelling a queued job stores its state without a worker: the API's one subscription
    must hear of it all the same (producer/cancel.py publishes it as Celery would)."""
    body = {**JOB, "variant": "svd", "image": upload(store, "sse.png", 61, tmp_path)}
    r = requests.post(f"{api.url}/v1/jobs", json=body, headers=auth(alice), timeout=30)
    assert r.status_code == 202, r.text  # svdq.svd: no worker here takes it
    job_id = r.json()["job_id"]
    seen: list[dict[str, Any]] = []
    first = threading.Event()

    def watch() -> None:
        url = f"{api.url}/v1/jobs/{job_id}/events"
        with requests.get(url, headers=auth(alice), stream=True, timeout=30) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    first.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert first.wait(10)  # the stream is open and has said "queued": cancel under it
        gone = requests.delete(f"{api.url}/v1/jobs/{job_id}", headers=auth(alice), timeout=10)
        assert gone.json()["cancel"] == "cancelled"
        watcher.join(30)
        assert not watcher.is_alive()
        assert [e["state"] for e in seen] == ["queued", "cancelled"], seen
    finally:
        r = redis_lib.Redis.from_url(redis_url)  # the message no worker here will take
        for key in [b"svdq.svd", *r.scan_iter(b"svdq.svd\x06*")]:
            r.delete(key)


def test_batch_with_a_bad_row(
    api: Api, alice: str, worker: str, store: S3Store, tmp_path: Path
) -> None:
    lines = [
        json.dumps({**JOB, "image": upload(store, "b1.png", 21, tmp_path)}),
        "{not json",
        json.dumps({**JOB, "image": "/etc/hostname"}),
        json.dumps({**JOB, "image": upload(store, "b2.png", 22, tmp_path)}),
    ]

    def body() -> Iterator[bytes]:  # sent chunked: the server reads it as it streams
        for line in lines:
            yield (line + "\n").encode()

    r = requests.post(f"{api.url}/v1/batches", data=body(), headers=auth(alice), timeout=60)
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["counts"]["submitted"] == 2 and batch["counts"]["invalid"] == 2, batch
    url = f"{api.url}/v1/batches/{batch['batch_id']}"
    deadline = time.monotonic() + 120
    while True:
        view = requests.get(url, headers=auth(alice), timeout=10).json()
        if view["counts"].get("succeeded") == 2:
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.5)
    rows = [json.loads(x) for x in requests.get(f"{url}/results", headers=auth(alice)).iter_lines()]
    assert [r.get("state") or r["status"] for r in rows] == [
        "succeeded",
        "succeeded",
        "invalid",
        "invalid",
    ]
    assert requests.get(rows[0]["links"]["mp4"], timeout=10).status_code == 200
    assert "line 2: not valid JSON" in rows[2]["reason"]
    assert "'/etc/hostname' is not allowed" in rows[3]["reason"] and rows[3]["field"] == "image"
    assert requests.delete(url, headers=auth(alice), timeout=10).status_code == 200


def _footprint(redis_url: str, store: S3Store) -> tuple[int, int]:
    r = redis_lib.Redis.from_url(redis_url)
    return len(list(r.scan_iter(job_key("*")))), len(list(store.list_prefix("inputs/")))


def problem(r: requests.Response, status: int, reason: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = dict(r.json())
    assert body["status"] == status and body["reason"] == reason, body
    assert "Traceback" not in r.text
    return body


def test_security_rules_refuse_and_leave_nothing_behind(
    api: Api, alice: str, bob: str, store: S3Store, redis_url: str, tmp_path: Path
) -> None:
    before = _footprint(redis_url, store)
    jobs = f"{api.url}/v1/jobs"
    png = {"image": ("x.png", png_bytes(), "image/png")}
    problem(requests.post(jobs, files=png, timeout=10), 401, "unauthorized")
    wrong = requests.post(jobs, files=png, headers=auth("svdq_0_x"), timeout=10)
    problem(wrong, 401, "invalid-token")
    forged = alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB")
    problem(requests.get(f"{api.url}/v1/schema", headers=auth(forged)), 401, "invalid-token")
    big = {"image": ("big.png", b"\0" * (300 * 1024), "image/png")}
    problem(requests.post(jobs, files=big, headers=auth(alice), timeout=10), 413, "body-too-large")
    hostile_files = [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, png_bytes((32, 32))]
    for blob in hostile_files:
        got = problem(
            requests.post(jobs, files={"image": ("h.png", blob)}, headers=auth(alice), timeout=10),
            400,
            "invalid-job",
        )
        assert got["field"] == "image"
    for image in [
        "/etc/hostname",
        "../x.png",
        "file:///etc/hostname",
        "x.png",
        "http://example.com/x.png",
        "ftp://example.com/x.png",
        "https://127.0.0.1/x.png",
        "https://169.254.169.254/latest/meta-data",
        "s3://another-bucket/x.png",
        f"s3://{TEST_BUCKET}/results/someone/poster.jpg",
    ]:
        got = problem(
            requests.post(jobs, json={"image": image}, headers=auth(alice), timeout=30),
            400,
            "invalid-job",
        )
        assert got["field"] == "image" and image[:30] in got["detail"], (image, got)
    for image in ["/etc/hostname", "../x.png"]:  # the multipart form of a local path
        got = problem(
            requests.post(jobs, files={"image": (None, image)}, headers=auth(alice), timeout=10),
            400,
            "invalid-job",
        )
    meta = {"image": f"s3://{TEST_BUCKET}/uploads/none.png", "metadata": {"x": "y" * 20000}}
    got = problem(requests.post(jobs, json=meta, headers=auth(alice)), 400, "invalid-job")
    assert got["field"] == "metadata" and "allowed up to" in got["detail"]
    got = problem(requests.post(jobs, json={**JOB, "image": "s3://x/y", "num_frames": 999},
                                headers=auth(alice)), 400, "invalid-job")  # fmt: skip
    assert got["field"] == "num_frames"
    assert _footprint(redis_url, store) == before  # nothing queued, nothing stored


def test_a_token_sees_only_its_own_jobs_and_batches(
    api: Api, alice: str, bob: str, worker: str, store: S3Store, tmp_path: Path
) -> None:
    body = {**JOB, "image": upload(store, "own.png", 31, tmp_path)}
    r = requests.put(f"{api.url}/v1/jobs/alice-own-1", json=body, headers=auth(alice), timeout=30)
    assert r.status_code == 202, r.text
    job = f"{api.url}/v1/jobs/alice-own-1"
    problem(requests.get(job, headers=auth(bob)), 404, "not-found")
    problem(requests.get(f"{job}/events", headers=auth(bob)), 404, "not-found")
    problem(requests.delete(job, headers=auth(bob)), 404, "not-found")
    problem(requests.put(job, json=body, headers=auth(bob)), 409, "job-id-taken")
    # The same image and parameters from bob: his own job, not alice's.
    mine = requests.post(f"{api.url}/v1/jobs", json=body, headers=auth(bob), timeout=30)
    assert mine.status_code == 202 and mine.json()["job_id"] != "alice-own-1"
    batch = requests.post(
        f"{api.url}/v1/batches", data=json.dumps(body) + "\n", headers=auth(alice), timeout=30
    ).json()
    problem(requests.get(f"{api.url}/v1/batches/{batch['batch_id']}", headers=auth(bob)), 404,
            "not-found")  # fmt: skip
    problem(requests.delete(f"{api.url}/v1/batches/{batch['batch_id']}", headers=auth(bob)), 404,
            "not-found")  # fmt: skip
    # Each cancels its own (no need to spend the worker's time on them).
    assert requests.delete(job, headers=auth(alice)).status_code == 200
    assert requests.delete(f"{api.url}{mine.headers['location']}", headers=auth(bob)).ok
    url = f"{api.url}/v1/batches/{batch['batch_id']}"
    assert requests.delete(url, headers=auth(alice)).status_code == 200
    assert events(api, alice, "alice-own-1")[-1]["state"] in ("cancelled", "succeeded")


def test_rate_limit_and_quota_answer_429_with_retry_after(
    api: Api, worker: str, store: S3Store, tmp_path: Path
) -> None:
    slow = api.token("slow", "--rate", "2")
    for _ in range(2):
        assert requests.get(f"{api.url}/v1/schema", headers=auth(slow)).status_code == 200
    got = requests.get(f"{api.url}/v1/schema", headers=auth(slow))
    problem(got, 429, "rate-limit")
    assert 1 <= int(got.headers["retry-after"]) <= 61

    small = api.token("small", "--quota", "1")
    body = {**JOB, "num_inference_steps": 30, "image": upload(store, "q.png", 41, tmp_path)}
    first = requests.put(f"{api.url}/v1/jobs/quota-1", json=body, headers=auth(small), timeout=30)
    assert first.status_code == 202, first.text
    # An idempotent repeat of the token's own job answers as the first did: never 429.
    again = requests.put(f"{api.url}/v1/jobs/quota-1", json=body, headers=auth(small), timeout=30)
    assert again.status_code == 200 and again.json()["job_id"] == "quota-1", again.text
    over = requests.post(
        f"{api.url}/v1/jobs", json={**body, "seed": 1}, headers=auth(small), timeout=30
    )
    problem(over, 429, "quota")
    assert over.headers["retry-after"]
    requests.delete(f"{api.url}{first.headers['location']}", headers=auth(small))
    assert events(api, small, first.json()["job_id"])[-1]["state"] in ("cancelled", "succeeded")


def test_curl_drives_the_api(api: Api, alice: str, worker: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "curl.png", (192, 128), 51)
    fields = [f"-F{k}={v}" for k, v in {**JOB, "formats": "mp4", "seed": 99}.items()]
    head = ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {alice}"]

    def curl(*args: str) -> str:
        done = subprocess.run([*head, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    job_id = json.loads(
        curl("-F", f"image=@{image};type=image/png", *fields, f"{api.url}/v1/jobs")
    )["job_id"]
    assert json.loads(curl(f"{api.url}/v1/jobs/{job_id}"))["job_id"] == job_id
    curl("-X", "DELETE", f"{api.url}/v1/jobs/{job_id}")
    stream = curl("-N", f"{api.url}/v1/jobs/{job_id}/events")
    last = [line for line in stream.splitlines() if line.startswith("data: ")][-1]
    state = json.loads(last[6:])["state"]
    assert state in ("cancelled", "succeeded") and f"event: {state}" in stream


def test_schema_openapi_health_and_metrics(api: Api, alice: str) -> None:
    schema = requests.get(f"{api.url}/v1/schema", headers=auth(alice)).json()
    assert schema["properties"]["motion_bucket_id"]["maximum"] == 255
    spec = requests.get(f"{api.url}/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "JobView" in spec["components"]["schemas"]
    assert requests.get(f"{api.url}/healthz").json() == {"redis": "ok", "store": "ok"}
    text = requests.get(f"{api.url}/metrics").text
    assert 'svdq_api_rejections_total{reason="unauthorized"}' in text
    assert 'svdq_api_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    missing = requests.get(f"{api.url}/nowhere")
    problem(missing, 404, "not-found")
    # Both answer without a token, so neither may name a job or a token.
    requests.get(f"{api.url}/v1/jobs/secret-job-name", headers=auth(alice))
    text = requests.get(f"{api.url}/metrics").text
    assert 'route="/v1/jobs/{job_id}"' in text
    for secret in ("secret-job-name", "alice", alice.split("_")[1]):
        assert secret not in text


def test_tokens_are_stored_as_hashes_and_revoked(api: Api, redis_url: str) -> None:
    token = api.token("carol")
    r = redis_lib.Redis.from_url(redis_url)
    stored = b"".join(v for k in r.scan_iter("svdq:token:*") for v in r.hvals(k))
    assert token.encode() not in stored and token.split("_")[2].encode() not in stored
    assert requests.get(f"{api.url}/v1/schema", headers=auth(token)).status_code == 200
    assert run_svdq(["token", "revoke", "carol"], api.env, timeout=60).returncode == 0
    problem(requests.get(f"{api.url}/v1/schema", headers=auth(token)), 401, "invalid-token")
    listed = run_svdq(["token", "list", "--json"], api.env, timeout=60).stdout
    assert "carol" not in listed and "alice" in listed


def token_id(token: str) -> str:
    return token.split("_")[1]


def test_batch_rows_get_token_scoped_ids_and_results_show_only_own_jobs(
    api: Api, alice: str, bob: str, worker: str, store: S3Store, redis_url: str, tmp_path: Path
) -> None:
    """The same row in two tokens' batches is two jobs; a row naming another token's job_id is
    refused; and a batch record that names another token's job still never shows it."""
    body = {**JOB, "image": upload(store, "scope.png", 71, tmp_path)}
    assert requests.put(
        f"{api.url}/v1/jobs/bob-chosen-1", json=body, headers=auth(bob), timeout=30
    ).ok

    def batch(token: str, *rows: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        text = "".join(json.dumps(row) + "\n" for row in rows)
        r = requests.post(f"{api.url}/v1/batches", data=text, headers=auth(token), timeout=30)
        assert r.status_code == 202, r.text
        url = f"{api.url}/v1/batches/{r.json()['batch_id']}"
        got = requests.get(f"{url}/results", headers=auth(token), timeout=30)
        return url, [json.loads(x) for x in got.iter_lines()]

    bob_url, bob_rows = batch(bob, body)
    bob_job = bob_rows[0]["job_id"]
    assert bob_job.startswith(token_id(bob) + "-"), bob_rows
    alice_url, alice_rows = batch(alice, body, {**body, "job_id": "bob-chosen-1"})
    assert alice_rows[0]["job_id"].startswith(token_id(alice) + "-"), alice_rows
    assert alice_rows[0]["job_id"][17:] == bob_job[17:]  # the same content id, another token
    assert alice_rows[1]["status"] == "invalid" and alice_rows[1]["field"] == "job_id"
    assert "'bob-chosen-1' is not allowed: it is in use" in alice_rows[1]["reason"]
    assert len(alice_rows) == 2
    # A record naming bob's jobs (as a batch made before token-scoped ids could): not shown.
    r = redis_lib.Redis.from_url(redis_url)
    r.rpush(batch_jobs_key(alice_url.rsplit("/", 1)[1]), bob_job, "bob-chosen-1")
    shown = [json.loads(x) for x in requests.get(f"{alice_url}/results", headers=auth(alice))
             .iter_lines()]  # fmt: skip
    assert [x.get("job_id") for x in shown] == [alice_rows[0]["job_id"], None], shown
    counts = requests.get(alice_url, headers=auth(alice), timeout=10).json()["counts"]
    assert sum(counts.values()) == 1, counts
    # Ids in another token's derived form cannot be chosen either.
    taken = requests.put(f"{api.url}/v1/jobs/{bob_job}", json=body, headers=auth(alice))
    assert problem(taken, 400, "invalid-job")["field"] == "job_id"
    for url, token in ((alice_url, alice), (bob_url, bob)):
        assert requests.delete(url, headers=auth(token), timeout=10).status_code == 200
    requests.delete(f"{api.url}/v1/jobs/bob-chosen-1", headers=auth(bob), timeout=10)


def test_ownership_lasts_as_long_as_the_outputs(
    api: Api, alice: str, bob: str, worker: str, store: S3Store, redis_url: str, tmp_path: Path
) -> None:
    """The owner record never expires, and an id whose result.json is in the store with no
    owner recorded (Redis forgot it) cannot be claimed by another token: it would read the
    first one's clip."""
    body = {**JOB, "image": upload(store, "lapse.png", 81, tmp_path)}
    url = f"{api.url}/v1/jobs/lapse-1"
    assert requests.put(url, json=body, headers=auth(alice), timeout=30).status_code == 202
    assert events(api, alice, "lapse-1")[-1]["state"] == "succeeded"
    r = redis_lib.Redis.from_url(redis_url)
    assert r.ttl(job_owner_key("lapse-1")) == -1  # no expiry
    for key in list(r.scan_iter(match="*lapse-1*")):  # Redis forgets everything of the job
        r.delete(key)
    problem(requests.put(url, json=body, headers=auth(bob), timeout=30), 409, "job-id-taken")
    problem(requests.get(url, headers=auth(bob), timeout=10), 404, "not-found")
    assert not r.exists(job_owner_key("lapse-1"))


def test_console_files_carry_a_strict_policy_and_no_inline_script(api: Api, alice: str) -> None:
    page = requests.get(f"{api.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["default-src"] == "'none'" and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts and all('src="/console/' in s for s in scripts)  # no inline script
    assert (
        "<style" not in page.text and "style=" not in page.text and "on" + "click" not in page.text
    )
    js = requests.get(f"{api.url}/console/app.js", timeout=10)
    assert js.ok and "javascript" in js.headers["content-type"]
    assert js.headers["x-content-type-options"] == "nosniff"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in js.text  # server data goes in as text only
    problem(requests.get(f"{api.url}/v1/fleet", timeout=10), 401, "unauthorized")
    fleet = requests.get(f"{api.url}/v1/fleet", headers=auth(alice), timeout=10).json()
    assert {"queues", "workers", "throughput", "failures_60m"} <= set(fleet)
    assert requests.get(f"{api.url}/v1/batches", headers=auth(alice), timeout=10).ok
