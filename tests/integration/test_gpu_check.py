"""`make gpu-check`'s script part and bench/gpu.py on this CPU host: both end with "no CUDA
here" and exit 0; on made-up GPUs with this host's CPU torch, gpu-check's plan (--dry-run)
reinstalls CUDA torch, runs the gpu tests and benches tiny, and says "skipped: no weights" for
the real variants. No services needed; subprocesses, so kept with the integration tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check
from tests.conftest import REPO
from tests.fixtures.gpus import parse as fake_gpus

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("script", ["bench/gpu_check.py", "bench/gpu.py"])
def test_no_cuda_here_and_no_error(script: str) -> None:
    done = subprocess.run(
        [sys.executable, script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA here: ")


def test_the_plan_on_a_gpu_host_with_cpu_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SVDQ_MODEL_DIR", str(tmp_path))  # no real weights in it
    assert gpu_check.main(["--dry-run"], devices=fake_gpus("80GB")) == 0
    out = capsys.readouterr().out
    assert "torch here is a CPU build: installing torch==2.13.0 --index-url" in out
    assert (
        "-m pip install -q --force-reinstall torch==2.13.0 --index-url "
        "https://download.pytorch.org/whl/cu128" in out
    )
    assert "-m pytest -m gpu tests/gpu -q" in out
    assert "bench/gpu.py --variant tiny --output" in out
    assert "svd: skipped: no weights" in out and "svd-xt: skipped: no weights" in out
    assert "bench/gpu.py --variant svd-xt" not in out


def test_a_small_card_skips_what_it_cannot_run(tmp_path: Path) -> None:
    from svdq.shared.settings import Settings

    settings = Settings.from_env({"SVDQ_MODEL_DIR": str(tmp_path)})
    (tmp_path / "svd").mkdir()
    (tmp_path / "svd" / "model_index.json").write_text("{}")
    targets = dict(gpu_check.bench_targets(settings, fake_gpus("6GiB")[0]))
    assert targets["tiny"] is None and targets["svd"] is None  # weights here: benched
    assert (targets["svd-xt"] or "").startswith("skipped: this card cannot run it")


def test_the_summary_fails_on_a_rung_over_its_budget() -> None:
    row = {"profile": {"name": "xt-16g"}, "s_per_clip": 9.0, "peak_reserved_gb": 14.0}
    report = {
        "device": "card",
        "pytest": {"returncode": 0, "result": "passed"},
        "benches": {
            "tiny": {"rows": [{**row, "verdict": "n/a"}]},
            "svd-xt": {"rows": [{**row, "verdict": "FAIL: needs 16.0 GB, the README row …"}]},
            "svd": {"skipped": "skipped: no weights"},
        },
    }
    text, ok = gpu_check.summary(report)
    assert not ok and "svd     skipped: no weights" in text and "FAIL: needs 16.0 GB" in text
    report["benches"]["svd-xt"]["rows"][0]["verdict"] = "pass"
    assert gpu_check.summary(report)[1]
