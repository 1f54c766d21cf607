"""Device readings → worker plans: `svdq plan`, GPU selection, made-up readings passed in."""

from __future__ import annotations

import argparse
import json

import pytest

from svdq.producer.cli import main
from svdq.shared.errors import ConfigError
from svdq.shared.settings import Settings
from svdq.worker.devices import device_plan, ladder_for, this_device
from svdq.worker.gpuinfo import Device, parse_capability, parse_nvidia_smi, parse_size
from svdq.worker.launch import pick_gpus
from svdq.worker.profiles import GIB
from tests.fixtures.gpus import parse as fake_gpus

DEFAULTS = Settings.from_env({})


@pytest.fixture(autouse=True)
def _cuda_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The made-up cards stand on a CUDA build of torch (the launcher refuses a CPU build)."""
    from tests.fixtures.gpus import cuda_torch_build

    monkeypatch.setattr("svdq.worker.launch.torch_build", cuda_torch_build)


SMI = """0, NVIDIA A100-SXM4-40GB, 40960, 40339, 8.0
1, NVIDIA GeForce RTX 4090, 24564, 24080, 8.9
2, Tesla T4, 15360, 14930, 7.5
"""


def test_nvidia_smi_rows_become_devices() -> None:
    devices = parse_nvidia_smi(SMI)
    assert devices[1] == Device(1, "NVIDIA GeForce RTX 4090", 24564 * 2**20, 24080 * 2**20, (8, 9))
    plans = [device_plan(d, DEFAULTS) for d in devices]
    assert [p.ladder[0].name for p in plans] == ["xt-40g", "xt-24g", "xt-16g"]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("24GiB", 24 * GIB),
        ("12GB", 12 * 10**9),
        ("8000MiB", 8000 * 2**20),
        ("1.5gib", GIB * 3 // 2),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_and_capability_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--vram='12 apples' is not allowed: a size such as"):
        parse_size("12 apples")
    with pytest.raises(ConfigError, match=r"--capability='eight' is not allowed: major.minor"):
        parse_capability("eight")


def test_fake_readings_and_the_device_a_worker_picks() -> None:
    devices = fake_gpus("24GiB, 6GiB@7.5")
    assert [(d.index, d.total_bytes, d.capability) for d in devices] == [
        (0, 24 * GIB, (8, 0)),
        (1, 6 * GIB, (7, 5)),
    ]
    assert this_device(Settings.from_env({"SVDQ_GPU_INDEX": "1"}), devices) == devices[1]
    assert this_device(DEFAULTS, devices) == devices[0]
    assert this_device(DEFAULTS, []) is None
    with pytest.raises(ConfigError, match=r"SVDQ_GPU_INDEX=2 is not a GPU on this host: one of"):
        this_device(Settings.from_env({"SVDQ_GPU_INDEX": "2"}), devices)


def test_two_fake_gpus_plan_their_own_queues() -> None:
    big, small = fake_gpus("24GiB,6GiB")
    assert device_plan(big, DEFAULTS).queues == (
        "svdq.svd",
        "svdq.svd-xt",
        "svdq.svd-xt-1-1",
        "svdq.auto",
    )
    assert device_plan(small, DEFAULTS).queues == ("svdq.svd", "svdq.auto")
    assert device_plan(small, DEFAULTS).default_variant == "svd"


def test_cpu_plan_serves_tiny_only() -> None:
    plan = device_plan(None, DEFAULTS)
    assert (plan.default_variant, plan.queues) == ("tiny", ("svdq.tiny",))
    assert [p.name for p in plan.ladder] == ["cpu", "cpu-lean"]


def test_job_variant_ladders() -> None:
    plan = device_plan(Device(0, "x", 24 * GIB, None, (8, 9)), DEFAULTS)
    assert ladder_for(plan, "auto", DEFAULTS) == plan.ladder
    assert [p.variant for p in ladder_for(plan, "svd", DEFAULTS)] == ["svd"] * 5
    assert [p.name for p in ladder_for(plan, "svd", DEFAULTS)][-1] == "svd-low"


def test_pick_gpus() -> None:
    devices = fake_gpus("24GiB,6GiB,80GiB")
    assert pick_gpus("all", devices) == devices
    assert pick_gpus(None, devices) == devices
    assert pick_gpus("0,2", devices) == [devices[0], devices[2]]
    assert pick_gpus("none", devices) == []
    assert pick_gpus(None, []) == []
    with pytest.raises(ConfigError, match=r"--gpus='0,5' is not allowed: .* from \[0, 1, 2\]"):
        pick_gpus("0,5", devices)
    with pytest.raises(ConfigError, match="--gpus=all found no GPU"):
        pick_gpus("all", [])


def test_plan_command_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--vram", "12GiB", "--capability", "8.6"]) == 0
    out = capsys.readouterr().out
    assert "12.9 GB (12.0 GiB), compute capability 8.6" in out
    assert "default variant: svd-xt" in out
    assert "queues: svdq.svd, svdq.svd-xt, svdq.svd-xt-1-1, svdq.auto" in out
    assert "1. xt-10g" in out and "2. xt-8g" in out and "3." not in out


def test_plan_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--vram", "40.5GB", "--variant", "svd", "--json"]) == 0
    (plan,) = json.loads(capsys.readouterr().out)
    assert plan["default_variant"] == "svd"
    assert [r["name"] for r in plan["ladder"]] == [
        "xt-40g",
        "xt-24g",
        "xt-16g",
        "xt-10g",
        "xt-8g",
        "svd-low",
    ]
    assert plan["weights"].startswith("MISSING: the svd weights are not on this machine")


def test_plan_command_refuses_what_cannot_fit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--vram", "6GiB", "--variant", "svd-xt"]) == 2
    assert "variant='svd-xt' needs at least 7.6 GB of VRAM; this GPU has 6.4 GB" in (
        capsys.readouterr().err
    )


def test_plan_command_on_this_cpu_host(capsys: pytest.CaptureFixture[str]) -> None:
    from svdq.worker.launch import plan_command

    args = argparse.Namespace(vram=None, capability=None, variant="auto", json=False)
    assert plan_command(args, devices=[]) == 0
    assert capsys.readouterr().out.startswith("CPU (no CUDA)\n  default variant: tiny")


def test_named_worker_needs_gpu_index_with_many_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from svdq.worker.launch import launch

    monkeypatch.setattr("svdq.worker.launch._prepare_model", lambda settings, variant: None)
    args = argparse.Namespace(gpus="all", variant=None, queues=None, name="w@h")
    with pytest.raises(ConfigError, match=r"--name='w@h' is not allowed with 2 GPUs: include %g"):
        launch(args, devices=fake_gpus("24GiB,6GiB"))


def test_queues_of_variants_without_weights_are_skipped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from svdq.shared.settings import Settings
    from svdq.worker.launch import consumed_queues, missing_weights

    (tmp_path / "svd-xt").mkdir()
    (tmp_path / "svd-xt" / "model_index.json").write_text("{}")
    settings = dataclasses.replace(Settings.from_env({}), model_dir=tmp_path)
    plan = device_plan(Device(0, "x", 24 * GIB, None, (8, 9)), settings)
    assert missing_weights(plan, settings) == ["svd", "svd-xt-1-1"]
    assert consumed_queues(plan, settings) == ["svdq.svd-xt", "svdq.auto"]
    (tmp_path / "svd").mkdir()
    (tmp_path / "svd" / "model_index.json").write_text("{}")
    assert consumed_queues(plan, settings) == ["svdq.svd", "svdq.svd-xt", "svdq.auto"]


def test_plan_never_imports_torch() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import sys; from svdq.producer.cli import main; main(['plan', '--vram', '12GiB']); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_launcher_starts_one_worker_per_usable_gpu(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from svdq.worker import launch as launcher
    from svdq.worker.supervisor import Supervisor

    started: list[list[object]] = []
    monkeypatch.setattr(Supervisor, "run", lambda self: started.append(self.children) or 0)
    (tmp_path / "svd-xt").mkdir()
    (tmp_path / "svd-xt" / "model_index.json").write_text("{}")
    for name, value in {"SVDQ_MODEL_DIR": str(tmp_path), "SVDQ_PROFILE": ""}.items():
        monkeypatch.setenv(name, value)
    args = argparse.Namespace(gpus="all", variant=None, queues=None, name=None)
    assert launcher.launch(args, devices=fake_gpus("24GiB,6GiB,80GiB")) == 0
    (children,) = started
    host = launcher.socket.gethostname()
    assert [c.name for c in children] == [f"gpu0@{host}", f"gpu2@{host}"]
    gpu2 = children[1]
    assert (gpu2.env["CUDA_VISIBLE_DEVICES"], gpu2.env["CUDA_DEVICE_ORDER"]) == ("2", "PCI_BUS_ID")
    assert gpu2.env["SVDQ_GPU_INDEX"] == "2" and gpu2.env["SVDQ_WORKER_VARIANT"] == "svd-xt"
    assert gpu2.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert {"--pool=prefork", "--concurrency=1", "--prefetch-multiplier=1"} <= set(gpu2.argv)
    assert "--queues=svdq.svd-xt,svdq.auto" in gpu2.argv  # no weights for svd, svd-xt-1-1
    err = capsys.readouterr().err
    fake = "fake GPU 6GiB (test-only, tests/fixtures/gpus.py)"
    assert f"GPU 1 ({fake}): not started: the svd weights" in err
    assert "weights missing for svd, svd-xt-1-1: the worker skips their queues" in err


def test_launcher_with_one_gpu_that_cannot_start_fails(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from svdq.worker import launch as launcher

    monkeypatch.setenv("SVDQ_MODEL_DIR", str(tmp_path))
    args = argparse.Namespace(gpus="all", variant="svd-xt", queues=None, name=None)
    with pytest.raises(ConfigError, match=r"variant='svd-xt' needs at least 7.6 GB"):
        launcher.launch(args, devices=fake_gpus("6GiB"))


def test_plan_json_says_which_queues_a_worker_would_consume_now(
    tmp_path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    import json

    from svdq.producer.cli import main

    (tmp_path / "svd-xt").mkdir()
    (tmp_path / "svd-xt" / "model_index.json").write_text("{}")
    monkeypatch.setenv("SVDQ_MODEL_DIR", str(tmp_path))
    assert main(["plan", "--vram", "24GiB", "--json"]) == 0
    [plan] = json.loads(capsys.readouterr().out)
    assert plan["queues"] == ["svdq.svd", "svdq.svd-xt", "svdq.svd-xt-1-1", "svdq.auto"]
    assert plan["missing_weights"] == ["svd", "svd-xt-1-1"]
    assert plan["consumes"] == ["svdq.svd-xt", "svdq.auto"]
    assert main(["plan", "--vram", "24GiB"]) == 0
    assert "consumes now: svdq.svd-xt, svdq.auto" in capsys.readouterr().out


def test_a_compiling_plan_names_the_shapes_it_warms() -> None:
    from svdq.worker.launch import format_plan

    settings = Settings.from_env({"SVDQ_WARM_SHAPES": "1024x576,768x768x14"})
    h100 = Device(0, "NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB, (9, 0))
    plan = device_plan(h100, settings, toolchain=lambda: None)
    assert plan.ladder[0].compile and plan.default_variant == "svd-xt"
    assert plan.warm_shapes == ((1024, 576, 25), (768, 768, 14))  # frames left out: svd-xt's
    assert plan.to_dict()["warm_shapes"] == ["1024x576x25", "768x768x14"]
    assert (
        "compiled at load (SVDQ_WARM_SHAPES): 1024x576x25, 768x768x14; jobs of other shapes "
        "run eagerly"
    ) in format_plan(plan, "ok")

    # Nothing compiles (no C compiler here, or a card whose rows never compile): nothing to warm.
    for eager in (
        device_plan(h100, settings, toolchain=lambda: "no C compiler"),
        device_plan(Device(0, "T4", 16 * GIB, 15 * GIB, (7, 5)), settings, toolchain=lambda: None),
    ):
        assert not any(p.compile for p in eager.ladder)
        assert eager.warm_shapes == () and "warm_shapes" not in eager.to_dict()
        assert "SVDQ_WARM_SHAPES" not in format_plan(eager, "ok")


def test_launcher_refuses_a_compile_cache_it_cannot_write(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SVDQ_COMPILE_CACHE is checked before any worker starts, naming the variable: a worker
    that could not save its caches would pay minutes of compiling at every restart unseen."""
    from svdq.worker import launch as launcher

    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    monkeypatch.setenv("SVDQ_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SVDQ_COMPILE_CACHE", str(taken))
    args = argparse.Namespace(gpus="all", variant="svd-xt", queues=None, name=None)
    with pytest.raises(ConfigError, match=r"SVDQ_COMPILE_CACHE='.*a-file' .*not a directory"):
        launcher.launch(args, devices=fake_gpus("80GB"))
