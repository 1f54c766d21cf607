"""Metrics after real jobs: a real worker (tiny pipeline) serving /metrics from its pool child,
the exporter reading a real Redis, and `svdq stats --json` — all three must tell the same story.

This module runs its own redis-server (so no other test's worker can take these jobs) and its
own worker on a free metrics port.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

from svdq.producer.client import Client
from svdq.producer.exporter import registry_for
from svdq.producer.services import free_port, redis_server
from svdq.shared.constants import DEAD_LETTER_KEY, FINISHED_STREAM, worker_key
from svdq.shared.settings import Settings
from svdq.shared.storage import S3Store
from tests.conftest import REPO, run_svdq
from tests.integration.helpers import FAST, make_image

pytestmark = pytest.mark.integration
DEPLOY = REPO / "deploy"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, keyed by (name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def series_names(text: str) -> set[str]:
    """Every series name a page declares, including labelled families with no sample yet
    (a counter such as svdq_oom_stepdowns_total before its first OOM)."""
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_count", "_sum"],
        "info": ["_info"],
    }
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
        names.update(s.name for s in family.samples)
    return names


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample with exactly these labels (KeyError names what was there)."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        have = [dict(lbl) for (n, lbl) in samples if n == name]
        raise KeyError(f"{name}{labels} not exported; {name} has {have}")
    return samples[key]


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def exporter_text(redis_url: str) -> str:
    from prometheus_client import generate_latest

    conn = redis_lib.Redis.from_url(redis_url)
    return str(generate_latest(registry_for(conn)).decode())


def exporter_samples(redis_url: str) -> Samples:
    return parse(exporter_text(redis_url))


@pytest.fixture(scope="module")
def fleet(
    svdq_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Own Redis, 3 jobs queued at priorities 9, 5 and 0 before any worker runs."""
    with redis_server(f"redis://127.0.0.1:{free_port()}/0") as url:
        env = {
            **svdq_env,
            "SVDQ_REDIS_URL": url,
            "SVDQ_METRICS_PORT": str(free_port()),
            "SVDQ_GPU_INDEX": "0",
        }
        settings = Settings.from_env(env)
        store = S3Store(settings.s3_bucket, settings.s3_endpoint, settings.s3_region)
        client = Client(settings, store)
        tmp = tmp_path_factory.mktemp("metrics")
        images = [make_image(tmp / f"m{p}.png", color=50 + p) for p in (9, 5, 0)]
        first_queued = time.time()
        handles = [
            client.submit(str(i), priority=p, **FAST)
            for i, p in zip(images, (9, 5, 0), strict=True)
        ]
        yield {
            "env": env,
            "url": url,
            "client": client,
            "handles": handles,
            "tmp": tmp,
            "first_queued": first_queued,
            "all_queued": time.time(),
        }


@pytest.fixture(scope="module")
def metrics_worker(fleet: dict[str, Any]) -> Iterator[int]:
    """A real `svdq worker` on the module's Redis; yields its metrics port."""
    env = fleet["env"]
    log = fleet["tmp"] / "worker.log"
    with open(log, "wb") as out:
        # Through the fixture launcher: its worker injects the faults jobs ask for.
        argv = [sys.executable, "-m", "tests.fixtures.launcher", "worker", "--gpus", "none"]
        argv += ["--variant", "tiny", "--name", "metrics@%h"]
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 90
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield int(env["SVDQ_METRICS_PORT"])
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    # A clean stop takes the worker out of `svdq stats` at once (no 30 s heartbeat wait).
    conn = redis_lib.Redis.from_url(fleet["url"])
    assert list(conn.scan_iter(worker_key("*"))) == []


