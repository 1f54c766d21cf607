"""shared/redisconn.py and the Redis settings: a sentinel:// list is read into the sentinels,
the master's login and the sentinels' own, and handed to Celery the way kombu's SentinelChannel
and Celery's SentinelBackend read it; bad values fail naming the variable. No server needed:
nothing here connects."""

from __future__ import annotations

import ssl

import pytest

from svdq.shared.celery_app import make_celery
from svdq.shared.errors import ConfigError
from svdq.shared.redisconn import celery_redis_conf, redis_tls_options, sentinel_target
from svdq.shared.replication import POLICY_OPTION, ReplicaPolicy
from svdq.shared.settings import Settings

URL = "sentinel://:master-pw@10.0.0.1:26379/3;sentinel://10.0.0.2:26380;sentinel://h3"


def settings(**env: str) -> Settings:
    return Settings.from_env({"SVDQ_REDIS_URL": URL, **env})


def test_sentinel_target_reads_hosts_logins_and_db() -> None:
    target = sentinel_target(settings(SVDQ_REDIS_SENTINEL_PASSWORD="s-pw"))
    assert target is not None
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("h3", 26379))
    assert (target.master_name, target.db, target.password) == ("svdq", 3, "master-pw")
    assert target.sentinel_kwargs() == {"password": "s-pw"}  # the sentinels' own, not master's
    assert target.tls is None
    assert sentinel_target(Settings.from_env({})) is None


def test_celery_gets_master_name_and_sentinel_login_on_both_sides() -> None:
    s = settings(SVDQ_REDIS_MASTER_NAME="prod", SVDQ_REDIS_SENTINEL_PASSWORD="s-pw")
    app = make_celery(s)
    for options in (app.conf.broker_transport_options, app.conf.result_backend_transport_options):
        assert options["master_name"] == "prod"
        assert options["sentinel_kwargs"]["password"] == "s-pw"
        assert options["sentinel_kwargs"]["socket_timeout"] > 0  # Celery's default is none
    assert app.conf.broker_transport == "svdq.shared.replication:SentinelTransport"
    # Celery's SentinelBackend takes db/password from the first URL ("hosts[0]") for master_for.
    params = app.backend.connparams
    assert (params["db"], params["password"]) == (3, "master-pw")
    assert [(h["host"], h["port"]) for h in params["hosts"]] == [
        ("10.0.0.1", 26379),
        ("10.0.0.2", 26380),
        ("h3", 26379),
    ]


def test_tls_options_on_the_first_sentinel_url() -> None:
    url = "sentinel://h1:26379/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem;sentinel://h2"
    options = redis_tls_options(url)
    assert options == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    conf = celery_redis_conf(Settings.from_env({"SVDQ_REDIS_URL": url}))
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == options
    assert "?" not in conf["broker_url"]  # TLS travels in broker_use_ssl, not the URL
    target = sentinel_target(Settings.from_env({"SVDQ_REDIS_URL": url}))
    assert target is not None and target.sentinel_kwargs()["ssl"] is True
    assert redis_tls_options(URL) is None


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("sentinel://h1:26379;redis://h2:6379", "each entry must be sentinel://host:port"),
        ("sentinel://:26379", "each entry must be sentinel://host:port"),
        ("sentinel://h1:port", "Port could not be cast"),
        ("sentinel://h1:26379/zero", "is not a number"),
    ],
)
def test_bad_sentinel_urls_name_the_variable(url: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SVDQ_REDIS_URL": url})
    assert "SVDQ_REDIS_URL=" in str(info.value) and hint in str(info.value)


def test_min_replicas() -> None:
    assert ReplicaPolicy.of(settings()) is None  # default 0: no WAIT
    policy = ReplicaPolicy.of(settings(SVDQ_REDIS_MIN_REPLICAS="2", SVDQ_REDIS_WAIT_TIMEOUT="3"))
    assert policy is not None and (policy.min_replicas, policy.timeout_s) == (2, 3)
    assert "settings" not in repr(policy)  # kombu may show transport options; no secrets
    app = make_celery(settings(SVDQ_REDIS_MIN_REPLICAS="2"))
    assert app.conf.broker_transport_options[POLICY_OPTION].min_replicas == 2
    for bad in ("-1", "one"):
        with pytest.raises(ConfigError, match="SVDQ_REDIS_MIN_REPLICAS"):
            settings(SVDQ_REDIS_MIN_REPLICAS=bad)
