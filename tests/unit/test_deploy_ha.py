"""The opt-in Redis HA deployment files (docker-compose.ha.yml, deploy/k8s/ha/) parse and hang
together: one master, one replica, three sentinels monitoring the master by the name svdq
asks for, and every svdq process pointed at the sentinels with a URL svdq's Settings accept.
Docker and kubectl do not run here, so these checks read the files the way those tools would."""

from __future__ import annotations

import re
from typing import Any

import yaml

from svdq.shared.redisconn import sentinel_target
from svdq.shared.settings import Settings
from tests.unit.test_deploy import CPU, DEPLOY, GPU, REPO, load, merge

HA = merge(GPU, load(REPO / "docker-compose.ha.yml"))
K8S_HA = {
    (d["kind"], d["metadata"]["name"]): d
    for p in sorted((DEPLOY / "k8s" / "ha").glob("*.yaml"))
    for d in yaml.safe_load_all(p.read_text())
    if d
}
SVDQ_SERVICES = ("worker-gpu0", "worker-gpu1", "flower", "exporter")


def filled(text: str) -> str:
    """Compose's ${VAR:?...} with the example env's value."""
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", lambda m: example[m.group(1)], text)


def settings_of(env: dict[str, Any]) -> Settings:
    return Settings.from_env({k: filled(str(v)) for k, v in env.items()})


def test_compose_ha_has_master_replica_and_three_sentinels() -> None:
    services = HA["services"]
    master = " ".join(services["redis"]["command"])
    replica = " ".join(services["redis-replica"]["command"])
    assert "--masterauth" in master  # a restarted master must log in to the new one
    assert "--replicaof redis 6379" in replica and "--masterauth" in replica
    assert "--appendonly yes" in master and "--appendonly yes" in replica
    sentinels = [n for n in services if n.startswith("sentinel-")]
    assert sorted(sentinels) == ["sentinel-1", "sentinel-2", "sentinel-3"]
    for name in sentinels:
        script = " ".join(services[name]["command"])
        assert "'sentinel monitor svdq redis 6379 2'" in script
        assert "requirepass $$REDIS_SENTINEL_PASSWORD" in script
        assert "healthcheck" in services[name]


def test_compose_ha_points_every_svdq_process_at_the_sentinels() -> None:
    for name in SVDQ_SERVICES:
        settings = settings_of(HA["services"][name]["environment"])
        target = sentinel_target(settings)
        assert target is not None, name
        assert [h for h, _ in target.sentinels] == ["sentinel-1", "sentinel-2", "sentinel-3"]
        assert target.master_name == "svdq" and target.password == "change-me-redis"
        assert target.sentinel_password == "change-me-sentinel"
        assert settings.redis_min_replicas == 1
        # The rest of the base environment is still there (compose merges environment maps).
        assert settings.s3_endpoint == "http://minio:9000"
    # The CPU stack's own worker is not in the HA file (it would be a service with no image
    # when the CPU file is not used); the base and CPU files are untouched.
    assert "worker-cpu" not in load(REPO / "docker-compose.ha.yml")["services"]
    assert GPU["services"]["redis"] is not HA["services"]["redis"] and CPU


def test_every_variable_the_ha_file_needs_is_in_the_example_env() -> None:
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", (REPO / "docker-compose.ha.yml").read_text()))
    assert {"REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"} <= needed
    filled(" ".join(f"${{{n}:?x}}" for n in needed))  # KeyError when one is missing


def test_k8s_ha_secret_sentinels_and_data_pods_agree() -> None:
    secret = K8S_HA[("Secret", "svdq-secrets")]["stringData"]
    base = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "k8s" / "namespace.yaml").read_text())
        if d and d["kind"] == "Secret"
    )["stringData"]
    assert set(base) <= set(secret)  # a full replacement, nothing the other pods need lost
    settings = Settings.from_env(secret)
    target = sentinel_target(settings)
    assert target is not None and settings.redis_min_replicas == 1
    sentinels = K8S_HA[("StatefulSet", "redis-sentinel")]
    assert sentinels["spec"]["replicas"] == len(target.sentinels) == 3
    assert [h for h, _ in target.sentinels] == [
        f"redis-sentinel-{i}.{sentinels['spec']['serviceName']}" for i in range(3)
    ]
    assert {p for _, p in target.sentinels} == {26379}
    script = sentinels["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert f"sentinel monitor {target.master_name} redis-ha-0.redis-ha 6379 2" in script
    data = K8S_HA[("StatefulSet", "redis-ha")]
    assert data["spec"]["replicas"] == 2 and data["spec"]["serviceName"] == "redis-ha"
    start = data["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "get-master-addr-by-name svdq" in start and "--masterauth" in start
    assert K8S_HA[("PodDisruptionBudget", "redis-sentinel")]["spec"]["minAvailable"] == 2
    for kind in ("StatefulSet",):
        for (k, _), obj in K8S_HA.items():
            if k == kind:
                labels = obj["spec"]["template"]["metadata"]["labels"]
                assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ("Service", "redis-ha") in K8S_HA and ("Service", "redis-sentinel") in K8S_HA
