"""On a producer-only install (no torch, no diffusers) the worker-side commands say what to
install instead of failing with a traceback from inside svdq.worker, which ships in every install
(a new user's finding: `svdq worker` and `svdq model make-tiny` raised from worker/tiny.py)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from svdq.producer import cli, workercli

_real_find_spec = importlib.util.find_spec


def _without(*names: str) -> Any:
    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in names else _real_find_spec(name, *args, **kwargs)

    return find_spec


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "--gpus", "none"],
        ["model", "make-tiny", "/nonexistent"],
        ["run", "x.png", "-o", "x.mp4"],
    ],
)
def test_a_pipeline_command_without_torch_says_what_to_install(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", _without("torch"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "torch not installed" in err
    assert "pip install 'svdq[worker]'" in err
    assert "Traceback" not in err


def test_plan_and_callbacks_need_no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", _without(*workercli.PIPELINE_PACKAGES))
    assert callable(workercli._worker_side("svdq.worker.launch", "plan_command", needs=()))
    with pytest.raises(Exception, match=r"diffusers"):
        workercli._worker_side("svdq.worker.tiny", "ensure_tiny_model")
