"""Defect 11 (issue 9): an operator's overrides must not combine torch.compile with offload
(CUDA graphs while hooks move weights). It is refused at start, naming both variables, for
`svdq plan` and `svdq worker` alike (both build the ladder through profile_ladder)."""

from __future__ import annotations

import pytest

from svdq.producer.cli import main
from svdq.shared.errors import ConfigError
from svdq.shared.settings import Settings
from svdq.worker.profiles import GIB, profile_ladder


def _ladder(total: int, env: dict[str, str]) -> object:
    return profile_ladder(total, "svd-xt", Settings.from_env(env).worker, (9, 0))


@pytest.mark.parametrize(
    ("total", "env", "said"),
    [
        (80 * GIB, {"SVDQ_COMPILE": "1", "SVDQ_OFFLOAD": "model"}, "you set SVDQ_COMPILE=1 and "),
        (80 * GIB, {"SVDQ_COMPILE": "yes", "SVDQ_OFFLOAD": "sequential"}, "SVDQ_COMPILE=1 and"),
        # The table's xt-40g compiles; the operator only asked for offload.
        (80 * GIB, {"SVDQ_OFFLOAD": "model"}, "you set SVDQ_OFFLOAD='model' (profile xt-40g"),
        # The table's xt-16g offloads; the operator only asked for compile.
        (16 * GIB, {"SVDQ_COMPILE": "1"}, "you set SVDQ_COMPILE=1 (profile xt-16g gives"),
    ],
)
def test_compile_with_offload_is_refused_naming_both(
    total: int, env: dict[str, str], said: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _ladder(total, env)
    text = str(err.value)
    assert text.startswith("SVDQ_COMPILE=1 with SVDQ_OFFLOAD=")
    assert said in text and "Use SVDQ_COMPILE=0 to offload, or SVDQ_OFFLOAD=none" in text


def test_each_alone_is_fine() -> None:
    assert _ladder(80 * GIB, {"SVDQ_OFFLOAD": "model", "SVDQ_COMPILE": "0"})[0].offload == "model"
    assert _ladder(24 * GIB, {"SVDQ_COMPILE": "1"})[0].compile  # xt-24g: no offload
    assert _ladder(16 * GIB, {"SVDQ_OFFLOAD": "none", "SVDQ_COMPILE": "1"})[0].compile


def test_svdq_plan_refuses_it_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SVDQ_COMPILE", "1")
    monkeypatch.setenv("SVDQ_OFFLOAD", "model")
    assert main(["plan", "--vram", "80GB"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: SVDQ_COMPILE=1 with SVDQ_OFFLOAD='model' is not allowed" in err
