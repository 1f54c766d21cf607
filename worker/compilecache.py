"""SVDQ_COMPILE_CACHE: torch.compile's caches on a path that outlives the worker process, so a
restarted compiled worker warms up in seconds instead of compiling its UNet again (minutes).

What torch keeps, and where (torch 2.13):
- inductor's on-disk caches live under one folder, torch/_inductor/runtime/cache_dir_utils.py:
      cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
      if cache_dir is None:
          cache_dir = default_cache_dir()      # /tmp/torchinductor_<user>: gone with the
                                               # container
  the FX graph cache (torch/_inductor/config.py `fx_graph_cache ... default=True`: each
  compiled graph's code and its built kernels), the AOT autograd cache
  (torch/_functorch/config.py `enable_autograd_cache ... default=True`) and the autotune cache
  (`autotune_local_cache: bool = True`) all sit in it;
- Triton's kernels go to TRITON_CACHE_DIR, which inductor sets only once per process
  (torch/_inductor/runtime/triton_heuristics.py: `if os.getenv("TRITON_CACHE_DIR") is None:
  os.environ["TRITON_CACHE_DIR"] = triton_cache_dir(...)`), so a variant switch would keep the
  first folder: we set it ourselves each time;
- `torch.compiler.save_cache_artifacts()` serialises every artifact this process compiled or
  took from a cache ("Serializes all the cache artifacts that were created during the
  compilation") and `load_cache_artifacts(bytes)` writes them into the caches above
  (`CacheArtifactManager.populate_caches`): one portable file, the bundle, that can be copied
  to another host of the same kind or survive the folder being pruned.

The layout: <SVDQ_COMPILE_CACHE>/torch-<version>/<device>/<variant>-<dtype>/ holds inductor's
folder (TORCHINDUCTOR_CACHE_DIR), triton/ and bundle.bin. A cache written by another torch
version is in another folder and never read; a bundle whose header names another torch,
device, variant or dtype (copied by hand) is ignored, and so is an unreadable one: each is
logged and the worker compiles as if there were no cache. A cache never fails a start.

Whether it helped is read from dynamo's counters around the warm-up (torch/_inductor/
codecache.py: `counters["inductor"]["fxgraph_cache_hit"] += 1` on a hit, `...["fxgraph_cache_
miss"] += 1` when it compiles), one per compiled graph, i.e. per warmed shape.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svdq.shared.errors import ConfigError

log = logging.getLogger(__name__)

BUNDLE = "bundle.bin"
MAGIC = b"svdq-compile-cache/1 "  # then one line of JSON (the key), then torch's bytes
HITS, MISSES = ("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss")


def check_root(root: Path) -> Path:
    """SVDQ_COMPILE_CACHE made (when missing) and writable, or ConfigError saying why."""
    try:
        if not root.exists():
            root.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(
            f"SVDQ_COMPILE_CACHE={str(root)!r} is not allowed: cannot make that directory "
            f"({exc.strerror}); allowed: a writable directory (a volume), or unset for no cache"
        ) from None
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        what = "not a directory" if not root.is_dir() else "not writable by this user"
        raise ConfigError(
            f"SVDQ_COMPILE_CACHE={str(root)!r} is not allowed: it is {what}; allowed: a "
            "writable directory (a volume), or unset for no cache"
        )
    return root


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", text.strip()).strip("-").lower() or "unknown"


def cache_key(torch_version: str, device: str, variant: str, dtype: str) -> dict[str, str]:
    """What a cache folder is for: its contents serve only this combination."""
    return {"torch": torch_version, "device": device, "variant": variant, "dtype": dtype}


def cache_folder(root: Path, key: dict[str, str]) -> Path:
    """<root>/torch-<version>/<device>/<variant>-<dtype>: one folder per key."""
    return (
        root
        / f"torch-{_slug(key['torch'])}"
        / _slug(key["device"])
        / f"{_slug(key['variant'])}-{_slug(key['dtype'])}"
    )


def device_tag(device: str) -> str:
    """The card's name and compute capability ("nvidia-h200-sm90"), or the CPU's architecture:
    kernels built for one are not for another."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()}-sm{major}{minor}"
    return f"cpu-{platform.machine() or 'unknown'}"


def _counter(name: tuple[str, str]) -> int:
    from torch._dynamo.utils import counters

    return int(counters[name[0]][name[1]])


