"""The Prometheus and Grafana files as the tools read them (issue 10, operations): promtool
checks the configs, the alert rules and every dashboard query when it is installed (.ci/run
installs Debian's prometheus package, which ships it); a counter with no series yet shows 0
on the dashboard, not "No data"."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "svdq-fleet.json"
CONFIGS = ["prometheus.yml", "prometheus.cpu.yml"]
ZERO = " or on() vector(0)"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def panels() -> list[dict]:  # type: ignore[type-arg]
    return list(json.loads(DASHBOARD.read_text())["panels"])


@pytest.mark.parametrize("name", CONFIGS)
def test_rule_files_resolve_beside_the_config(name: str) -> None:
    """Prometheus resolves rule_files against the config file's folder: a relative name
    works in the repo and in the container, where compose mounts both into /etc/prometheus."""
    config = yaml.safe_load((PROMETHEUS / name).read_text())
    for rule_file in config["rule_files"]:
        assert not rule_file.startswith("/"), rule_file
        assert (PROMETHEUS / rule_file).is_file(), rule_file


@needs_promtool
@pytest.mark.parametrize("name", CONFIGS)
def test_promtool_checks_the_config(name: str) -> None:
    result = promtool("check", "config", str(PROMETHEUS / name))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each panel's PromQL, as recording rules promtool parses."""
    rules = [
        {"record": f"svdq:panel_{p['id']}_{n}", "expr": t["expr"]}
        for p in panels()
        for n, t in enumerate(p.get("targets", []))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_counter_panels_show_zero_before_the_first_increment() -> None:
    """A labelled counter has no series until it first counts (no failure yet, no OOM yet):
    its panels add `or on() vector(0)` (zero only when nothing else is there) and say 0."""
    counted = [p for p in panels() if any("_total" in t["expr"] for t in p.get("targets", []))]
    assert {p["title"] for p in counted} >= {
        "Throughput (clips per minute)",
        "Failures by reason (1 h)",
        "OOM step-downs (1 h)",
    }
    for panel in counted:
        assert panel["fieldConfig"]["defaults"]["noValue"] == "0", panel["title"]
        for target in panel["targets"]:
            if "_total" in target["expr"]:
                assert target["expr"].endswith(ZERO), (panel["title"], target["expr"])
