"""Defect 12 (issue 9): installing for CUDA over a venv that has CPU torch.

The Makefile's torch stamp is named after TORCH_SPEC, so `make install TORCH_SPEC=...cu128`
over an installed venv reinstalls torch (forced: pip takes 2.13.0+cpu as meeting
torch==2.13.0). Checked with `make -n` on a made-up venv folder: make prints what it would run
and runs nothing. And a worker launcher that finds GPUs (injected readings) next to this host's
real CPU build of torch refuses to start, printing the command that fixes it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from svdq.shared.errors import ConfigError
from svdq.worker import launch
from svdq.worker.gpuinfo import torch_cuda_build
from tests.conftest import REPO
from tests.fixtures.gpus import parse as fake_gpus

pytestmark = pytest.mark.integration
CU128 = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"


def _dry_make(venv: Path, *assignments: str) -> str:
    done = subprocess.run(
        ["make", "-n", "install", f"VENV={venv}", *assignments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_new_torch_spec_reinstalls_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    first = _dry_make(venv)  # a fresh venv: torch with the default spec, then svdq
    assert "pip install -q --force-reinstall --no-deps torch==2.13.0\n" in first
    # Installed with the default spec: the stamps make names, newer than pyproject.toml.
    stamp = next(
        line for line in first.splitlines() if line.startswith("touch ") and ".torch-" in line
    )
    later = time.time() + 60
    for path in (Path(stamp.split()[1]), venv / ".installed"):
        path.touch()
        os.utime(path, (later, later))
    assert "pip" not in _dry_make(venv)  # nothing to do
    cuda = _dry_make(venv, f"TORCH_SPEC={CU128}")
    assert f"pip install -q --force-reinstall --no-deps {CU128}\n" in cuda
    assert "pip install -q -e '.[worker,dev,api]'" in cuda


def test_the_torch_build_is_read_without_importing_torch() -> None:
    assert torch_cuda_build() is None  # this host's wheel: 2.13.0+cpu, `cuda = None`


def test_gpus_with_cpu_torch_refuse_to_start_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SVDQ_MODEL_DIR", str(tmp_path))
    args = argparse.Namespace(gpus="all", variant="tiny", name=None, queues=None)
    with pytest.raises(ConfigError) as err:
        launch.launch(args, devices=fake_gpus("24GiB"))
    text = str(err.value)
    assert text.startswith("GPU 0 (fake GPU 24GiB")
    assert "torch 2.13.0+cpu here is a CPU build" in text
    assert "pip install --force-reinstall torch==2.13.0 --index-url " in text
    assert "https://download.pytorch.org/whl/cu128" in text
    assert 'make install TORCH_SPEC="torch==2.13.0 --index-url' in text


def test_the_download_command_is_hf_download(tmp_path: Path) -> None:
    """The installed huggingface_hub ships only `hf`. Its `download` takes FILENAMES as
    positional arguments and `--include` as a repeatable option (huggingface_hub/cli/
    download.py): `--include '*.json' '*.fp16.safetensors'` would make the second pattern a
    file name and ignore --include ("Ignoring `--include` since filenames have been explicitly
    set.")."""
    from svdq.shared.errors import ModelNotFoundError
    from svdq.shared.settings import Settings
    from svdq.worker.models import model_source

    assert shutil.which("hf", path=str(Path(sys.executable).parent))
    with pytest.raises(ModelNotFoundError) as err:
        model_source(Settings.from_env({"SVDQ_MODEL_DIR": str(tmp_path)}), "svd-xt")
    wanted = "--include '*.json' --include '*.fp16.safetensors' --local-dir"
    assert "\n  hf download stabilityai/stable-video-diffusion-img2vid-xt " + wanted in str(
        err.value
    )
    for doc in ("README.md", "deploy/README.md"):
        text = (REPO / doc).read_text()
        assert "huggingface-cli" not in text and "hf download stabilityai/" in text
        assert "--include '*.json' --include '*.fp16.safetensors'" in text


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_only_a_given_torch_spec_replaces_an_installed_torch(tmp_path: Path) -> None:
    """Review finding 4: over a venv `make install TORCH_SPEC=<cu128>` built, make without
    TORCH_SPEC keeps that torch (tests/unit/test_review_gpu.py); TORCH_SPEC given in the
    environment, as on the command line, still installs its torch."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".torch-0123456789ab").touch()  # what another spec's install left
    (venv / ".installed").touch()
    assert "pip" not in _dry_make(venv)
    env = {**os.environ, "TORCH_SPEC": "torch==2.13.0"}
    done = subprocess.run(
        ["make", "-n", "install", f"VENV={venv}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert "pip install -q --force-reinstall --no-deps torch==2.13.0\n" in done.stdout
