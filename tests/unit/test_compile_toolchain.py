"""Defect 5 (issue 9): torch.compile needs a C compiler and Python.h (Triton builds a C helper
at first use, triton/runtime/build.py). The worker image carries both; a machine without them
plans the compiling rungs eagerly, says why in `svdq plan` and in the profile result.json
records, instead of failing every warm-up."""

from __future__ import annotations

import json
import re
import stat
import sysconfig
from pathlib import Path

import pytest

from svdq.producer.cli import main
from svdq.shared.settings import Settings
from svdq.worker import toolchain
from svdq.worker.devices import device_plan, ladder_for
from tests.conftest import REPO
from tests.fixtures.gpus import parse as fake_gpus

DEFAULTS = Settings.from_env({})
NO_CC = "no C compiler (made up by the test)"


def _run_lines(dockerfile: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    return [line for line in joined.splitlines() if line.startswith("RUN ")]


def test_the_worker_image_has_a_compiler_and_python_headers() -> None:
    text = (REPO / "deploy" / "docker" / "Dockerfile.worker").read_text()
    installs = [r for r in _run_lines(text) if "apt-get install" in r]
    assert installs, "no apt-get install in Dockerfile.worker"
    packages = set(re.findall(r"[\w.+-]+", installs[0].split("apt-get install", 1)[1]))
    assert {"gcc", "libc6-dev"} <= packages or "build-essential" in packages
    # The CUDA base has no Python: it gets python3 with its headers (Python.h).
    assert {"python3", "python3-venv", "python3-dev"} <= packages
    assert text.index("apt-get install") < text.index("USER 10001")  # installed as root


def test_no_toolchain_runs_the_compiling_rungs_eagerly_and_says_why() -> None:
    card = fake_gpus("80GB")[0]
    plan = device_plan(card, DEFAULTS, toolchain=lambda: NO_CC)
    top = plan.ladder[0]
    assert (top.name, top.compile, top.compile_unavailable) == ("xt-40g", False, NO_CC)
    assert top.to_dict()["compile_unavailable"] == NO_CC  # what result.json records
    assert all(p.compile_unavailable is None for p in plan.ladder[1:])  # never compiled
    assert plan.to_dict()["compile_unavailable"] == NO_CC
    assert ladder_for(plan, "svd", DEFAULTS)[0].compile_unavailable == NO_CC
    fine = device_plan(card, DEFAULTS, toolchain=lambda: None)
    assert fine.ladder[0].compile and "compile_unavailable" not in fine.ladder[0].to_dict()
    assert "compile_unavailable" not in fine.to_dict()


def test_the_check_asks_what_triton_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, no clang
    assert (toolchain.compile_unavailable() or "").startswith("no C compiler")
    monkeypatch.setenv("CC", "/nowhere/cc")
    assert "CC='/nowhere/cc' is not a program on PATH" in (toolchain.compile_unavailable() or "")
    gcc = tmp_path / "gcc"
    gcc.write_text("#!/bin/sh\n")
    gcc.chmod(gcc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv("CC")
    include = tmp_path / "include"
    include.mkdir()
    real = sysconfig.get_paths

    def paths(scheme: str | None = None) -> dict[str, str]:  # a Python without its headers
        return {**(real(scheme) if scheme else real()), "include": str(include)}

    monkeypatch.setattr(toolchain.sysconfig, "get_paths", paths)
    assert f"no Python.h in {include}" in (toolchain.compile_unavailable() or "")
    (include / "Python.h").touch()
    assert toolchain.compile_unavailable() is None


def test_svdq_plan_says_compile_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CC", "/nowhere/cc")  # the real check, through the real command
    assert main(["plan", "--vram", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "compile unavailable: CC='/nowhere/cc' is not a program on PATH" in out
    assert "compile no (unavailable here)" in out
    assert main(["plan", "--vram", "80GB", "--json"]) == 0
    (plan,) = json.loads(capsys.readouterr().out)
    assert plan["ladder"][0]["compile"] is False
    assert plan["ladder"][0]["compile_unavailable"].startswith("CC='/nowhere/cc'")
