"""Adversarial review of the Redis high-availability work (issue 11, items 2 and 3): each test
is one reproducible finding, marked xfail(strict) until it is fixed. Real servers only: the
master, replica and three sentinels of tests/fixtures/redisha.py (one set for the module,
restored after the test that kills its master), plus a two-process mini set (one master, one
sentinel on 127.0.0.1 and ::1) for the URL findings.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_lib
from celery.exceptions import Reject

from bench.redis_failover import JOB
from svdq.producer.client import Client
from svdq.producer.services import free_port
from svdq.shared.celery_app import make_celery, send_job
from svdq.shared.errors import ConfigError
from svdq.shared.redisconn import redis_client, sentinel_target
from svdq.shared.replication import ReplicationShortfall
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import callbacks
from tests.conftest import run_svdq
from tests.integration.helpers import make_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow (CI runs it)


@pytest.fixture
def image(tmp_path: Path) -> str:
    return str(make_image(tmp_path / "in.png", (128, 64)))


def messages_for(r: redis_lib.Redis, job_id: str) -> list[bytes]:
    """The queue lists (every priority) that hold a message of `job_id`."""
    return [
        key
        for key in r.scan_iter("svdq.tiny*")
        if r.type(key) == b"list" and any(job_id.encode() in m for m in r.lrange(key, 0, -1))
    ]


@pytest.mark.parametrize("how", ["single", "bulk"])
def test_a_failed_submit_leaves_no_message_behind(ha, ha_env, image, store, how):
    client = Client(Settings.from_env(ha_env), store)
    seed = 101 if how == "single" else 102
    spec = {"image": image, "seed": seed, **JOB}
    ha.caught_up()
    replica = ha.replica()
    ha.pause(replica)
    try:
        with pytest.raises(ReplicationShortfall):
            if how == "single":
                client.submit(**spec)
            else:
                client.submit_many([spec])
    finally:
        ha.resume(replica)
    job_id = str(client.prepare(spec).job_id)
    master = ha.client(ha.master())
    try:
        # The producer was told "failed"; then nothing may run it later.
        assert messages_for(master, job_id) == [], "the failed job's message is still queued"
    finally:
        for key in messages_for(master, job_id):  # leave the module's set clean
            master.delete(key)


def test_one_hung_sentinel_does_not_stall_a_new_process(ha, ha_env):
    first = ha.sentinels[0]  # the first sentinel:// entry, asked first by every discovery
    ha.pause(first)
    try:
        started = time.monotonic()
        try:
            out = run_svdq(["status", "00000000000000000000abcd"], ha_env, timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"svdq status still waiting after {time.monotonic() - started:.0f} s")
        assert "unknown" in out.stdout, out.stdout + out.stderr  # answered, in time
    finally:
        ha.resume(first)


# --- URL handling: a two-process set (a passworded master, one sentinel on v4 and v6) ---

ODD_PASSWORD = "p@ss/w:rd#1"  # what a secret generator hands out


@pytest.fixture(scope="module")
def mini() -> Iterator[dict[str, int]]:
    folder = Path(tempfile.mkdtemp(prefix="svdq-review-ha-"))
    pw_port, plain_port, sentinel_port = free_port(), free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    procs = [
        subprocess.Popen(["redis-server", "--port", str(pw_port), *common,
                          "--requirepass", ODD_PASSWORD], stdout=subprocess.DEVNULL),
        subprocess.Popen(["redis-server", "--port", str(plain_port), *common],
                         stdout=subprocess.DEVNULL),
    ]  # fmt: skip
    conf = folder / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1 ::1\ndir {folder}\n"
        f"sentinel monitor odd 127.0.0.1 {pw_port} 1\nsentinel auth-pass odd {ODD_PASSWORD}\n"
        f"sentinel monitor plain 127.0.0.1 {plain_port} 1\n"
    )
    procs.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                  stdout=subprocess.DEVNULL))  # fmt: skip
    sentinel = redis_lib.Redis("127.0.0.1", sentinel_port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            if len(sentinel.sentinel_masters()) == 2:
                break
        except redis_lib.RedisError:
            pass
        assert time.monotonic() < deadline, "mini sentinel set did not start"
        time.sleep(0.05)
    yield {"pw": pw_port, "plain": plain_port, "sentinel": sentinel_port}
    for proc in procs:
        proc.kill()
        proc.wait(10)


def queued(r: redis_lib.Redis) -> int:
    """Messages on queue svdq.tiny, every priority: kombu keeps priority n > 0 in its own list
    (kombu/transport/redis.py, Channel._q_for_pri: f"{queue}{self.sep}{pri}"), and a job of
    svdq priority 5 goes out as kombu priority 4, to svdq.tiny:4."""
    return sum(int(r.llen(k)) for k in r.scan_iter("svdq.tiny*") if r.type(k) == b"list")


def publish_one(settings: Settings) -> None:
    """What `svdq submit` does once the input is stored: send_job on the Celery app."""
    app = make_celery(settings)
    job = JobSpec.from_dict(
        {"image": "inputs/x.png", "variant": "tiny", "job_id": "review-ha-url", "seed": 1}
    )
    send_job(app, job, settings)


def test_an_encoded_master_password_reaches_celery(mini):
    url = f"sentinel://:{quote(ODD_PASSWORD, safe='')}@127.0.0.1:{mini['sentinel']}/0"
    settings = Settings.from_env({"SVDQ_REDIS_URL": url, "SVDQ_REDIS_MASTER_NAME": "odd"})
    assert redis_client(settings, timeout=2).ping()  # svdq's own client: fine
    publish_one(settings)  # ValueError: invalid literal for int() with base 10: 'w:rd'
    master = redis_lib.Redis("127.0.0.1", mini["pw"], password=ODD_PASSWORD)
    assert queued(master) >= 1


def test_an_ipv6_sentinel_reaches_celery(mini):
    url = f"sentinel://[::1]:{mini['sentinel']}/0"
    settings = Settings.from_env({"SVDQ_REDIS_URL": url, "SVDQ_REDIS_MASTER_NAME": "plain"})
    assert redis_client(settings, timeout=2).ping()  # svdq's own client: fine
    publish_one(settings)  # ValueError: Port could not be cast to integer value as ':1:...'
    assert queued(redis_lib.Redis("127.0.0.1", mini["plain"])) >= 1


def test_a_mix_of_redis_and_sentinel_urls_is_refused(redis_url):
    mixed = f"{redis_url};sentinel://127.0.0.1:26379"
    with pytest.raises(ConfigError, match="SVDQ_REDIS_URL"):
        settings = Settings.from_env({"SVDQ_REDIS_URL": mixed})
        # What it does instead: the DB number of the URL is lost.
        db = redis_client(settings).connection_pool.connection_kwargs.get("db", 0)
        assert db == int(redis_url.rsplit("/", 1)[1]), f"svdq's client uses DB {db}"


def test_a_password_on_a_later_sentinel_entry_is_not_ignored():
    url = "sentinel://127.0.0.1:26379/0;sentinel://:secret@127.0.0.1:26380/3"
    try:
        target = sentinel_target(Settings.from_env({"SVDQ_REDIS_URL": url}))
    except ConfigError as exc:
        assert "SVDQ_REDIS_URL" in str(exc)
        return
    assert target is not None
    assert target.password == "secret" and target.db == 3, target


# --- last: kills the module set's master (and restores the set) ---


def test_a_worker_publish_survives_a_failover(ha, ha_env):
    settings = Settings.from_env(ha_env)
    assert settings.redis_min_replicas == 1
    app = make_celery(settings)  # the worker's app, built as the worker builds it
    job = JobSpec.from_dict(
        {"image": "inputs/x.png", "variant": "tiny", "job_id": "review-ha-cb", "seed": 1,
         "callback_url": "http://127.0.0.1:9/cb"}
    )  # fmt: skip
    callbacks.dispatch(app, job, {"job_id": job.job_id, "status": "warm"})  # connect first
    ha.caught_up()
    master, replica = ha.master(), ha.replica()
    before = ha.client(master).llen("svdq.callbacks")
    # The replica's link drops (network blip) just before the worker publishes, and the
    # master dies before the replica reconnects: what the master took alone is gone.
    ha.pause(replica)
    ha.client(master).execute_command("CLIENT", "KILL", "TYPE", "replica")
    payload = {"job_id": job.job_id, "status": "succeeded"}
    # The publish is not reported as done (as send_job's is not): the worker turns this into
    # Reject(requeue=True) (callbacks.replicated), so the job's own message is not acked...
    with pytest.raises(ReplicationShortfall):
        callbacks.dispatch(app, job, payload)
    # ...and nothing is left behind on the master that only it holds.
    assert ha.client(master).llen("svdq.callbacks") == before
    with pytest.raises(Reject) as rejected:
        callbacks.replicated(callbacks.dispatch, app, job, payload)
    assert rejected.value.requeue
    ha.kill_master()
    ha.resume(replica)
    restarted = False
    try:
        ha.wait_new_master(master)
        ha.restart(master)  # back as the new master's replica: MIN_REPLICAS=1 can be met
        restarted = True
        ha.caught_up(30)
        # The job's message, redelivered after the failover, publishes its callback again.
        callbacks.dispatch(app, job, payload)
        after = ha.client(ha.master()).llen("svdq.callbacks")
        assert after == before + 1, f"callback message lost: {before} before, {after} after"
    finally:
        if not restarted:
            ha.restart(master)
            ha.caught_up(30)