@dataclass
class CompileCache:
    """One load's use of SVDQ_COMPILE_CACHE: `open_cache` before the warm-up, `finish` after."""

    folder: Path | None  # None: SVDQ_COMPILE_CACHE unset, or the folder could not be made
    key: dict[str, str] = field(default_factory=dict)
    loaded: int = 0  # artifacts loaded from the bundle
    note: str = ""  # why the bundle was not used ("" when it was, or there was none)
    hits: int = 0  # graphs the warm-up took from the cache
    misses: int = 0  # graphs the warm-up compiled
    saved: bool = False  # the bundle was written after this warm-up
    _before: tuple[int, int] = (0, 0)

    @property
    def state(self) -> str:
        """off | hit (nothing compiled) | partial | miss (everything compiled) | unused (no
        inductor graph: another backend)."""
        if self.folder is None:
            return "off"
        if self.hits and not self.misses:
            return "hit"
        if self.hits:
            return "partial"
        return "miss" if self.misses else "unused"

    def to_dict(self) -> dict[str, Any]:
        """For metrics, heartbeats and benchmark JSON."""
        return {
            "state": self.state,
            "folder": str(self.folder) if self.folder else "",
            "hits": self.hits,
            "misses": self.misses,
            "loaded": self.loaded,
            "saved": self.saved,
            "note": self.note,
        }

    def finish(self) -> None:
        """After the warm-up: count what it took from the cache and what it compiled, and
        write the bundle when anything new was compiled (or there was no usable bundle)."""
        if self.folder is None:
            return
        # max(0, ...): a test may have cleared the counters in between.
        self.hits = max(0, _counter(HITS) - self._before[0])
        self.misses = max(0, _counter(MISSES) - self._before[1])
        if self.misses or (self.hits and not self.loaded):
            self.saved = save_bundle(self.folder, self.key)
        log.info(
            "compile cache %s: %s (%d graphs from the cache, %d compiled%s)",
            self.folder,
            self.state,
            self.hits,
            self.misses,
            ", bundle saved" if self.saved else "",
        )


def open_cache(root: Path | None, key: dict[str, str]) -> CompileCache:
    """Point torch's caches at `key`'s folder under `root` and load its bundle; before the
    warm-up. `root` None: no cache, torch's defaults stay."""
    if root is None:
        return CompileCache(None)
    folder = cache_folder(root, key)
    try:
        (folder / "inductor").mkdir(parents=True, exist_ok=True)
        (folder / "triton").mkdir(exist_ok=True)
    except OSError as exc:  # the volume went away or filled up since the launcher checked
        log.error("compile cache off for this load: cannot use %s: %s", folder, exc)
        return CompileCache(None, key, note=f"cannot use {folder}: {exc}")
    _point_torch_at(folder)
    cache = CompileCache(folder, key)
    cache.loaded, cache.note = load_bundle(folder, key)
    cache._before = (_counter(HITS), _counter(MISSES))
    return cache


def _point_torch_at(folder: Path) -> None:
    """TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR to `folder`, and torch's memoised paths
    forgotten. torch's own `temporary_cache_dir` (cache_dir_utils.py) does the same: it sets
    TORCHINDUCTOR_CACHE_DIR and calls `clear_caches()` ("Clear all registered caches"). The
    artifacts recorded so far (an earlier variant's, before a switch) are dropped too, or the
    next bundle would carry them: `CacheArtifactManager` keeps `_seen_artifacts` and its
    serializer across serialize() calls ("This list will not be cleared between serialize()
    calls"); `clear()` empties both."""
    from torch._inductor.utils import clear_caches
    from torch.compiler._cache import CacheArtifactManager

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    clear_caches()
    CacheArtifactManager.clear()


def load_bundle(folder: Path, key: dict[str, str]) -> tuple[int, str]:
    """Load `folder`'s bundle into torch's caches: (artifacts loaded, why not when 0). Never
    raises: a missing, foreign or damaged bundle only means compiling."""
    path = folder / BUNDLE
    if not path.is_file():
        return 0, ""
    try:
        data = path.read_bytes()
        if not data.startswith(MAGIC) or b"\n" not in data:
            raise ValueError("not an svdq compile-cache bundle")
        head, body = data[len(MAGIC) :].split(b"\n", 1)
        written = json.loads(head)
        if written != key:
            note = f"{path} was written for {written}, this load is {key}: ignored"
            log.warning("compile cache: %s", note)
            return 0, note
        import torch

        # torch/compiler/_cache.py `deserialize` logs "Failed to un-pickle cache artifacts"
        # and returns None for bytes it cannot read: load_cache_artifacts then returns None.
        info = torch.compiler.load_cache_artifacts(body)
        if info is None:
            raise ValueError("torch could not read its artifacts")
        return sum(len(v) for v in info.artifacts.values()), ""
    except Exception as exc:
        note = f"{path} is unreadable ({type(exc).__name__}: {exc}): compiling without it"
        log.warning("compile cache: %s", note)
        return 0, note


def save_bundle(folder: Path, key: dict[str, str]) -> bool:
    """Write every artifact this process compiled or loaded as `folder`'s bundle: a temporary
    file, then a rename (atomic: a reader sees the old bundle or the new, never half). Never
    raises: a full disk costs the next start its speed, not this one its model."""
    try:
        import torch

        saved = torch.compiler.save_cache_artifacts()  # None: nothing compiled
        if saved is None:
            return False
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{BUNDLE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(MAGIC + json.dumps(key, sort_keys=True).encode() + b"\n")
                out.write(saved[0])
            os.replace(tmp, folder / BUNDLE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True
    except Exception as exc:
        log.warning("compile cache: could not save %s: %s", folder / BUNDLE, exc)
        return False
