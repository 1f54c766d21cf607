"""producer.inputs.put_input against both stores: an object at an input's content address is
kept only when its recorded checksum and size match the bytes (issue 10, defect 4)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from svdq.producer.inputs import put_input
from svdq.shared.constants import input_key
from svdq.shared.storage import LocalStore, ObjectStore

pytestmark = pytest.mark.integration

DATA = b"\x89PNG the right bytes"
KEY = input_key(hashlib.sha256(DATA).hexdigest(), "png")


@pytest.fixture(params=["s3", "local"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path)
    store = request.getfixturevalue("store")
    store.delete(KEY)
    return store  # type: ignore[no-any-return]


def test_new_then_same_bytes(any_store: ObjectStore) -> None:
    assert put_input(any_store, KEY, DATA) is False  # uploaded
    assert put_input(any_store, KEY, DATA) is True  # there already, checksum matches
    assert any_store.get_bytes(KEY) == DATA


def test_other_bytes_at_the_address_are_replaced(any_store: ObjectStore) -> None:
    any_store.put_bytes(KEY, b"\x89PNG other bytes, same length", "image/png")
    assert put_input(any_store, KEY, DATA) is False
    assert any_store.get_bytes(KEY) == DATA
    info = any_store.head(KEY)
    assert info is not None and info.sha256 == hashlib.sha256(DATA).hexdigest()


def test_an_object_without_a_recorded_checksum_is_replaced(store) -> None:  # type: ignore[no-untyped-def]
    # Written by another tool: no sha256 metadata, so nothing vouches for its bytes.
    store.client.put_object(Bucket=store.bucket, Key=KEY, Body=DATA, ContentType="image/png")
    assert store.head(KEY).sha256 is None
    assert put_input(store, KEY, DATA) is False
    assert store.head(KEY).sha256 == hashlib.sha256(DATA).hexdigest()
