"""The deployment files parse and hang together: compose services, GPUs, grace periods,
Prometheus targets, Grafana provisioning, Kubernetes references. Docker and kubectl do not run
here, so these checks read the files the way those tools would."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge, everything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return override


GPU = load(REPO / "docker-compose.yml")
CPU = merge(GPU, load(REPO / "docker-compose.cpu.yml"))
K8S = {
    p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in DEPLOY.glob("k8s/*.yaml")
}
ALERTS = load(DEPLOY / "prometheus" / "alerts.yml")
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "svdq-fleet.json").read_text())


def workers(compose: dict[str, Any], active_only: bool = False) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in compose["services"].items()
        if name.startswith("worker-") and not (active_only and s.get("profiles"))
    }


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m|h)", duration)
    assert match, f"stop_grace_period={duration!r}: expected e.g. 1860s"
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


@pytest.mark.parametrize("compose", [GPU, CPU], ids=["gpu", "cpu"])
def test_every_referenced_service_and_volume_exists(compose: dict[str, Any]) -> None:
    services, volumes = set(compose["services"]), set(compose["volumes"])
    for name, s in compose["services"].items():
        assert set(s.get("depends_on") or {}) <= services, name
        for mount in s.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        build = s.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name


def test_every_gpu_worker_has_exactly_one_distinct_gpu() -> None:
    seen = []
    ws = workers(GPU)
    assert len(ws) >= 2
    for name, s in ws.items():
        [device] = s["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "count" not in device, name
        assert len(device["device_ids"]) == 1, name
        assert "gpu" in device["capabilities"]
        seen.append(device["device_ids"][0])
    assert len(set(seen)) == len(seen), f"two workers share a GPU: {seen}"


@pytest.mark.parametrize("compose", [GPU, CPU], ids=["gpu", "cpu"])
def test_workers_outlive_their_longest_job_and_keep_models(compose: dict[str, Any]) -> None:
    for name, s in workers(compose, active_only=True).items():
        env = env_of(s)
        limit, visibility = int(env["SVDQ_TASK_TIME_LIMIT"]), int(env["SVDQ_VISIBILITY_TIMEOUT"])
        assert seconds(s["stop_grace_period"]) > limit, name
        assert visibility > limit, name
        assert any(v.endswith(":/models") for v in s["volumes"]), name
        assert env["SVDQ_MODEL_DIR"] == "/models"
        # torch.compile's caches on a named volume: a restart warms up from them.
        assert env["SVDQ_COMPILE_CACHE"] == "/compile-cache", name
        assert "compile-cache:/compile-cache" in s["volumes"], name
        assert "compile-cache" in compose["volumes"]
        assert "healthcheck" in s, name
        assert env["SVDQ_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")


def test_cpu_stack_runs_only_the_tiny_worker() -> None:
    active = workers(CPU, active_only=True)
    assert list(active) == ["worker-cpu"]
    cpu = active["worker-cpu"]
    assert "deploy" not in cpu
    assert cpu["command"][cpu["command"].index("--variant") + 1] == "tiny"
    assert cpu["command"][cpu["command"].index("--gpus") + 1] == "none"
    assert all(s["profiles"] == ["gpu"] for n, s in workers(CPU).items() if n != "worker-cpu")


def test_redis_minio_flower_settings() -> None:
    services = GPU["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync everysec" in redis_cmd
    assert "--requirepass ${REDIS_PASSWORD" in redis_cmd
    init = " ".join(services["minio-init"]["command"])
    assert "mc mb --ignore-existing local/svdq" in init
    assert "admin user add" in init  # svdq's own key pair, not the root one
    # Any failed step fails the service (workers wait for it to complete successfully) and
    # the key pair's policy covers the svdq bucket only, not MinIO's all-bucket readwrite.
    assert init.startswith("set -e;") and "|| true" not in init
    assert '"Resource":["arn:aws:s3:::svdq","arn:aws:s3:::svdq/*"]' in init
    assert "policy attach local svdq-rw" in init and "readwrite" not in init
    flower = " ".join(services["flower"]["command"])
    assert '--basic-auth="$$FLOWER_BASIC_AUTH"' in flower and "--persistent=True" in flower
    # svdq's app, not a bare --broker: kombu's ':' separator must match the workers'.
    assert flower.startswith("exec celery -A svdq.producer.flower flower")
    for name, s in services.items():
        if name != "minio-init":
            assert "healthcheck" in s, f"{name} has no healthcheck"


def test_every_variable_compose_needs_is_in_the_example_env() -> None:
    text = (REPO / "docker-compose.yml").read_text() + (REPO / "docker-compose.cpu.yml").read_text()
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    example = {
        line.split("=", 1)[0]
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert needed and needed <= example, needed - example


def mounted_prometheus_config(compose: dict[str, Any]) -> Any:
    """The Prometheus config file a compose stack mounts, parsed."""
    [mount] = [
        v
        for v in compose["services"]["prometheus"]["volumes"]
        if v.endswith(":/etc/prometheus/prometheus.yml:ro")
    ]
    return load(REPO / mount.split(":")[0])


@pytest.mark.parametrize("stack", ["gpu", "cpu"])
def test_prometheus_scrapes_exactly_the_services_that_run(stack: str) -> None:
    compose = GPU if stack == "gpu" else CPU
    prom = mounted_prometheus_config(compose)
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in prom["scrape_configs"]
    }
    assert set(targets) == {"svdq-workers", "svdq-exporter", "flower"}
    running = {n for n, s in compose["services"].items() if not s.get("profiles")}
    hosts = {t.split(":")[0] for ts in targets.values() for t in ts}
    # A target that does not run reads as a dead worker: SvdqWorkerDown would never clear.
    assert hosts <= running, hosts - running
    assert set(workers(compose, active_only=True)) <= hosts, "a worker nobody scrapes"
    assert all(t.endswith(":9810") for t in targets["svdq-workers"])
    # Relative: resolved against the config's folder, in the repo and in the container alike.
    assert prom["rule_files"] == ["alerts.yml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_alert_rules_cover_what_on_call_needs() -> None:
    rules = {r["alert"]: r for g in ALERTS["groups"] for r in g["rules"]}
    assert {
        "SvdqQueueStale",
        "SvdqNoWorkersForQueue",
        "SvdqFailureRate",
        "SvdqDeadLettersGrowing",
    } <= set(rules)
    for name, rule in rules.items():
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name


def test_grafana_dashboard_uses_the_provisioned_datasource() -> None:
    [source] = load(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    [provider] = load(DEPLOY / "grafana/provisioning/dashboards/svdq.yml")["providers"]
    assert source["url"] == "http://prometheus:9090"
    grafana_mounts = GPU["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana_mounts
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in DASHBOARD["panels"]).lower()
    for topic in ("queue depth", "throughput", "time per clip", "gpu memory", "failures", "oom"):
        assert topic in titles
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for ds in K8S.values() for d in ds]
    assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_k8s_worker_has_one_gpu_grace_pdb_and_autoscaler() -> None:
    objs = k8s_objects()
    limit = int(objs[("ConfigMap", "svdq-config")]["data"]["SVDQ_TASK_TIME_LIMIT"])
    worker = objs[("Deployment", "svdq-worker")]
    pod = worker["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] > limit
    # SVDQ_COMPILE_CACHE on a volume that outlives the pod (a PVC, made in this file).
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["compile-cache"] == env["SVDQ_COMPILE_CACHE"] == "/compile-cache"
    [volume] = [v for v in pod["volumes"] if v["name"] == "compile-cache"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert objs[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = worker["spec"]["template"]["metadata"]["labels"]
    pdb = objs[("PodDisruptionBudget", "svdq-worker")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    scaled = objs[("ScaledObject", "svdq-worker")]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "svdq-worker"
    [trigger] = scaled["spec"]["triggers"]
    assert "svdq_queue_depth" in trigger["metadata"]["query"]


def test_k8s_references_resolve() -> None:
    objs = k8s_objects()
    for (kind, name), obj in objs.items():
        if kind not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        for c in pod["containers"]:
            for ref in c.get("envFrom", []):
                wanted = (
                    ("ConfigMap", ref["configMapRef"]["name"])
                    if "configMapRef" in ref
                    else (
                        "Secret",
                        ref["secretRef"]["name"],
                    )
                )
                assert wanted in objs, f"{kind}/{name} needs {wanted}"
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in objs
        if kind != "Job":
            assert obj["spec"]["selector"]["matchLabels"].items() <= (
                obj["spec"]["template"]["metadata"]["labels"].items()
            )
    for kind in ("Service", "Deployment", "StatefulSet"):
        assert any(k == kind for k, _ in objs)
    names = {n for _, n in objs}
    assert {"redis", "minio", "flower", "svdq-exporter", "svdq-worker"} <= names


@pytest.mark.parametrize("name", ["Dockerfile.slim", "Dockerfile.worker"])
def test_dockerfiles_are_pinned_and_non_root(name: str) -> None:
    text = (DEPLOY / "docker" / name).read_text()
    bases = re.findall(r"^(?:ARG BASE=|FROM )(\S+)", text, re.M)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases if b != "${BASE}")
    assert re.search(r"^USER 10001$", text, re.M)
    if name == "Dockerfile.slim":
        assert '".[ops]"' in text and "[worker]" not in text and "torch" in text
    else:
        assert "torch==${TORCH_VERSION}" in text
        # A fresh named volume copies the image's folder: owned by the worker's user, so
        # SVDQ_COMPILE_CACHE is writable (the worker refuses to start otherwise).
        assert re.search(r"chown svdq [^\n]*/compile-cache", text)
        assert '"/compile-cache"' in text


def test_readme_covers_running_adding_gpus_and_timeouts() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in ("docker compose", "kubectl apply", "visibility_timeout", "add a GPU"):
        assert needle.lower() in text.lower(), needle


@pytest.mark.parametrize("compose", [GPU, CPU], ids=["gpu", "cpu"])
def test_the_api_runs_as_its_own_service(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["command"] == ["api"] and api["image"] == "svdq-slim:0.1.0"
    env = env_of(api)
    assert env["SVDQ_API_HOST"] == "0.0.0.0" and env["SVDQ_REDIS_URL"].startswith("redis://")
    assert api["ports"] == ["127.0.0.1:8000:8000"]  # TLS is a reverse proxy's job
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert '".[api]"' in (DEPLOY / "docker" / "Dockerfile.slim").read_text()


def test_k8s_api_deployment_and_service() -> None:
    objs = k8s_objects()
    deployment, service = objs[("Deployment", "svdq-api")], objs[("Service", "svdq-api")]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["api"] and pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SVDQ_API_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"][0]["port"] == int(env["SVDQ_API_PORT"])
