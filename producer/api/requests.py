"""What a request may name as a job, before anything is read or stored.

An API caller is not on this machine, so its `image` is never a path here: an uploaded file
(multipart), an `s3://` object in the configured bucket (not another job's output), or an
`https://` URL when SVDQ_ALLOW_URLS=1 (fetched through shared.net's checks, as the CLI does).
Anything else is refused with the field, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from svdq.producer.inputs import URLS_OFF, InputImage
from svdq.producer.manifest import csv_value, loads
from svdq.shared.constants import RESULT_PREFIX
from svdq.shared.errors import InvalidJobError
from svdq.shared.images import check_image
from svdq.shared.net import destination_allowed
from svdq.shared.settings import Settings
from svdq.shared.storage import ObjectStore

NOT_HERE = "this server never reads its own files"


def allowed_images(settings: Settings) -> str:
    """What `image` may be here, in words."""
    urls = "an https:// URL" if settings.allow_urls else "https:// URLs when SVDQ_ALLOW_URLS=1"
    return (
        f"an uploaded file (multipart field 'image'), s3://{settings.s3_bucket}/<key>, or "
        f"{urls}; {NOT_HERE}"
    )


def check_remote_image(image: Any, settings: Settings, *, urls: bool = True) -> str:
    """`image` if a caller may name it (see the module docstring), else InvalidJobError."""
    if not isinstance(image, str):
        raise InvalidJobError(
            f"image={image!r:.80} is not allowed: {allowed_images(settings)}", field="image"
        )
    lowered = image.lower()
    if lowered.startswith("s3://"):
        key = image[5:].partition("/")[2]
        if key.startswith(RESULT_PREFIX) or f"/{RESULT_PREFIX}" in key:
            raise InvalidJobError(
                f"image={image[:80]!r} is not allowed: an input, not a job's output "
                f"({RESULT_PREFIX}...)",
                field="image",
            )
        return image
    if lowered.startswith("https://") and urls:
        if not settings.allow_urls:
            raise InvalidJobError(f"image={image[:80]!r}: {URLS_OFF}", field="image")
        return image
    raise InvalidJobError(
        f"image={image[:80]!r} is not allowed: {allowed_images(settings)}", field="image"
    )


def check_callback(url: Any, networks: str) -> None:
    """InvalidJobError when an API caller's callback_url would reach where
    SVDQ_API_CALLBACK_NETWORKS (default public) does not allow: every address its host resolves
    to now must be allowed (shared.net.destination_allowed, the workers' own rule), so no token
    holder can make the workers POST into the private network. Blocking (DNS): call it in a
    thread. A URL that is not one at all is left to JobSpec's own check."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return
    parts = urlsplit(url)
    where = f"callback_url={url[:100]!r}"
    allowed = f"SVDQ_API_CALLBACK_NETWORKS={networks} allows only {_NETWORKS[networks]}"
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname or "", port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError):
        raise InvalidJobError(
            f"{where} is not allowed: its host does not resolve here; {allowed}",
            field="callback_url",
        ) from None
    for address in sorted({str(info[4][0]) for info in infos}):
        if not destination_allowed(address, networks):
            raise InvalidJobError(
                f"{where} is not allowed: it resolves to {address}; {allowed}",
                field="callback_url",
            )


_NETWORKS = {
    "public": "public addresses",
    "private": "public and private (10/8, 172.16/12, 192.168/16, fc00::/7) addresses",
    "any": "any address but link-local",
}


def job_from_json(data: Any, settings: Settings) -> dict[str, Any]:
    """A JSON job body: JobSpec fields, `image` checked above (the rest by JobSpec)."""
    if not isinstance(data, dict):
        raise InvalidJobError(f"a job must be a JSON object, got {type(data).__name__}")
    if "image" not in data:
        raise InvalidJobError(f"image is required: {allowed_images(settings)}", field="image")
    check_remote_image(data["image"], settings)
    return dict(data)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or InvalidJobError saying where it broke."""
    try:
        return loads(raw)
    except ValueError as exc:  # manifest.loads: bad JSON, too deep, a number too long
        raise InvalidJobError(f"the body is not valid JSON: {exc}", field="body") from None


async def job_from_form(
    form: FormData, store: ObjectStore, settings: Settings
) -> tuple[dict[str, Any], InputImage | None]:
    """A multipart job: JobSpec fields as form values, typed as a CSV manifest's cells are, and
    the image file checked as the CLI checks it (not stored yet: the job may still be refused;
    `image` names the content address it will have)."""
    data: dict[str, Any] = {}
    for name in dict.fromkeys(form.keys()):
        if name == "image":
            continue
        values = [v for v in form.getlist(name) if isinstance(v, str)]
        if len(values) != len(form.getlist(name)):
            raise InvalidJobError(f"{name}: a file was sent where a value belongs", field=name)
        try:
            if name == "formats" and len(values) > 1:
                data[name] = values
            else:
                data[name] = csv_value(name, values[-1])
        except ValueError as exc:
            raise InvalidJobError(str(exc), field=name) from None
    image = form.get("image")
    if isinstance(image, UploadFile):
        blob = await image.read(settings.max_input_bytes + 1)
        found = await run_in_threadpool(check_upload, blob, image.filename or "", settings)
        data["image"] = store.uri(found.key)
        return data, found
    if image is None:
        raise InvalidJobError(f"image is required: {allowed_images(settings)}", field="image")
    data["image"] = check_remote_image(image, settings)
    return data, None


def check_upload(blob: bytes, filename: str, settings: Settings) -> InputImage:
    """An uploaded image checked as the CLI checks a file (a refused one is never stored)."""
    info = check_image(
        blob,
        max_bytes=settings.max_input_bytes,
        max_pixels=settings.max_input_pixels,
        source=f"image (uploaded file {filename[:80]!r})",
    )
    return InputImage(blob, hashlib.sha256(blob).hexdigest(), info)