@pytest.fixture(scope="module")
def exporter_port(fleet: dict[str, Any]) -> Iterator[int]:
    """`svdq exporter` serving HTTP on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "svdq.producer.cli", "exporter", "--port", str(port)]
    proc = subprocess.Popen(argv, env=fleet["env"], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _answers(port), 30, "the exporter to answer")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(port: int) -> bool:
    try:
        scrape_text(port)
        return True
    except OSError:
        return False


def test_priority_sub_queues_are_counted_before_any_worker(fleet: dict[str, Any]) -> None:
    conn = redis_lib.Redis.from_url(fleet["url"])
    # kombu's naming with priority_steps 0..9 and sep ':' (svdq priority 9 -> kombu 0).
    assert sorted(k.decode() for k in conn.scan_iter("svdq.tiny*")) == [
        "svdq.tiny",
        "svdq.tiny:4",
        "svdq.tiny:9",
    ]
    time.sleep(0.2)  # so the oldest job's age is clearly above 0
    before = time.time()
    got = exporter_samples(fleet["url"])
    after = time.time()
    for priority in range(10):
        expected = 1.0 if priority in (9, 5, 0) else 0.0
        assert value(got, "svdq_queue_depth", queue="svdq.tiny", priority=str(priority)) == (
            expected
        )
    assert value(got, "svdq_queue_depth", queue="svdq.svd-xt", priority="9") == 0
    # The oldest is the first job submitted: its age lies between these bounds.
    age = value(got, "svdq_queue_oldest_age_seconds", queue="svdq.tiny")
    assert before - fleet["all_queued"] - 0.001 <= age <= after - fleet["first_queued"] + 0.001
    assert age >= 0.2
    assert value(got, "svdq_queue_workers", queue="svdq.tiny") == 0
    assert value(got, "svdq_exporter_redis_up") == 1
    assert value(got, "svdq_dead_letter_size") == 0


def test_batches_are_counted(fleet: dict[str, Any]) -> None:
    from svdq.shared.constants import batch_jobs_key, batch_key

    conn = redis_lib.Redis.from_url(fleet["url"])
    # Records as `svdq bulk` writes them: the batch hash and its job list beside it.
    written = [batch_key("b1"), batch_key("b2"), batch_jobs_key("b1")]
    conn.hset(batch_key("b1"), mapping={"source": "a.csv", "complete": 0})
    conn.hset(batch_key("b2"), mapping={"source": "b.csv", "complete": 1})
    conn.rpush(batch_jobs_key("b1"), "j1", "j2")
    try:
        got = exporter_samples(fleet["url"])
        assert value(got, "svdq_batches", state="submitting") == 1
        assert value(got, "svdq_batches", state="submitted") == 1
        stats = json.loads(run_svdq(["stats", "--json"], fleet["env"], timeout=60).stdout)
        assert stats["batches"] == {"submitting": 1, "submitted": 1}
    finally:
        conn.delete(*written)


def test_dead_letter_size_is_counted(fleet: dict[str, Any]) -> None:
    key = DEAD_LETTER_KEY
    conn = redis_lib.Redis.from_url(fleet["url"])
    conn.hset(key, mapping={"dead-1": "{}", "dead-2": "{}"})  # hash job id -> record
    try:
        assert value(exporter_samples(fleet["url"]), "svdq_dead_letter_size") == 2
        stats = json.loads(run_svdq(["stats", "--json"], fleet["env"], timeout=60).stdout)
        assert stats["dead_letter"] == 2
    finally:
        conn.delete(key)


def _wait_for(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_worker_exporter_and_stats_agree_after_real_jobs(
    fleet: dict[str, Any], metrics_worker: int, exporter_port: int
) -> None:
    client: Client = fleet["client"]
    results = client.wait([h.job_id for h in fleet["handles"]], timeout=180)
    assert len(results) == 3
    # A job whose input vanished fails in the worker with InvalidJobError.
    good = client.prepare({"image": str(make_image(fleet["tmp"] / "gone.png")), **FAST})
    bad = good.replace(image=good.image.replace("inputs/", "inputs/missing-"), job_id="gone-1")
    client.app.send_task("svdq.generate", args=[bad.to_dict()], task_id="gone-1", queue="svdq.tiny")
    conn = redis_lib.Redis.from_url(fleet["url"])
    _wait_for(lambda: conn.xlen(FINISHED_STREAM) >= 4, 60, "4 finished jobs on the stream")

    worker_text = scrape_text(metrics_worker)
    worker = parse(worker_text)
    assert value(worker, "svdq_jobs_total", status="succeeded", variant="tiny") == 3
    assert value(worker, "svdq_jobs_total", status="failed", variant="tiny") == 1
    assert value(worker, "svdq_job_failures_total", reason="InvalidJobError") == 1
    assert value(worker, "svdq_frames_generated_total", variant="tiny") == 3 * 14
    phases = ("fetch", "preprocess", "denoise", "decode", "score", "encode", "upload", "total")
    for phase in phases:
        labels = {"phase": phase, "variant": "tiny", "profile": "cpu"}
        assert value(worker, "svdq_job_phase_seconds_count", **labels) == 3
    # One histogram per clip score (shared/scores.py), each job counted once.
    for score in ("motion", "displacement", "flicker", "psnr", "ssim"):
        assert value(worker, f"svdq_clip_{score}_count", variant="tiny") == 3, score
        assert value(worker, f"svdq_clip_{score}_sum", variant="tiny") > 0, score
    load = {"phase": "load", "variant": "tiny", "profile": "cpu"}
    assert value(worker, "svdq_job_phase_seconds_count", **load) == 1
    info = [dict(lbl) for (n, lbl) in worker if n == "svdq_worker_info"]
    assert len(info) == 1 and info[0]["variant"] == "tiny" and info[0]["profile"] == "cpu"
    assert info[0]["worker"].startswith("metrics@") and info[0]["queues"] == "svdq.tiny"
    assert value(worker, "svdq_worker_busy") == 0
    assert value(worker, "svdq_job_peak_vram_bytes") == 0  # CPU: never set
    # Issue 15: the GPU's busy time is the 3 jobs' generation (denoise and decode, as their
    # records time it), never more than their whole time; the failed job never reached it.
    records = list(results.values())
    generating = sum(r["timings"]["denoise"] + r["timings"]["decode"] for r in records)
    busy = value(worker, "svdq_gpu_busy_seconds_total")
    assert generating - 0.001 <= busy <= sum(r["timings"]["total"] for r in records)
    assert 0 < value(worker, "svdq_gpu_busy_ratio") < 1
    load = value(worker, "svdq_worker_load_seconds")
    assert load > 0
    assert value(worker, "svdq_worker_warmup_seconds") == 0  # tiny on the CPU: no compile

    exported_text = scrape_text(exporter_port)  # the real `svdq exporter` over HTTP
    exported = parse(exported_text)
    depth = sum(v for (n, _), v in exported.items() if n == "svdq_queue_depth")
    assert depth == 0
    assert value(exported, "svdq_queue_in_flight", queue="svdq.tiny") == 0
    assert value(exported, "svdq_queue_workers", queue="svdq.tiny") == 1
    assert value(exported, "svdq_recent_jobs", status="succeeded", window="5m") == 3
    assert value(exported, "svdq_recent_jobs", status="failed", window="60m") == 1
    assert value(exported, "svdq_recent_failures", reason="InvalidJobError") == 1

    done = run_svdq(["stats", "--json"], fleet["env"], timeout=60)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["queues"]["svdq.tiny"] == {
        "waiting": 0,
        "waiting_by_priority": {},
        "in_flight": 0,
        "oldest_age_seconds": None,
        "workers": 1,
    }
    assert stats["throughput"]["5m"] == {"succeeded": 3, "failed": 1, "skipped": 0, "cancelled": 0}
    assert stats["failures_60m"] == {"InvalidJobError": 1}
    [w] = stats["workers"]
    assert (w["variant"], w["profile"], w["device"], w["job_id"]) == ("tiny", "cpu", "cpu", None)
    assert w["metrics_port"] == str(metrics_worker)
    assert (w["load_s"], w["warmup_s"]) == (load, 0)  # this start's cost, as /metrics has it
    assert 0 < w["gpu_busy_ratio"] < 1
    assert conn.ttl(worker_key(w["name"])) > 0

    text = run_svdq(["stats"], fleet["env"], timeout=60)
    assert "last 5m: 3 succeeded, 1 failed" in text.stdout
    assert f"start: load {load:.1f}s, warm-up 0.0s)" in text.stdout
    assert "InvalidJobError 1" in text.stdout

    # Every series the dashboard and the alert rules query is one the code exports.
    exported_names = series_names(worker_text) | series_names(exported_text)
    queried = queried_metric_names()
    assert queried, "found no svdq_ metric in the dashboard or the alert rules"
    missing = sorted(m for m in queried if m not in exported_names)
    assert not missing, f"queried but never exported: {missing}"


def test_oom_step_down_is_counted_from_to_and_the_info_follows(
    fleet: dict[str, Any], metrics_worker: int
) -> None:
    client: Client = fleet["client"]
    image = make_image(fleet["tmp"] / "oom.png", color=99)
    meta = {"svdq_test_fault": "oom_once"}
    result = client.submit(str(image), metadata=meta, **FAST).wait(timeout=120)
    assert [a["outcome"] for a in result["attempts"]] == ["oom", "succeeded"]

    worker = parse(scrape_text(metrics_worker))
    stepped = value(worker, "svdq_oom_stepdowns_total", from_profile="cpu", to_profile="cpu-lean")
    assert stepped == 1
    assert len([n for (n, _) in worker if n == "svdq_oom_stepdowns_total"]) == 1
    assert value(worker, "svdq_jobs_total", status="succeeded", variant="tiny") == 4
    [info] = [dict(lbl) for (n, lbl) in worker if n == "svdq_worker_info"]
    assert info["profile"] == "cpu-lean"  # read at scrape time: the rung that now runs
    lean = {"phase": "total", "variant": "tiny", "profile": "cpu-lean"}
    assert value(worker, "svdq_job_phase_seconds_count", **lean) == 1
    reload = {"phase": "load", "variant": "tiny", "profile": "cpu-lean"}
    assert value(worker, "svdq_job_phase_seconds_count", **reload) == 1  # the step-down's load


def test_a_busy_worker_shows_its_job_and_step(fleet: dict[str, Any], metrics_worker: int) -> None:
    from svdq.producer.stats import snapshot

    client: Client = fleet["client"]
    conn = redis_lib.Redis.from_url(fleet["url"])
    image = make_image(fleet["tmp"] / "slow.png", color=7)
    job = client.submit(str(image), metadata={"svdq_test_fault": "sleep:3"}, **FAST)

    def running() -> bool:
        return any(w["job_id"] == job.job_id and "phase" in w for w in snapshot(conn)["workers"])

    _wait_for(running, 30, "stats to show the running job")
    snap = snapshot(conn)
    [w] = snap["workers"]
    assert (w["job_id"], w["phase"], w["step"], w["steps"]) == (job.job_id, "denoise", 0, 3)
    assert snap["queues"]["svdq.tiny"]["in_flight"] == 1
    assert snap["queues"]["svdq.tiny"]["waiting"] == 0
    assert value(parse(scrape_text(metrics_worker)), "svdq_worker_busy") == 1
    text = run_svdq(["stats"], fleet["env"], timeout=60).stdout
    assert f"job {job.job_id}" in text and "(denoise 0/3)" in text
    job.wait(timeout=60)
    _wait_for(lambda: snapshot(conn)["workers"][0]["job_id"] is None, 10, "the worker to idle")


def queried_metric_names() -> set[str]:
    """svdq_* names used by the Grafana dashboard, the alert rules and the KEDA trigger."""
    texts = [p.read_text() for p in (DEPLOY / "grafana").rglob("*.json")]
    texts += [p.read_text() for p in (DEPLOY / "prometheus").glob("*.yml")]
    texts += [p.read_text() for p in (DEPLOY / "k8s").glob("*.yaml")]
    return set(re.findall(r"\bsvdq_[a-z0-9_]+", "\n".join(texts)))


def test_stats_watch_refreshes(fleet: dict[str, Any], tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "svdq.producer.cli", "stats", "--json", "--watch", "0.2"]
    proc = subprocess.Popen(argv, env=fleet["env"], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
    finally:
        proc.send_signal(signal.SIGINT)
        # Drain stdout while it stops: a snapshot every 0.2 s fills the pipe in seconds, and a
        # child blocked writing to a full pipe never gets to exit (seen in a full-suite run).
        proc.communicate(timeout=30)
    assert lines[1]["time"] > lines[0]["time"]
    assert proc.returncode == 130
