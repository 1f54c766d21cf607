"""The memory-profile table, at every VRAM band edge, overrides, the ladder, the queues a
worker consumes, and the no-torch import rule."""

from __future__ import annotations

import dataclasses
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import svdq.shared
from svdq.shared.errors import ConfigError
from svdq.shared.settings import Settings
from svdq.worker import profiles
from svdq.worker.profiles import (
    CPU_LADDER,
    CPU_PROFILE,
    GB,
    GIB,
    GPU_TABLE,
    Profile,
    choose_profile,
    gpu_profile,
    ladder,
    runnable_variants,
    worker_queues,
)

REPO = Path(__file__).resolve().parents[2]


def profile_ladder(vram: int | None, variant: str, env: dict[str, str]) -> tuple[Profile, ...]:
    """The ladder under the overrides in `env`, read the way a worker reads them."""
    return profiles.profile_ladder(vram, variant, Settings.from_env(env).worker)


@pytest.mark.parametrize(
    ("vram", "name"),
    [
        (80 * GIB, "xt-40g"),
        (38 * GB, "xt-40g"),  # 40 GB less the 5 % tolerance
        (38 * GB - 1, "xt-24g"),
        (int(22.8 * GB), "xt-24g"),
        (int(22.8 * GB) - 1, "xt-16g"),
        (int(15.2 * GB), "xt-16g"),
        (int(15.2 * GB) - 1, "xt-10g"),
        (int(9.5 * GB), "xt-10g"),
        (int(9.5 * GB) - 1, "xt-8g"),
        (int(7.6 * GB), "xt-8g"),
        (int(7.6 * GB) - 1, "svd-low"),
        (6 * GIB, "svd-low"),
        (1, "svd-low"),
        (0, "svd-low"),
    ],
)
def test_band_edges(vram: int, name: str) -> None:
    assert gpu_profile(vram).name == name
    assert choose_profile(vram, "auto").name == name


@pytest.mark.parametrize(
    ("card", "reported_bytes", "name"),
    [
        ("H100 80GB", 85_520_809_984, "xt-40g"),
        ("A100 40GB", 40_500_000_000, "xt-40g"),
        ("A6000 48GB", 51_041_271_808, "xt-40g"),
        ("V100 32GB", 34_089_730_048, "xt-24g"),
        ("RTX 4090 24GB", 25_757_220_864, "xt-24g"),
        ("L4 24GB", 24_152_899_584, "xt-24g"),
        ("T4 16GB", 15_843_721_216, "xt-16g"),
        ("RTX 3060 12GB", 12_884_901_888, "xt-10g"),
        ("RTX 3080 10GB", 10_737_418_240, "xt-10g"),
        ("RTX 3070 8GB", 8_589_934_592, "xt-8g"),
        ("RTX 2060 6GB", 6_442_450_944, "svd-low"),
    ],
)
def test_real_cards_land_in_the_row_people_expect(
    card: str, reported_bytes: int, name: str
) -> None:
    assert gpu_profile(reported_bytes).name == name, card


def test_table_rows() -> None:
    rows = {p.name: (floor, p) for floor, p in GPU_TABLE}
    P = Profile
    assert rows == {
        "xt-40g": (40, P("xt-40g", "svd-xt", "float16", "none", False, 25, True, "cuda")),
        "xt-24g": (24, P("xt-24g", "svd-xt", "float16", "none", False, 8, False, "cuda")),
        "xt-16g": (16, P("xt-16g", "svd-xt", "float16", "model", False, 4, False, "cuda")),
        "xt-10g": (10, P("xt-10g", "svd-xt", "float16", "model", True, 2, False, "cuda")),
        "xt-8g": (8, P("xt-8g", "svd-xt", "float16", "model", True, 1, False, "cuda")),
        "svd-low": (0, P("svd-low", "svd", "float16", "sequential", True, 1, False, "cuda")),
    }


def test_table_is_ordered_top_down_and_ends_at_zero() -> None:
    floors = [floor for floor, _ in GPU_TABLE]
    assert floors == sorted(floors, reverse=True)
    assert len(set(floors)) == len(floors)
    assert floors[-1] == 0
    # memory use only goes down as VRAM does
    chunks = [p.decode_chunk_size for _, p in GPU_TABLE]
    assert chunks == sorted(chunks, reverse=True)  # type: ignore[type-var]


