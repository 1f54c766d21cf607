"""SVDQ_COMPILE_CACHE's decisions, without compiling (issue 15, item 3): where a cache lives,
what the variable accepts, and that a foreign, damaged or missing bundle never fails a start.
That a second process really compiles less: tests/integration/test_compile_cache.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from svdq.shared.errors import ConfigError
from svdq.shared.settings import Settings
from svdq.shared.variables import describe_variables
from svdq.worker import compilecache

KEY = compilecache.cache_key("2.13.0+cu128", "NVIDIA H200-sm90", "svd-xt", "float16")


@pytest.fixture(autouse=True)
def _torch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_cache points torch at the folder through the environment: undone after."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_one_folder_per_torch_card_variant_and_dtype(tmp_path: Path) -> None:
    folder = compilecache.cache_folder(tmp_path, KEY)
    assert folder == tmp_path / "torch-2.13.0+cu128" / "nvidia-h200-sm90" / "svd-xt-float16"
    others = [
        {**KEY, "torch": "2.14.0+cu128"},
        {**KEY, "device": "NVIDIA A100-SXM4-80GB-sm80"},
        {**KEY, "variant": "svd"},
        {**KEY, "dtype": "float32"},
    ]
    assert len({compilecache.cache_folder(tmp_path, k) for k in [KEY, *others]}) == 5
    weird = compilecache.cache_folder(tmp_path, {**KEY, "device": "../../etc"})
    assert weird.resolve().is_relative_to(tmp_path)  # a card name never leaves the root


def test_the_variable_is_a_path_or_unset(tmp_path: Path) -> None:
    assert Settings.from_env({}).worker.compile_cache is None
    assert Settings.from_env({"SVDQ_COMPILE_CACHE": " "}).worker.compile_cache is None
    got = Settings.from_env({"SVDQ_COMPILE_CACHE": str(tmp_path / "cc")}).worker.compile_cache
    assert got == tmp_path / "cc"
    assert "SVDQ_COMPILE_CACHE" in describe_variables()


def test_the_root_must_be_a_writable_directory(tmp_path: Path) -> None:
    made = compilecache.check_root(tmp_path / "new" / "cc")  # made when missing
    assert made.is_dir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"SVDQ_COMPILE_CACHE=.*file.*not a directory"):
        compilecache.check_root(a_file)
    with pytest.raises(ConfigError, match=r"SVDQ_COMPILE_CACHE=.*cannot make that directory"):
        compilecache.check_root(a_file / "below")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match=r"not writable by this user.*writable directory"):
            compilecache.check_root(locked)


def test_unset_leaves_torchs_defaults() -> None:
    cache = compilecache.open_cache(None, KEY)
    cache.finish()
    assert cache.state == "off" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_open_points_inductor_and_triton_at_the_keys_folder(tmp_path: Path) -> None:
    cache = compilecache.open_cache(tmp_path, KEY)
    folder = compilecache.cache_folder(tmp_path, KEY)
    assert cache.folder == folder
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(folder / "triton")
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(folder / "inductor")  # what inductor itself now uses
    cache.finish()  # nothing compiled: nothing counted, no bundle
    assert (cache.state, cache.saved) == ("unused", False)
    assert not (folder / compilecache.BUNDLE).exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x80\x04garbage", "not an svdq compile-cache bundle"),
        (compilecache.MAGIC + b"{not json\n", "JSONDecodeError"),
        (compilecache.MAGIC + json.dumps(KEY).encode() + b"\nrandom bytes", "could not read"),
    ],
    ids=["foreign-file", "broken-header", "torch-cannot-read"],
)
def test_a_damaged_bundle_is_logged_and_the_start_compiles(
    tmp_path: Path, content: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = compilecache.cache_folder(tmp_path, KEY)
    folder.mkdir(parents=True)
    (folder / compilecache.BUNDLE).write_bytes(content)
    cache = compilecache.open_cache(tmp_path, KEY)
    assert cache.folder == folder and cache.loaded == 0
    assert why in cache.note and "compiling without it" in cache.note
    assert why in caplog.text


def test_a_bundle_for_another_torch_is_ignored(tmp_path: Path) -> None:
    folder = compilecache.cache_folder(tmp_path, KEY)
    folder.mkdir(parents=True)
    older = {**KEY, "torch": "2.12.0+cu128"}  # copied here by hand: its own folder differs
    (folder / compilecache.BUNDLE).write_bytes(
        compilecache.MAGIC + json.dumps(older).encode() + b"\nwhatever"
    )
    loaded, note = compilecache.load_bundle(folder, KEY)
    assert loaded == 0 and "2.12.0+cu128" in note and "ignored" in note


def test_states_say_what_the_warm_up_took_from_the_cache(tmp_path: Path) -> None:
    def state(hits: int, misses: int) -> str:
        return compilecache.CompileCache(tmp_path, KEY, hits=hits, misses=misses).state

    assert (state(2, 0), state(1, 1), state(0, 2), state(0, 0)) == (
        "hit",
        "partial",
        "miss",
        "unused",
    )
    assert compilecache.CompileCache(None).to_dict()["state"] == "off"


def test_a_save_that_fails_leaves_the_old_bundle_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle is written to a temporary file and renamed: a rename that fails (a full
    disk, a volume gone; torch's bytes stand in for a real compile's) leaves the old one."""
    import torch

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / compilecache.BUNDLE).write_bytes(b"old")
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"new", None))

    def full(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", full)
        assert compilecache.save_bundle(folder, KEY) is False
    assert sorted(p.name for p in folder.iterdir()) == [compilecache.BUNDLE]
    assert (folder / compilecache.BUNDLE).read_bytes() == b"old"
    assert compilecache.save_bundle(folder, KEY) is True
    head, body = (folder / compilecache.BUNDLE).read_bytes().split(b"\n", 1)
    assert json.loads(head.removeprefix(compilecache.MAGIC)) == KEY and body == b"new"
    assert sorted(p.name for p in folder.iterdir()) == [compilecache.BUNDLE]


def _made(tmp_path: Path) -> Path:
    cache = compilecache.open_cache(tmp_path / "cc", KEY)
    assert cache.folder is not None and cache.state != "refused"
    return cache.folder


@pytest.mark.parametrize("where", ["root", "folder", "inductor", "triton", "bundle"])
def test_a_group_or_world_writable_path_refuses_the_cache(tmp_path: Path, where: str) -> None:
    folder = _made(tmp_path)
    (folder / compilecache.BUNDLE).write_bytes(b"x")
    target = {
        "root": tmp_path / "cc",
        "folder": folder,
        "inductor": folder / "inductor",
        "triton": folder / "triton",
        "bundle": folder / compilecache.BUNDLE,
    }[where]
    target.chmod(0o777 if target.is_dir() else 0o666)
    cache = compilecache.open_cache(tmp_path / "cc", KEY)
    assert cache.folder is None and cache.state == "refused"
    assert str(target) in cache.note and "write bit" in cache.note
    assert cache.to_dict()["state"] == "refused"


def test_a_symlinked_bundle_refuses_the_cache(tmp_path: Path) -> None:
    folder = _made(tmp_path)
    (tmp_path / "elsewhere").write_bytes(b"x")
    (folder / compilecache.BUNDLE).symlink_to(tmp_path / "elsewhere")
    cache = compilecache.open_cache(tmp_path / "cc", KEY)
    assert cache.state == "refused" and "symlink" in cache.note


def test_another_owner_refuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _made(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    cache = compilecache.open_cache(tmp_path / "cc", KEY)
    assert cache.state == "refused" and f"uid {os.getuid() + 4242}" in cache.note


def test_folders_are_made_0700(tmp_path: Path) -> None:
    folder = _made(tmp_path)
    for path in (folder, folder.parent, folder / "inductor", folder / "triton"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_a_read_only_key_folder_turns_the_cache_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root can write anywhere, so the read-only volume is os.access saying no."""
    folder = _made(tmp_path)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == folder else real(p, m))
    cache = compilecache.open_cache(tmp_path / "cc", KEY)
    assert cache.state == "off" and "not writable" in cache.note
