"""Image checks, colour conversion and fitting, on small in-memory images."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from svdq.shared.errors import InvalidJobError
from svdq.shared.images import (
    ALLOWED_FORMATS,
    MAX_ASPECT,
    MIN_SIDE,
    ImageInfo,
    check_image,
    crop_box,
    fit,
    open_image,
    pad_box,
    to_rgb,
)

BIG = {"max_bytes": 10**7, "max_pixels": 10**7}


def encode(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def rgb(w: int, h: int, color: tuple[int, int, int] = (10, 200, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def refused(data: bytes, *hints: str, **limits: int) -> str:
    with pytest.raises(InvalidJobError) as info:
        check_image(data, **{**BIG, **limits})
    assert info.value.field == "image"
    msg = str(info.value)
    for hint in hints:
        assert hint in msg, f"{hint!r} not in {msg!r}"
    return msg


# --- crop and pad boxes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "box"),
    [
        ((1920, 1080), (0, 0, 1920, 1080)),  # same aspect: the whole image
        ((1024, 576), (0, 0, 1024, 576)),
        ((2000, 800), (289, 0, 1711, 800)),  # wider: crop the sides
        ((600, 1000), (0, 331, 600, 669)),  # portrait: crop top and bottom
        ((1000, 1000), (0, 219, 1000, 781)),  # square
    ],
)
def test_crop_box_exact(src: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    assert crop_box(*src, 1024, 576) == box


@pytest.mark.parametrize(
    ("src", "box"),
    [
        ((1920, 1080), (0, 0, 1024, 576)),
        ((2000, 800), (0, 83, 1024, 493)),  # wider: bars top and bottom
        ((600, 1000), (339, 0, 685, 576)),  # portrait: bars left and right
        ((1000, 1000), (224, 0, 800, 576)),
    ],
)
def test_pad_box_exact(src: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    assert pad_box(*src, 1024, 576) == box


SIZES = [
    (1920, 1080),
    (2000, 800),
    (600, 1000),
    (1000, 1000),
    (64, 512),
    (512, 64),
    (333, 777),
    (4032, 3024),
    (1081, 1921),
    (65, 64),
    (1023, 577),
]
TARGETS = [(1024, 576), (576, 1024), (512, 512), (64, 2048), (2048, 64), (768, 448)]


@pytest.mark.parametrize("src", SIZES)
@pytest.mark.parametrize("dst", TARGETS)
def test_crop_box_has_target_aspect_and_is_centred(
    src: tuple[int, int], dst: tuple[int, int]
) -> None:
    (sw, sh), (dw, dh) = src, dst
    left, top, right, bottom = crop_box(sw, sh, dw, dh)
    w, h = right - left, bottom - top
    assert 0 <= left <= right <= sw and 0 <= top <= bottom <= sh
    # one side is the whole source side; the other has the target's aspect within 1 px
    assert w == sw or h == sh
    assert abs(w - h * dw / dh) <= 1 or abs(h - w * dh / dw) <= 1
    assert abs(w * dh - h * dw) <= max(dw, dh)
    # centred: the margins differ by at most one pixel
    assert abs(left - (sw - right)) <= 1
    assert abs(top - (sh - bottom)) <= 1


@pytest.mark.parametrize("src", SIZES)
@pytest.mark.parametrize("dst", TARGETS)
def test_pad_box_fits_inside_and_is_centred(src: tuple[int, int], dst: tuple[int, int]) -> None:
    (sw, sh), (dw, dh) = src, dst
    left, top, right, bottom = pad_box(sw, sh, dw, dh)
    w, h = right - left, bottom - top
    assert left >= 0 and top >= 0 and right <= dw and bottom <= dh
    assert w >= 1 and h >= 1
    assert w == dw or h == dh  # touches two opposite edges
    assert abs(w / h - sw / sh) <= sw / sh * max(1 / w, 1 / h) * 1.01 + 1e-9
    assert abs(left - (dw - right)) <= 1
    assert abs(top - (dh - bottom)) <= 1


# --- fit --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("src", [(320, 180), (400, 160), (120, 200), (200, 200)])
@pytest.mark.parametrize("dst", [(128, 64), (64, 128), (64, 64)])
def test_fit_returns_exactly_the_target_size(
    mode: str, src: tuple[int, int], dst: tuple[int, int]
) -> None:
    out = fit(rgb(*src), *dst, mode)
    assert out.size == dst
    assert out.mode == "RGB"


def test_fit_pad_letterboxes_in_black() -> None:
    out = fit(rgb(100, 100, (255, 255, 255)), 128, 64, "pad")
    assert out.getpixel((0, 32)) == (0, 0, 0)
    assert out.getpixel((127, 32)) == (0, 0, 0)
    assert out.getpixel((64, 32)) == (255, 255, 255)


def test_fit_crop_keeps_the_centre() -> None:
    # red | green | blue thirds, cropped square: only green is left
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 255, 0), (100, 0, 200, 100))
    img.paste((0, 0, 255), (200, 0, 300, 100))
    out = fit(img, 64, 64, "crop")
    assert out.getpixel((0, 32)) == (0, 255, 0)
    assert out.getpixel((63, 32)) == (0, 255, 0)


def test_fit_unknown_mode_rejected() -> None:
    with pytest.raises(InvalidJobError) as info:
        fit(rgb(100, 100), 64, 64, "zoom")
    assert info.value.field == "resize"
    assert str(info.value) == "resize='zoom' is not allowed: one of crop, pad, stretch"


# --- check_image ------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "ext"), sorted(ALLOWED_FORMATS.items()))
def test_good_image_accepted(fmt: str, ext: str) -> None:
    info = check_image(encode(rgb(128, 96), fmt), **BIG)
    assert info == ImageInfo(format=fmt, ext=ext, width=128, height=96, frames=1)


def test_allowed_formats() -> None:
    assert ALLOWED_FORMATS == {
        "PNG": "png",
        "JPEG": "jpg",
        "WEBP": "webp",
        "GIF": "gif",
        "BMP": "bmp",
        "TIFF": "tif",
    }


def test_empty_bytes_refused() -> None:
    assert refused(b"", "0 bytes") == "image is empty (0 bytes)"


def test_source_name_is_used_in_messages() -> None:
    with pytest.raises(InvalidJobError) as info:
        check_image(b"", source="cat.png", **BIG)
    assert str(info.value) == "cat.png is empty (0 bytes)"


def test_truncated_png_refused() -> None:
    data = encode(rgb(128, 96), "PNG")
    refused(data[: len(data) // 2], "truncated or corrupt")


def test_truncated_jpeg_refused() -> None:
    data = encode(Image.effect_noise((128, 96), 50).convert("RGB"), "JPEG")
    refused(data[: len(data) // 2], "truncated or corrupt")


@pytest.mark.parametrize("fmt", ["PCX", "PPM", "TGA", "ICO"])
def test_other_formats_refused(fmt: str) -> None:
    refused(encode(rgb(128, 96), fmt), "not a PNG, JPEG, WebP, GIF, BMP or TIFF image")


@pytest.mark.parametrize("data", [b"hello, I am a text file\n" * 20, b"\x00" * 100, b"x"])
def test_not_an_image_refused(data: bytes) -> None:
    assert refused(data) == "image is not a PNG, JPEG, WebP, GIF, BMP or TIFF image"


def test_png_signature_then_garbage_refused() -> None:
    refused(b"\x89PNG\r\n\x1a\n" + b"0" * 8, "truncated or corrupt")


def test_too_many_bytes_refused() -> None:
    data = encode(rgb(128, 96), "PNG")
    assert check_image(data, max_bytes=len(data), max_pixels=10**7).width == 128
    msg = refused(data, "SVDQ_MAX_INPUT_BYTES", f"{len(data) - 1:,}", max_bytes=len(data) - 1)
    assert f"{len(data):,} bytes" in msg


def test_too_many_pixels_refused() -> None:
    data = encode(rgb(128, 96), "PNG")
    assert check_image(data, max_bytes=10**7, max_pixels=128 * 96).height == 96
    msg = refused(data, "SVDQ_MAX_INPUT_PIXELS", f"{128 * 96 - 1:,}", max_pixels=128 * 96 - 1)
    assert "128×96 = 12,288 pixels" in msg


@pytest.mark.parametrize("size", [(MIN_SIDE - 1, 100), (100, MIN_SIDE - 1), (10, 10)])
def test_side_below_minimum_refused(size: tuple[int, int]) -> None:
    msg = refused(encode(rgb(*size), "PNG"), f"at least {MIN_SIDE} pixels")
    assert f"{size[0]}×{size[1]}" in msg


def test_side_at_minimum_accepted() -> None:
    assert check_image(encode(rgb(MIN_SIDE, MIN_SIDE), "PNG"), **BIG).width == MIN_SIDE


@pytest.mark.parametrize("size", [(64, 512), (512, 64)])
def test_aspect_at_limit_accepted(size: tuple[int, int]) -> None:
    assert MAX_ASPECT == 8.0
    info = check_image(encode(rgb(*size), "PNG"), **BIG)
    assert (info.width, info.height) == size


@pytest.mark.parametrize("size", [(64, 520), (520, 64)])
def test_aspect_over_limit_refused(size: tuple[int, int]) -> None:
    msg = refused(encode(rgb(*size), "PNG"), "8:1", "aspect 8.1:1")
    assert f"{size[0]}×{size[1]}" in msg


def test_exif_orientation_swaps_the_sides() -> None:
    img = rgb(200, 100)
    exif = img.getexif()
    exif[0x0112] = 6
    data = encode(img, "JPEG", exif=exif)
    info = check_image(data, **BIG)
    assert (info.width, info.height) == (100, 200)
    out = to_rgb(open_image(data, **BIG))
    assert out.size == (100, 200)
    assert out.mode == "RGB"


def test_exif_orientation_counts_for_the_aspect_check() -> None:
    # 520×64 stored, shown as 64×520 after rotation: still refused, and the message shows the
    # sides a person sees.
    img = rgb(520, 64)
    exif = img.getexif()
    exif[0x0112] = 8
    refused(encode(img, "JPEG", exif=exif), "64×520", "8:1")


def test_open_image_returns_a_loaded_image() -> None:
    img = open_image(encode(rgb(128, 96, (1, 2, 3)), "PNG"), **BIG)
    assert img.size == (128, 96)
    assert img.getpixel((5, 5)) == (1, 2, 3)


# --- to_rgb -----------------------------------------------------------------------------------


def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (70, 50), (255, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 255))
    img.putpixel((2, 0), (0, 0, 255, 128))
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.size == (70, 50)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not red or black
    assert out.getpixel((1, 0)) == (255, 0, 0)
    assert out.getpixel((2, 0)) == (127, 127, 255)


def test_la_is_composited_on_white() -> None:
    img = Image.new("LA", (70, 50), (0, 0))
    out = to_rgb(img)
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_image_with_transparency() -> None:
    img = Image.new("P", (70, 50), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.size == (70, 50)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)


def test_palette_image() -> None:
    out = to_rgb(rgb(70, 50, (0, 128, 255)).convert("P"))
    assert out.mode == "RGB"
    assert out.size == (70, 50)


def test_grayscale_image() -> None:
    out = to_rgb(Image.new("L", (70, 50), 77))
    assert out.mode == "RGB"
    assert out.size == (70, 50)
    assert out.getpixel((0, 0)) == (77, 77, 77)


def test_cmyk_image() -> None:
    out = to_rgb(Image.new("CMYK", (70, 50), (0, 255, 255, 0)))
    assert out.mode == "RGB"
    assert out.size == (70, 50)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_16_bit_image_is_scaled_to_8_bits() -> None:
    img = Image.new("I;16", (70, 50), 0)
    img.putpixel((0, 0), 65535)
    img.putpixel((1, 0), 32768)
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.size == (70, 50)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (128, 128, 128)
    assert out.getpixel((2, 0)) == (0, 0, 0)


def test_16_bit_png_from_bytes() -> None:
    img = Image.new("I;16", (70, 50), 40000)
    data = encode(img, "PNG")
    out = to_rgb(open_image(data, **BIG))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (156, 156, 156)


def test_rgb_image_is_unchanged() -> None:
    img = rgb(70, 50, (1, 2, 3))
    out = to_rgb(img)
    assert out.size == (70, 50)
    assert out.getpixel((69, 49)) == (1, 2, 3)


def test_animated_webp_first_frame_is_used() -> None:
    frames = [rgb(70, 70, (255, 0, 0)), rgb(70, 70, (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    info = check_image(buf.getvalue(), **BIG)
    assert info.frames == 2
    out = to_rgb(open_image(buf.getvalue(), **BIG))
    assert out.getpixel((0, 0)) == (255, 0, 0)