def test_six_gib_gets_svd_with_sequential_offload() -> None:
    p = choose_profile(6 * GIB, "auto")
    assert (p.variant, p.offload, p.forward_chunking, p.decode_chunk_size) == (
        "svd",
        "sequential",
        True,
        1,
    )


def test_compile_needs_volta_or_newer() -> None:
    assert gpu_profile(80 * GIB, (8, 0)).compile is True
    assert gpu_profile(80 * GIB, (7, 0)).compile is True
    assert gpu_profile(80 * GIB, (6, 1)).compile is False
    assert gpu_profile(80 * GIB, None).compile is True


# --- the ladder ---------------------------------------------------------------------------


def names(rungs: tuple[Profile, ...]) -> list[str]:
    return [p.name for p in rungs]


def test_ladder_of_a_big_gpu_keeps_the_variant_all_the_way_down() -> None:
    rungs = ladder(80 * GIB, "svd-xt")
    assert names(rungs) == ["xt-40g", "xt-24g", "xt-16g", "xt-10g", "xt-8g"]
    assert {p.variant for p in rungs} == {"svd-xt"}
    # each rung down saves memory: offload grows, chunks shrink
    assert [p.decode_chunk_size for p in rungs] == [25, 8, 4, 2, 1]
    assert [p.offload for p in rungs] == ["none", "none", "model", "model", "model"]


def test_auto_resolves_to_the_best_real_variant() -> None:
    assert ladder(24 * GIB, "auto") == ladder(24 * GIB, "svd-xt")
    assert ladder(6 * GIB, "auto")[0].variant == "svd"


def test_svd_steps_down_to_sequential_offload() -> None:
    assert names(ladder(12 * GIB, "svd")) == ["xt-10g", "xt-8g", "svd-low"]
    assert {p.variant for p in ladder(12 * GIB, "svd")} == {"svd"}


def test_xt_does_not_fit_in_six_gib() -> None:
    with pytest.raises(ConfigError, match=r"variant='svd-xt' needs at least 7.6 GB.*6.4 GB"):
        ladder(6 * GIB, "svd-xt")


def test_cpu_ladder_is_tiny_fp32_then_chunked() -> None:
    assert ladder(None, "tiny") == CPU_LADDER
    assert CPU_LADDER[0] == Profile("cpu", "tiny", "float32", "none", False, None, False, "cpu")
    assert CPU_LADDER[1] == Profile("cpu-lean", "tiny", "float32", "none", True, 2, False, "cpu")


def test_cpu_refuses_real_variants_and_auto_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="SVDQ_ALLOW_CPU=1"):
        ladder(None, "svd-xt")
    with pytest.raises(ConfigError, match="never means tiny"):
        ladder(None, "auto")
    assert ladder(None, "auto", allow_cpu=True)[0] == dataclasses.replace(
        CPU_PROFILE, variant="svd-xt"
    )


# --- queues ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vram", "variants", "queues"),
    [
        (
            80 * GIB,
            ("svd", "svd-xt", "svd-xt-1-1"),
            ["svdq.svd", "svdq.svd-xt", "svdq.svd-xt-1-1", "svdq.auto"],
        ),
        (
            8 * GIB,
            ("svd", "svd-xt", "svd-xt-1-1"),
            ["svdq.svd", "svdq.svd-xt", "svdq.svd-xt-1-1", "svdq.auto"],
        ),
        (6 * GIB, ("svd",), ["svdq.svd", "svdq.auto"]),
        (None, ("tiny",), ["svdq.tiny"]),
    ],
)
def test_queues_follow_the_ladder(vram, variants, queues) -> None:  # type: ignore[no-untyped-def]
    assert runnable_variants(vram) == variants
    assert worker_queues(vram) == queues


def test_cpu_worker_with_allow_cpu_takes_everything() -> None:
    assert worker_queues(None, allow_cpu=True) == [
        "svdq.svd",
        "svdq.svd-xt",
        "svdq.svd-xt-1-1",
        "svdq.tiny",
        "svdq.auto",
    ]


# --- overrides ------------------------------------------------------------------------------


def test_profile_by_name_starts_the_ladder_there() -> None:
    rungs = profile_ladder(80 * GIB, "svd-xt", {"SVDQ_PROFILE": "xt-16g"})
    assert names(rungs) == ["xt-16g", "xt-10g", "xt-8g"]


