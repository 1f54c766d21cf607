"""Turning what a user names as `image` into an object in the store, checked first.

`resolve_input` reads and checks the image (a local file, an object already in the store, or
an https:// URL where those are allowed); `store_input` (Client.prepare) also uploads it.
Bulk submission resolves rows with the same function and uploads in its own threads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from svdq.shared.constants import input_key
from svdq.shared.errors import InvalidJobError
from svdq.shared.images import ImageInfo, check_image
from svdq.shared.inputs import content_type, read_local, read_stored
from svdq.shared.net import fetch_https
from svdq.shared.settings import Settings
from svdq.shared.storage import ObjectStore

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
    existed = store.put_if_absent(found.key, found.data, content_type(found.key))
    return StoredInput(store.uri(found.key), found.sha256, found.info, uploaded=not existed)


def _bucket(settings: Settings) -> str:
    """The one bucket s3:// inputs may come from, for messages."""
    if settings.store != "s3":
        return "none: SVDQ_STORE=local takes local files only"
    return f"s3://{settings.s3_bucket}/"
