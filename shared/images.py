"""Image checks and fitting, shared by the producer (before upload) and the worker (again).

Everything that decodes user bytes goes through `open_image`, which keeps Pillow's
decompression-bomb guard on and turns its warning into an error.

GIF, BMP and TIFF are what people have besides PNG, JPEG and WebP. The same limits hold for
all: the bytes (SVDQ_MAX_INPUT_BYTES), the pixels of the image as its header declares it
(SVDQ_MAX_INPUT_PIXELS, before anything is decoded; a GIF's logical screen, a TIFF's first
page) and Pillow's bomb guard. Only the first frame is decoded: an animated GIF or WebP and a
multi-page TIFF are animated from their first frame (page).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from svdq.shared.errors import InvalidJobError

# Pillow format name -> file extension used in inputs/<sha256>.<ext>.
ALLOWED_FORMATS = {
    "PNG": "png",
    "JPEG": "jpg",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
}
# For messages: "PNG, JPEG, WebP, GIF, BMP or TIFF".
FORMATS_TEXT = "PNG, JPEG, WebP, GIF, BMP or TIFF"
MIN_SIDE = 64
MAX_ASPECT = 8.0


@dataclass(frozen=True)
class ImageInfo:
    """What a check learned about an input image."""

    format: str
    ext: str
    width: int
    height: int
    frames: int


def open_image(
    data: bytes, *, max_bytes: int, max_pixels: int, source: str = "image"
) -> Image.Image:
    """Decode `data` fully, refusing what is too large, not an allowed format or broken."""
    if not data:
        raise InvalidJobError(f"{source} is empty (0 bytes)", field="image")
    if len(data) > max_bytes:
        raise InvalidJobError(
            f"{source} is {len(data):,} bytes: allowed up to {max_bytes:,} (SVDQ_MAX_INPUT_BYTES)",
            field="image",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise InvalidJobError(
                    f"{source} is {image.width}×{image.height} = {pixels:,} pixels: allowed up "
                    f"to {max_pixels:,} (SVDQ_MAX_INPUT_PIXELS)",
                    field="image",
                )
            image.load()
    except InvalidJobError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidJobError(f"{source} refused as a decompression bomb: {exc}", "image") from exc
    except Image.UnidentifiedImageError:
        raise InvalidJobError(f"{source} is not a {FORMATS_TEXT} image", field="image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidJobError(
            f"{source} could not be decoded (truncated or corrupt): {exc}", field="image"
        ) from exc
    return image


def check_image(
    data: bytes, *, max_bytes: int, max_pixels: int, source: str = "image"
) -> ImageInfo:
    """Check `data` is an image svdq can use; return its format and size."""
    image = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, source=source)
    fmt = str(image.format)
    # EXIF orientation swaps the sides a person sees, so check the bounds on those.
    width, height = _oriented_size(image)
    if min(width, height) < MIN_SIDE:
        raise InvalidJobError(
            f"{source} is {width}×{height}: each side must be at least {MIN_SIDE} pixels",
            field="image",
        )
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise InvalidJobError(
            f"{source} is {width}×{height} (aspect {aspect:.1f}:1): allowed up to "
            f"{MAX_ASPECT:.0f}:1",
            field="image",
        )
    return ImageInfo(fmt, ALLOWED_FORMATS[fmt], width, height, getattr(image, "n_frames", 1))


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    orientation = image.getexif().get(0x0112, 1)
    return (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size


def to_rgb(image: Image.Image) -> Image.Image:
    """First frame, EXIF orientation applied, as 8-bit RGB (alpha composited on white)."""
    try:
        return _to_rgb(image)
    except (OSError, ValueError) as exc:  # a mode Pillow cannot convert: the input's fault
        raise InvalidJobError(
            f"image in mode {image.mode!r} cannot be converted to RGB: {exc}", field="image"
        ) from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    image.seek(0)  # animated inputs and multi-page TIFFs: the first frame is the still
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF in either byte order)
        image = image.convert("I")  # point() has no I;16B: TIFF's big-endian 16 bit
    if image.mode == "I":
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        base = Image.new("RGB", image.size, (255, 255, 255))
        base.paste(image.convert("RGBA"), mask=image.convert("RGBA").split()[-1])
        return base
    return image.convert("RGB")


def crop_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """The centred box of the source with the target's aspect ratio (left, top, right, bottom)."""
    if src_w * dst_h > dst_w * src_h:  # source is wider than the target
        new_w = round(src_h * dst_w / dst_h)
        left = (src_w - new_w) // 2
        return left, 0, left + new_w, src_h
    new_h = round(src_w * dst_h / dst_w)
    top = (src_h - new_h) // 2
    return 0, top, src_w, top + new_h


def pad_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """Where the whole source lands, scaled to fit, inside the target (left, top, right, bottom)."""
    scale = min(dst_w / src_w, dst_h / src_h)
    w, h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    left, top = (dst_w - w) // 2, (dst_h - h) // 2
    return left, top, left + w, top + h


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Fit an RGB image to width×height by `mode` (crop, pad or stretch)."""
    resample = Image.Resampling.LANCZOS
    if mode == "stretch":
        return image.resize((width, height), resample)
    if mode == "crop":
        return image.crop(crop_box(image.width, image.height, width, height)).resize(
            (width, height), resample
        )
    if mode == "pad":
        left, top, right, bottom = pad_box(image.width, image.height, width, height)
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        canvas.paste(image.resize((right - left, bottom - top), resample), (left, top))
        return canvas
    raise InvalidJobError(f"resize={mode!r} is not allowed: one of crop, pad, stretch", "resize")
