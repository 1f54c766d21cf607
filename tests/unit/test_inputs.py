"""shared.inputs: the one table of stored input types and the steps producer and worker share."""

from __future__ import annotations

from pathlib import Path

import pytest

from svdq.shared.errors import InvalidJobError
from svdq.shared.images import ALLOWED_FORMATS
from svdq.shared.inputs import (
    CONTENT_TYPES,
    addressed_sha256,
    content_type,
    read_local,
    read_stored,
)
from svdq.shared.settings import Settings
from svdq.shared.storage import LocalStore

SHA = "ab" * 32


def test_every_accepted_format_has_a_content_type() -> None:
    assert set(CONTENT_TYPES) == set(ALLOWED_FORMATS.values())
    assert content_type(f"inputs/{SHA}.jpg") == "image/jpeg"
    assert content_type(f"inputs/{SHA}.tif") == "image/tiff"
    with pytest.raises(InvalidJobError, match=r"'pcx'.*png, jpg, webp, gif, bmp, tif"):
        content_type(f"inputs/{SHA}.pcx")


@pytest.mark.parametrize(
    ("key", "sha"),
    [
        (f"inputs/{SHA}.png", SHA),
        (f"inputs/{SHA}.webp", SHA),
        (f"inputs/{SHA}.gif", SHA),
        (f"inputs/{SHA}.tiff", None),  # stored as .tif
        (f"inputs/{SHA}.pcx", None),  # not a format svdq stores
        (f"inputs/{SHA[:-1]}.png", None),  # not a whole sha256
        (f"other/{SHA}.png", None),
        (f"inputs/{SHA.upper()}.png", None),
        (None, None),
    ],
)
def test_addressed_sha256(key: str | None, sha: str | None) -> None:
    assert addressed_sha256(key) == sha


def test_read_stored_refuses_outside_and_missing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("inputs/a.png", b"bytes", "image/png")
    assert read_stored(store, store.uri("inputs/a.png"), "here") == b"bytes"
    with pytest.raises(InvalidJobError, match="is outside this store; do X") as outside:
        read_stored(store, "s3://elsewhere/inputs/a.png", "this store; do X")
    assert outside.value.field == "image"
    with pytest.raises(InvalidJobError, match="does not exist in the store") as missing:
        read_stored(store, store.uri("inputs/b.png"), "here")
    assert missing.value.field == "image"


def test_read_local_refuses_missing_and_oversized_files(tmp_path: Path) -> None:
    settings = Settings.from_env({"SVDQ_MAX_INPUT_BYTES": "4"})
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    small.write_bytes(b"1234")
    big.write_bytes(b"12345")
    assert read_local(str(small), settings) == b"1234"
    with pytest.raises(InvalidJobError, match="no such file"):
        read_local(str(tmp_path / "none.png"), settings)
    with pytest.raises(InvalidJobError, match="5 bytes: allowed up to 4"):
        read_local(str(big), settings)
