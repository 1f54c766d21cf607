"""Turning what a user names as `image` into an object in the store, checked first.

`resolve_input` reads and checks the image (a local file, an object already in the store, or
an https:// URL where those are allowed); `store_input` (Client.prepare) also uploads it, with
`put_input`, which replaces an object at the content address whose checksum does not match.
Bulk submission resolves rows with the same functions and uploads in its own threads.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from svdq.shared.constants import input_key
from svdq.shared.errors import InvalidJobError
from svdq.shared.images import ImageInfo, check_image
from svdq.shared.inputs import content_type, read_local, read_stored
from svdq.shared.net import fetch_https
from svdq.shared.settings import Settings
from svdq.shared.storage import ObjectStore

log = logging.getLogger(__name__)

URLS_OFF = (
    "URL inputs are not enabled here (SVDQ_ALLOW_URLS=1 turns https:// on); download the "
    "image and submit the file"
)


@dataclass(frozen=True)
class InputImage:
    """An input image read and checked, not yet stored."""

    data: bytes
    sha256: str
    info: ImageInfo

    @property
    def key(self) -> str:
        """Where it is stored: inputs/<sha256>.<ext>, the extension from its content."""
        return input_key(self.sha256, self.info.ext)


@dataclass(frozen=True)
class StoredInput:
    """An input image, checked and in the store."""

    uri: str
    sha256: str
    info: ImageInfo
    uploaded: bool


def resolve_input(
    image: str, store: ObjectStore, settings: Settings, url_refusal: str | None = None
) -> InputImage:
    """Read and check the image `image` names: a local path (or file:// URI), an s3:// object
    in this store, or an https:// URL. URLs are fetched when `url_refusal` is None; otherwise
    they are refused with it as the reason."""
    lowered = image.lower()
    if lowered.startswith(("https://", "http://")):
        if url_refusal is not None:
            raise InvalidJobError(f"image={image[:80]!r}: {url_refusal}", field="image")
        # Fetched here, through every check in shared.net, then stored like a local file:
        # workers only ever read the store, never a user's URL.
        data = fetch_https(image, max_bytes=settings.max_input_bytes, timeout=settings.url_timeout)
    elif lowered.startswith("s3://"):
        outside = (
            f"the configured bucket ({_bucket(settings)}); only objects in SVDQ_S3_BUCKET "
            "are accepted"
        )
        data = read_stored(store, image, outside)
    else:
        data = read_local(image.removeprefix("file://"), settings)
    info = check_image(
        data,
        max_bytes=settings.max_input_bytes,
        max_pixels=settings.max_input_pixels,
        source=f"image={image!r}",
    )
    return InputImage(data, hashlib.sha256(data).hexdigest(), info)


def store_input(image: str, store: ObjectStore, settings: Settings) -> StoredInput:
    """Check the image and make sure it is in the store under inputs/<sha256>.<ext>."""
    found = resolve_input(image, store, settings, None if settings.allow_urls else URLS_OFF)
    existed = put_input(store, found.key, found.data)
    return StoredInput(store.uri(found.key), found.sha256, found.info, uploaded=not existed)


def put_input(store: ObjectStore, key: str, data: bytes) -> bool:
    """Store `data` at its content address `key` (inputs/<sha256>.<ext>); return whether the
    same bytes were there already.

    An object already at the key is trusted only if its recorded sha256 (the metadata every
    svdq write sets; ObjectStore.head, no download) and its size match `data`. Anything else
    there (overwritten by hand, written by another tool without the metadata) is replaced:
    otherwise every later job naming this key would run on whatever is there, or fail in the
    worker's hash check for good.
    """
    if not store.put_if_absent(key, data, content_type(key)):
        return False
    sha = hashlib.sha256(data).hexdigest()
    found = store.head(key)
    if found is not None and found.sha256 == sha and found.size == len(data):
        return True
    log.warning(
        "input %s held other bytes (sha256 %s, %s bytes; expected %s, %d bytes): uploaded again",
        key,
        found.sha256 if found else "-",
        found.size if found else "-",
        sha,
        len(data),
    )
    store.put_bytes(key, data, content_type(key))
    return False


def _bucket(settings: Settings) -> str:
    """The one bucket s3:// inputs may come from, for messages."""
    if settings.store != "s3":
        return "none: SVDQ_STORE=local takes local files only"
    return f"s3://{settings.s3_bucket}/"
