"""A folder on this machine with the same interface as S3: the single-machine mode."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from svdq.shared.storage.base import ObjectInfo, ObjectNotFoundError

_TMP = ".tmp-"  # a write in progress: never an object


class LocalStore:
    """Keys map to files under `root`; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        # Keys are built by svdq from checked parts; this is a second lock on the same door.
        if self.root not in path.parents:
            raise ValueError(f"key {key!r} leaves the store folder {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # no half-written leftovers beside the objects
            raise

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            # A hard link never replaces what is there: the file system's If-None-Match.
            os.link(tmp, path)
        except FileExistsError:
            if path.is_file():
                return True
            raise  # something else (a folder) holds the name: the object cannot be stored
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False

    def _write_temp(self, path: Path, data: bytes) -> str:
        """`data` in a temporary file beside `path` (same file system, so a rename or link
        puts it in place atomically); removed again if the write fails."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{key} not found in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                # Computed on demand: a local read is cheap, and nothing is kept beside the file.
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except (FileNotFoundError, IsADirectoryError):
            return None
        return ObjectInfo(key, size, digest)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_prefix(self, prefix: str) -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        start = self._path(folder) if folder else self.root
        if not start.is_dir():
            return
        keys = [
            key
            for path in start.rglob("*")
            if path.is_file() and not path.name.startswith(_TMP)
            if (key := path.relative_to(self.root).as_posix()).startswith(prefix)
        ]
        yield from sorted(keys)  # key order, as S3 lists them

    def uri(self, key: str) -> str:
        if not key:  # the store itself, as S3Store's "s3://bucket/" (a worker's error messages)
            return self.root.as_uri() + "/"
        return self._path(key).as_uri()

    def key_from_uri(self, uri: str) -> str | None:
        prefix = self.root.as_uri() + "/"
        return uri[len(prefix) :] if uri.startswith(prefix) else None

    def presign(self, key: str, seconds: int) -> str:
        return self.uri(key)  # a local file needs no signature: the path is the link
