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

Trust: loading is running code. torch writes every artifact of a bundle into its caches and
unpickles the inductor ones on the spot (torch/_inductor/codecache.py,
InductorCacheArtifact.populate_cache):

        FxGraphCache._write_to_local_cache(self.key, self.content)
        FxGraphCache._emit_triton_bundle(self.content)

with `graph = pickle.loads(content)` in `_emit_triton_bundle`, and a later cache hit unpickles
the FX graph / AOT autograd entries and imports their generated .py. So whoever can write the
volume runs code in every worker that uses it. `open_cache` refuses the cache (state
"refused", a log line, the start goes on compiling) unless the root, every folder down to the
key's, its inductor/ and triton/ folders and bundle.bin are owned by this process's user,
writable by nobody else (no group or other write bit) and not symlinks (lstat); it makes its
folders 0700. A read-only key folder turns the cache off the same way (state "off").
A bundle's artifact keys are joined into paths by torch (`_write_to_local_cache` joins `key`;
AutotuneCacheArtifact joins `key`): a bundle with any key that is not a plain name (a '/',
'\\' or '..') is ignored before torch sees it. Neither check makes a same-user writer safe:
the volume must be writable only by the worker's user (README, deploy/README).

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
import stat
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

    folder: Path | None  # None: SVDQ_COMPILE_CACHE unset, or the folder could not be used
    key: dict[str, str] = field(default_factory=dict)
    loaded: int = 0  # artifacts loaded from the bundle
    note: str = ""  # why the bundle was not used ("" when it was, or there was none)
    hits: int = 0  # graphs the warm-up took from the cache
    misses: int = 0  # graphs the warm-up compiled
    saved: bool = False  # the bundle was written after this warm-up
    refused: bool = False  # the folder failed the trust rule (module docstring)
    _before: tuple[int, int] = (0, 0)

    @property
    def state(self) -> str:
        """off | refused (not trusted: see the note) | hit (nothing compiled) | partial | miss
        (everything compiled) | unused (no inductor graph: another backend)."""
        if self.folder is None:
            return "refused" if self.refused else "off"
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
        below = folder.relative_to(root)
        for part in (*reversed(below.parents), below):
            (root / part).mkdir(mode=0o700, exist_ok=True)
        (folder / "inductor").mkdir(mode=0o700, exist_ok=True)
        (folder / "triton").mkdir(mode=0o700, exist_ok=True)
    except (OSError, ValueError) as exc:  # the volume went away or filled up since the check
        log.error("compile cache off for this load: cannot use %s: %s", folder, exc)
        return CompileCache(None, key, note=f"cannot use {folder}: {exc}")
    distrust = untrusted(root, folder)
    if distrust:
        note = f"{distrust}: compiling without the cache (it would run its writer's code)"
        log.error("compile cache refused for this load: %s", note)
        return CompileCache(None, key, note=note, refused=True)
    if not all(os.access(p, os.W_OK | os.X_OK) for p in _own_paths(folder)):
        note = f"{folder} is not writable by this user: compiling without the cache"
        log.error("compile cache off for this load: %s", note)
        return CompileCache(None, key, note=note)
    _point_torch_at(folder)
    cache = CompileCache(folder, key)
    cache.loaded, cache.note = load_bundle(folder, key)
    cache._before = (_counter(HITS), _counter(MISSES))
    return cache


def _own_paths(folder: Path) -> list[Path]:
    return [folder, folder / "inductor", folder / "triton"]


def untrusted(root: Path, folder: Path) -> str:
    """Why the cache under `root` for `folder` must not be used ("" when it may): a path that
    is a symlink, owned by another user, or writable by group or others (lstat: a link is
    judged as a link, never followed). The root, each folder down to the key's, inductor/,
    triton/ and bundle.bin when present."""
    paths = [root, *(root / p for p in reversed(folder.relative_to(root).parents)), folder]
    paths += [*_own_paths(folder)[1:], folder / BUNDLE]
    me = os.geteuid()
    for path in dict.fromkeys(paths):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue  # no bundle yet
        except OSError as exc:
            return f"cannot inspect {path} ({exc.strerror})"
        if stat.S_ISLNK(info.st_mode):
            return f"{path} is a symlink; allowed: a real folder or file"
        if info.st_uid != me:
            return f"{path} is owned by uid {info.st_uid}; allowed: this worker's uid {me}"
        if info.st_mode & 0o022:
            mode = oct(stat.S_IMODE(info.st_mode))
            return f"{path} has mode {mode}; allowed: no group or other write bit"
    return ""


def bad_keys(body: bytes) -> list[str]:
    """The artifact keys in torch's bundle bytes that are not plain names (a '/', '\\',
    '..', empty, or a NUL): torch joins them into paths. Read with the deserializer torch's
    own load uses (torch/compiler/_cache.py, CacheArtifactManager.deserialize:
    `AppendingByteSerializer.to_list(serialized_artifacts,
    deserialize_fn=_deserialize_single_cache)`), which only reads strings and bytes (each
    artifact: `key = reader.read_str(); content = reader.read_bytes()`): nothing is
    unpickled or written. Raises when torch could not read the bytes either."""
    from torch.compiler._cache import CacheArtifactManager, _deserialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    CacheArtifactManager._ensure_cache_artifacts_registered()
    found = AppendingByteSerializer.to_list(body, deserialize_fn=_deserialize_single_cache)
    return [
        artifact.key
        for _kind, artifacts in found
        for artifact in artifacts
        if not _plain(artifact.key)
    ]


def _plain(key: object) -> bool:
    return (
        isinstance(key, str)
        and key not in ("", ".", "..")
        and not any(c in key for c in ("/", "\\", "\0"))
        and ".." not in key
    )


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
        try:
            wrong = bad_keys(body)
        except Exception as exc:
            raise ValueError(f"torch could not read its artifacts ({exc})") from None
        if wrong:
            note = (
                f"{path} names artifacts by path ({', '.join(map(repr, wrong[:3]))}); "
                "allowed: plain names: ignored"
            )
            log.error("compile cache: %s", note)
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