def test_profile_by_name_must_exist_and_fit() -> None:
    with pytest.raises(ConfigError, match=r"SVDQ_PROFILE='huge' is not allowed: one of xt-40g"):
        profile_ladder(80 * GIB, "svd-xt", {"SVDQ_PROFILE": "huge"})
    with pytest.raises(ConfigError, match=r"SVDQ_PROFILE='xt-40g' is not allowed for svd-xt"):
        profile_ladder(12 * GIB, "svd-xt", {"SVDQ_PROFILE": "xt-40g"})


def test_field_overrides_change_the_top_rung_only() -> None:
    env = {
        "SVDQ_DECODE_CHUNK_SIZE": "3",
        "SVDQ_OFFLOAD": "model",
        "SVDQ_FORWARD_CHUNKING": "yes",
        "SVDQ_COMPILE": "0",
        "SVDQ_DTYPE": "float32",
    }
    rungs = profile_ladder(80 * GIB, "svd-xt", env)
    assert rungs[0] == Profile("xt-40g*", "svd-xt", "float32", "model", True, 3, False, "cuda")
    assert rungs[1:] == ladder(80 * GIB, "svd-xt")[1:]
    assert profile_ladder(None, "tiny", {"SVDQ_DECODE_CHUNK_SIZE": "all"})[0].name == "cpu*"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("SVDQ_DECODE_CHUNK_SIZE", "0", "a whole number above 0, or 'all'"),
        ("SVDQ_DECODE_CHUNK_SIZE", "four", "a whole number above 0, or 'all'"),
        ("SVDQ_OFFLOAD", "disk", "one of none, model, sequential"),
        ("SVDQ_DTYPE", "bfloat16", "one of float16, float32"),
        ("SVDQ_COMPILE", "maybe", "1/0, true/false"),
        ("SVDQ_FORWARD_CHUNKING", "2", "1/0, true/false"),
    ],
)
def test_bad_overrides_name_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        profile_ladder(24 * GIB, "svd-xt", {var: value})
    assert str(err.value).startswith(f"{var}={value!r} is not allowed: {message}")


def test_sequential_offload_is_refused_on_cpu() -> None:
    with pytest.raises(ConfigError, match="SVDQ_OFFLOAD='sequential' is not allowed without"):
        profile_ladder(None, "tiny", {"SVDQ_OFFLOAD": "sequential"})


def test_to_dict() -> None:
    assert CPU_PROFILE.to_dict() == {
        "name": "cpu",
        "variant": "tiny",
        "dtype": "float32",
        "offload": "none",
        "forward_chunking": False,
        "decode_chunk_size": None,
        "compile": False,
        "device": "cpu",
    }


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CPU_PROFILE.variant = "svd"  # type: ignore[misc]


# --- the producer side never imports torch ---------------------------------------------------

SHARED_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(svdq.shared.__path__, prefix="svdq.shared.")
)
NO_TORCH = [
    "svdq.shared",
    *SHARED_MODULES,
    "svdq.worker.profiles",
    "svdq.worker.gpuinfo",
    "svdq.worker.devices",
    "svdq.worker.launch",
    "svdq.worker.supervisor",
    "svdq.producer.cli",
    "svdq.producer.client",
    "svdq.producer.jobflags",
]

_CHECK = (
    "import importlib, sys; importlib.import_module(sys.argv[1]); "
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', "
    "'transformers', 'accelerate')); print(','.join(bad))"
)


def test_shared_modules_were_found() -> None:
    assert {
        "svdq.shared.spec",
        "svdq.shared.settings",
        "svdq.shared.images",
        "svdq.shared.storage",
    } <= set(SHARED_MODULES)


def test_importing_does_not_import_torch() -> None:
    # One fresh interpreter per module (run side by side), so each is checked on its own.
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", _CHECK, name],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in NO_TORCH
    }
    failures = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failures.append(f"{name}: import failed:\n{err[-2000:]}")
        elif out.strip():
            failures.append(f"{name} imported {out.strip()[:200]}")
    assert not failures, "\n".join(failures)


def test_every_override_the_worker_reads_is_in_svdq_help() -> None:
    from svdq.shared.variables import PROFILE_VARIABLES
    from svdq.worker.profiles import FIELD_OVERRIDES, OVERRIDE_VARIABLES

    assert set(OVERRIDE_VARIABLES) == set(PROFILE_VARIABLES) == {"SVDQ_PROFILE", *FIELD_OVERRIDES}
