"""Input images as both sides see them: a local file the producer reads, and the stored,
content-addressed object (inputs/<sha256>.<ext>) the worker reads back by its URI.

One table (the content type of each stored input format) and the few steps both sides share,
so the producer's `store_input`, bulk submission and the worker's fetch cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

from svdq.shared.constants import INPUT_PREFIX
from svdq.shared.errors import InvalidJobError
from svdq.shared.images import ALLOWED_FORMATS
from svdq.shared.settings import Settings
from svdq.shared.storage import ObjectNotFoundError, ObjectStore

# The extension of a stored input (the values of shared.images.ALLOWED_FORMATS) -> the
# content type it is stored with.
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tif": "image/tiff",
}

# inputs/<sha256>.<ext>: already content-addressed, so the name gives the hash and nothing
# needs reading to know the job's id (the worker checks the image itself before it runs).
_ADDRESSED = re.compile(
    rf"^{re.escape(INPUT_PREFIX)}([0-9a-f]{{64}})\."
    rf"({'|'.join(map(re.escape, sorted(set(ALLOWED_FORMATS.values()))))})$"
)


def content_type(key: str) -> str:
    """The content type of the stored input at `key` (by its extension)."""
    ext = key.rsplit(".", 1)[-1]
    try:
        return CONTENT_TYPES[ext]
    except KeyError:
        raise InvalidJobError(
            f"input key {key!r} has extension {ext!r}: allowed are " + ", ".join(CONTENT_TYPES),
            field="image",
        ) from None


def addressed_sha256(key: str | None) -> str | None:
    """The sha256 a content-addressed input key (inputs/<sha256>.<ext>) names, else None."""
    match = _ADDRESSED.match(key or "")
    return match.group(1) if match else None


def read_local(path: str, settings: Settings) -> bytes:
    """Read a local image file, refusing oversized files before reading them."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidJobError(f"image={path!r}: no such file", field="image")
    size = p.stat().st_size
    if size > settings.max_input_bytes:
        raise InvalidJobError(
            f"image={path!r} is {size:,} bytes: allowed up to {settings.max_input_bytes:,} "
            "(SVDQ_MAX_INPUT_BYTES)",
            field="image",
        )
    return p.read_bytes()


def read_stored(store: ObjectStore, uri: str, outside: str) -> bytes:
    """The bytes of the stored object `uri` names. InvalidJobError (field `image`) when it
    names something outside `store` (`outside` says, for the message, where inputs may come
    from and what to do) or nothing at all."""
    key = store.key_from_uri(uri)
    if key is None:
        raise InvalidJobError(f"image={uri!r} is outside {outside}", field="image")
    try:
        return store.get_bytes(key)
    except ObjectNotFoundError:
        raise InvalidJobError(f"image={uri!r} does not exist in the store", "image") from None
