"""Adversary tests for SVDQ_COMPILE_CACHE (worker/compilecache.py): what a bundle written by a
hostile writer of the shared volume can do when a worker loads it.

The bundle is torch's own format behind svdq's header. Loading it is not a read: torch
writes every artifact into its caches and unpickles the inductor ones on the spot
(torch/compiler/_cache.py, CacheArtifactManager.populate_caches -> artifact.populate_cache();
torch/_inductor/codecache.py, InductorCacheArtifact.populate_cache:

        FxGraphCache._write_to_local_cache(self.key, self.content)
        FxGraphCache._emit_triton_bundle(self.content)

and `_emit_triton_bundle` does `graph = pickle.loads(content)` whenever
TritonBundler.is_enabled(), which is the default outside fbcode:
torch/_inductor/config.py `bundle_triton_into_fx_graph_cache_default ... True if not
is_fbcode()`). `_write_to_local_cache` writes to `os.path.join(<cache>/fxgraph, key[1:3], key)`
joined with a hash: an absolute key is a path anywhere the worker can write.

So whoever can write the shared compile-cache volume runs code in every worker that loads
it. worker/compilecache.py checks only the header's key (torch, device, variant, dtype), which
the writer copies from any honest bundle."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from svdq.worker import compilecache

KEY = compilecache.cache_key("2.13.0+cu128", "NVIDIA H200-sm90", "svd-xt", "float16")


@pytest.fixture(autouse=True)
def _torch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


class _Payload:
    """A pickle that makes a directory when it is loaded: proof that loading ran our code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


def hostile_bundle(folder: Path, artifacts: list[tuple[str, str, bytes]]) -> None:
    """A bundle.bin with svdq's honest header (the key is no secret) around torch's format
    carrying `artifacts` (type, key, content), as torch's save_cache_artifacts lays it out."""
    from torch.compiler._cache import (
        CacheArtifactFactory,
        CacheArtifactManager,
        _serialize_single_cache,
    )
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    CacheArtifactManager._ensure_cache_artifacts_registered()
    by_type: dict[str, list[object]] = {}
    for kind, key, content in artifacts:
        by_type.setdefault(kind, []).append(CacheArtifactFactory.create(kind, key, content))
    writer = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    writer.extend(by_type.items())  # type: ignore[arg-type]
    head = compilecache.MAGIC + json.dumps(KEY, sort_keys=True).encode() + b"\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / compilecache.BUNDLE).write_bytes(head + writer.to_bytes())


@pytest.mark.xfail(
    strict=True,
    reason="adversary: loading bundle.bin unpickles its inductor artifacts "
    "(FxGraphCache._emit_triton_bundle: pickle.loads): a writer of the shared volume runs code. "
    "open_cache now refuses a volume another uid can write (compilecache.untrusted), but a "
    "bundle written as the worker's own uid (as here) is indistinguishable from an honest one",
)
def test_a_hostile_bundle_runs_no_code_in_the_worker(tmp_path: Path) -> None:
    folder = compilecache.cache_folder(tmp_path / "cc", KEY)
    marker = tmp_path / "pwned"
    hostile_bundle(folder, [("inductor", "fabcdef0123", pickle.dumps(_Payload(marker)))])
    cache = compilecache.open_cache(tmp_path / "cc", KEY)
    assert cache.folder == folder  # the bundle was found and handed to torch
    assert not marker.exists(), "loading the bundle ran the writer's pickle"


def test_a_hostile_bundle_writes_nothing_outside_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "cc"
    outside = tmp_path / "elsewhere" / "planted"
    hostile_bundle(
        compilecache.cache_folder(root, KEY),
        [("inductor", str(outside), b"not a pickle"), ("autotune", "../../../../x", b"{}")],
    )
    compilecache.open_cache(root, KEY)
    escaped = [p for p in tmp_path.rglob("*") if not p.is_relative_to(root)]
    assert escaped == [], f"the bundle wrote outside the cache: {escaped}"


def test_a_garbage_body_behind_a_valid_header_only_costs_a_compile(tmp_path: Path) -> None:
    """Attack that failed: a valid header with a body torch cannot read never fails the
    load (the note says unreadable). The key check is the only check before torch reads."""
    folder = compilecache.cache_folder(tmp_path / "cc", KEY)
    folder.mkdir(parents=True)
    head = compilecache.MAGIC + json.dumps(KEY, sort_keys=True).encode() + b"\n"
    (folder / compilecache.BUNDLE).write_bytes(head + b"\x00" * 3)
    loaded, note = compilecache.load_bundle(folder, KEY)
    assert loaded == 0 and "unreadable" in note
