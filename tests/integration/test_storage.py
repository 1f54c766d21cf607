"""The ObjectStore interface, the same tests against both backends: S3 through a real
S3-compatible server (moto, server mode) and the local folder store."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from svdq.shared.storage import LocalStore, ObjectNotFoundError, ObjectStore, S3Store
from svdq.shared.storage.base import ObjectInfo
from tests.conftest import TEST_BUCKET


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "s3":
        return S3Store(TEST_BUCKET, request.getfixturevalue("s3_endpoint"))
    return LocalStore(tmp_path / "store")


@pytest.fixture
def prefix() -> str:
    """A folder of its own per test: the S3 bucket is shared by the whole session."""
    return f"storage-test/{uuid.uuid4().hex}/"


def test_put_get_exists_and_missing(store: ObjectStore, prefix: str) -> None:
    key = prefix + "a.bin"
    assert not store.exists(key)
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes(key)
    store.put_bytes(key, b"one", "application/octet-stream")
    store.put_bytes(key, b"two", "application/octet-stream")  # replaces
    assert store.exists(key) and store.get_bytes(key) == b"two"
    assert store.key_from_uri(store.uri(key)) == key


def test_the_store_itself_has_a_uri(store: ObjectStore) -> None:
    # The worker names it in every input error (worker/jobs.py fetch_input builds that text
    # for each job): the local store raised "key '' leaves the store folder", failing them all.
    root = store.uri("")
    assert root.endswith("/") and store.key_from_uri(root + "inputs/a.png") == "inputs/a.png"


def test_put_if_absent_writes_once(store: ObjectStore, prefix: str) -> None:
    key = prefix + "inputs/x.png"
    assert store.put_if_absent(key, b"first", "image/png") is False
    assert store.put_if_absent(key, b"second", "image/png") is True  # was there: untouched
    assert store.get_bytes(key) == b"first"


def test_head_gives_size_and_sha256(store: ObjectStore, prefix: str) -> None:
    key = prefix + "clip.mp4"
    assert store.head(key) is None
    store.put_bytes(key, b"frames" * 100, "video/mp4")
    sha = hashlib.sha256(b"frames" * 100).hexdigest()
    assert store.head(key) == ObjectInfo(key, 600, sha)
    store.put_if_absent(prefix + "other", b"x", "application/octet-stream")
    assert store.head(prefix + "other") == ObjectInfo(
        prefix + "other", 1, hashlib.sha256(b"x").hexdigest()
    )


def test_delete_and_deleting_what_is_absent(store: ObjectStore, prefix: str) -> None:
    key = prefix + "results/j1/result.json"
    store.put_bytes(key, b"{}", "application/json")
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # no error
    store.delete(prefix + "never/was")


def test_list_prefix_in_key_order(store: ObjectStore, prefix: str) -> None:
    keys = [
        prefix + "results/b/result.json",
        prefix + "results/a/clip.mp4",
        prefix + "results/a/result.json",
        prefix + "results-other/z",
        prefix + "inputs/i.png",
    ]
    for key in keys:
        store.put_bytes(key, b"x", "application/octet-stream")
    assert list(store.list_prefix(prefix + "results/")) == sorted(keys[:3])
    assert list(store.list_prefix(prefix + "results")) == sorted(keys[:4])
    assert list(store.list_prefix(prefix)) == sorted(keys)
    assert list(store.list_prefix(prefix + "nothing/")) == []


def test_list_prefix_pages_through_more_than_one_request(s3_endpoint: str, prefix: str) -> None:
    """S3 answers 1 000 keys a request; the listing follows the continuation token."""
    store = S3Store(TEST_BUCKET, s3_endpoint)
    keys = [f"{prefix}k{i:04d}" for i in range(1005)]
    for key in keys:
        store.client.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"")
    listed: Iterator[str] = store.list_prefix(prefix)
    assert list(listed) == keys


def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a/b", b"1", "x")
    store.put_if_absent("a/b", b"2", "x")
    store.put_if_absent("a/c", b"3", "x")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b", "c"]
    assert list(store.list_prefix("a/")) == ["a/b", "a/c"]


def test_local_put_if_absent_fails_when_a_folder_holds_the_name(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "inputs" / "x.png").mkdir(parents=True)
    with pytest.raises(OSError):
        store.put_if_absent("inputs/x.png", b"1", "image/png")
    assert not list((tmp_path / "inputs").glob(".tmp-*"))
