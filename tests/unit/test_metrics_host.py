"""SVDQ_METRICS_HOST: where the worker's /metrics and `svdq exporter` listen (issue 10,
operations). 127.0.0.1 unless set; compose and Kubernetes set 0.0.0.0 for their containers.
That the listeners really bind it is checked through real processes in
tests/faults/test_adversary.py (worker) and tests/faults/test_outages.py (exporter)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from svdq.shared.errors import ConfigError
from svdq.shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_default_is_this_machine_only() -> None:
    assert Settings.from_env({}).metrics_host == "127.0.0.1"


@pytest.mark.parametrize("value", ["0.0.0.0", "::", "127.0.0.1", "10.1.2.3", "metrics.internal"])
def test_addresses_and_host_names_are_taken(value: str) -> None:
    assert Settings.from_env({"SVDQ_METRICS_HOST": value}).metrics_host == value


@pytest.mark.parametrize("value", ["http://0.0.0.0", "0.0.0.0:9810", "a b", "-x"])
def test_anything_else_is_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match=f"SVDQ_METRICS_HOST={value!r} is not allowed"):
        Settings.from_env({"SVDQ_METRICS_HOST": value})


def test_containers_listen_on_every_interface() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["x-svdq-env"]["SVDQ_METRICS_HOST"] == "0.0.0.0"
    cpu = yaml.safe_load((REPO / "docker-compose.cpu.yml").read_text())
    assert cpu["services"]["worker-cpu"]["environment"]["SVDQ_METRICS_HOST"] == "0.0.0.0"
    docs = list(yaml.safe_load_all((REPO / "deploy/k8s/namespace.yaml").read_text()))
    [config] = [d for d in docs if d and d["metadata"]["name"] == "svdq-config"]
    assert config["data"]["SVDQ_METRICS_HOST"] == "0.0.0.0"
