"""A folder on this machine with the same interface as S3: the single-machine mode."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from svdq.shared.storage.base import ObjectNotFoundError


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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # no half-written leftovers beside the objects
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{key} not found in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_from_uri(self, uri: str) -> str | None:
        prefix = self.root.as_uri() + "/"
        return uri[len(prefix) :] if uri.startswith(prefix) else None

    def presign(self, key: str, seconds: int) -> str:
        return self.uri(key)  # a local file needs no signature: the path is the link
