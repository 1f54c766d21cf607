"""A table of hostile inputs, each refused cheaply with a specific reason, at the producer
(`store_input`, which also guards URLs and buckets) and again in the worker (`check_image`
on the stored bytes, as worker.jobs does). A second table: odd but fine inputs that are
accepted and converted correctly. No network: URL cases are refused before any connection."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from svdq.producer.inputs import store_input
from svdq.shared.errors import InvalidJobError
from svdq.shared.images import check_image, open_image, to_rgb
from svdq.shared.settings import Settings
from svdq.shared.storage import LocalStore

CAP = 300_000


def enc(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb(w: int = 128, h: int = 96) -> Image.Image:
    return Image.new("RGB", (w, h), (200, 40, 90))


def noisy_png() -> bytes:
    """A PNG over CAP bytes (random pixels do not compress)."""
    import os

    return enc(Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3)), "PNG")


def claims_huge(side: int) -> bytes:
    """A valid 64×64 PNG whose header claims side×side: refused from the header, undecoded."""
    data = bytearray(enc(rgb(64, 64), "PNG"))
    ihdr = bytes(data[12:16]) + struct.pack(">II", side, side) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [rgb(), Image.new("RGB", (128, 96), (0, 0, 255))]
    return enc(frames[0], "GIF", save_all=True, append_images=frames[1:])


def gif_screen(side: int) -> bytes:
    """A valid 64×64 GIF whose logical screen (the size Pillow reports) is side×side."""
    data = bytearray(enc(rgb(64, 64), "GIF"))
    data[6:10] = struct.pack("<HH", side, side)
    return bytes(data)


def tiff_claims(side: int) -> bytes:
    """A valid 64×64 uncompressed TIFF whose ImageWidth/ImageLength tags claim side×side."""
    data = bytearray(enc(rgb(64, 64), "TIFF"))
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for at in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind = struct.unpack("<HH", data[at : at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            value = struct.pack("<I", side) if kind == 4 else struct.pack("<HH", side, 0)
            data[at + 8 : at + 12] = value
    return bytes(data)


def tiff_deflated(side: int) -> bytes:
    """A real decompression bomb: side×side black pixels, deflated to a few tens of KB."""
    return enc(Image.new("L", (side, side)), "TIFF", compression="tiff_deflate")


NOT_ALLOWED = "is not a PNG, JPEG, WebP, GIF, BMP or TIFF image"
CORRUPT = "could not be decoded (truncated or corrupt)"

# name, file name, bytes, reason the person reads
FILES: list[tuple[str, str, Callable[[], bytes], str]] = [
    ("zero-byte", "empty.png", lambda: b"", "is empty (0 bytes)"),
    ("over the size cap", "big.png", noisy_png, "allowed up to 300,000 (SVDQ_MAX_INPUT_BYTES)"),
    ("pixel bomb", "bomb.png", lambda: claims_huge(30000), "refused as a decompression bomb"),
    ("over the pixel cap", "huge.png", lambda: claims_huge(8000), "allowed up to 40,000,000"),
    ("gif bomb: huge logical screen", "screen.gif", lambda: gif_screen(65535), "bomb"),
    ("gif screen over the pixel cap", "big.gif", lambda: gif_screen(8000), "up to 40,000,000"),
    ("tiff bomb: huge dimensions", "dims.tif", lambda: tiff_claims(30000), "bomb"),
    ("tiff over the pixel cap", "big.tiff", lambda: tiff_claims(8000), "up to 40,000,000"),
    ("tiff decompression bomb", "zeros.tif", lambda: tiff_deflated(6500), "up to 40,000,000"),
    ("truncated bmp", "cut.bmp", lambda: enc(rgb(), "BMP")[:-500], CORRUPT),
    ("truncated gif", "cut.gif", lambda: enc(rgb(), "GIF")[:-20], CORRUPT),
    ("truncated tiff", "cut.tif", lambda: enc(rgb(), "TIFF")[:-500], CORRUPT),
    ("tiny gif", "tiny.gif", lambda: enc(rgb(32, 32), "GIF"), "must be at least 64 pixels"),
    ("extreme aspect bmp", "wide.bmp", lambda: enc(rgb(1000, 64), "BMP"), "up to 8:1"),
    ("pcx (not allowed)", "a.pcx", lambda: enc(rgb(), "PCX"), NOT_ALLOWED),
    ("svg", "a.svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>', NOT_ALLOWED),
    ("html", "a.png", lambda: b"<html><script>alert(1)</script></html>", NOT_ALLOWED),
    ("elf binary", "a.jpg", lambda: b"\x7fELF\x02\x01\x01" + bytes(200), NOT_ALLOWED),
    ("truncated png", "cut.png", lambda: enc(rgb(), "PNG")[:-30], CORRUPT),
    ("truncated jpeg", "cut.jpg", lambda: enc(rgb(), "JPEG")[:300], CORRUPT),
    ("png signature, then junk", "junk.png", lambda: b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG"),
    ("tiny", "tiny.png", lambda: enc(rgb(32, 32), "PNG"), "must be at least 64 pixels"),
    ("one pixel high", "line.png", lambda: enc(rgb(4000, 1), "PNG"), "at least 64 pixels"),
    ("extreme aspect", "wide.png", lambda: enc(rgb(1000, 64), "PNG"), "allowed up to 8:1"),
    ("extreme aspect tall", "tall.jpg", lambda: enc(rgb(64, 900), "JPEG"), "allowed up to 8:1"),
]

# name, what the user typed, reason
NAMES: list[tuple[str, str, str]] = [
    ("plain http", "http://example.com/a.png", "only https:// URLs are fetched"),
    ("loopback", "https://127.0.0.1/a.png", "not a public address"),
    ("localhost", "https://localhost/a.png", "not a public address"),
    ("metadata service", "https://169.254.169.254/latest/meta-data/", "not a public address"),
    ("private", "https://10.1.2.3/a.png", "not a public address"),
    ("carrier nat", "https://100.64.0.1/a.png", "not a public address"),
    ("ipv6 loopback", "https://[::1]/a.png", "not a public address"),
    ("ipv6-mapped loopback", "https://[::ffff:127.0.0.1]/a.png", "not a public address"),
    ("ipv6-mapped metadata", "https://[::ffff:169.254.169.254]/", "not a public address"),
    ("decimal-encoded", "https://2130706433/a.png", "number-encoded address"),
    ("hex-encoded", "https://0x7f.0.0.1/a.png", "number-encoded address"),
    ("octal-encoded", "https://0177.0.0.1/a.png", "number-encoded address"),
    ("credentials in url", "https://user:pw@example.com/a.png", "credentials in URLs"),
    ("other bucket", "s3://someone-elses-bucket/inputs/a.png", "outside the configured bucket"),
]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Settings, LocalStore]:
    env = {
        "SVDQ_STORE": "local",
        "SVDQ_LOCAL_DIR": str(tmp_path / "store"),
        "SVDQ_MAX_INPUT_BYTES": str(CAP),
        "SVDQ_ALLOW_URLS": "1",
    }
    return Settings.from_env(env), LocalStore(tmp_path / "store")


def test_the_table_is_big_enough() -> None:
    assert len(FILES) + len(NAMES) >= 20


@pytest.mark.parametrize(("name", "filename", "make", "reason"), FILES, ids=[f[0] for f in FILES])
def test_hostile_file_refused_at_producer_and_worker(
    setup: tuple[Settings, LocalStore],
    tmp_path: Path,
    name: str,
    filename: str,
    make: Callable[[], bytes],
    reason: str,
) -> None:
    settings, store = setup
    data = make()
    path = tmp_path / filename
    path.write_bytes(data)
    with pytest.raises(InvalidJobError) as producer:
        store_input(str(path), store, settings)
    assert reason in str(producer.value) and producer.value.field == "image"
    assert not list((tmp_path / "store").rglob("*.*")), "nothing refused may reach the store"
    # The worker checks the bytes again, whatever the queue says.
    with pytest.raises(InvalidJobError) as worker:
        check_image(data, max_bytes=CAP, max_pixels=settings.max_input_pixels, source="image")
    assert reason in str(worker.value)


@pytest.mark.parametrize(("name", "image", "reason"), NAMES, ids=[n[0] for n in NAMES])
def test_hostile_name_refused_before_any_fetch(
    setup: tuple[Settings, LocalStore], name: str, image: str, reason: str
) -> None:
    settings, store = setup
    with pytest.raises(InvalidJobError) as info:
        store_input(image, store, settings)
    assert reason in str(info.value) and info.value.field == "image"


def test_urls_are_refused_unless_enabled(tmp_path: Path) -> None:
    settings = Settings.from_env({"SVDQ_STORE": "local", "SVDQ_LOCAL_DIR": str(tmp_path)})
    with pytest.raises(InvalidJobError, match="SVDQ_ALLOW_URLS=1"):
        store_input("https://example.com/a.png", LocalStore(tmp_path), settings)


def cmyk_jpeg() -> bytes:
    return enc(Image.new("CMYK", (128, 96), (0, 255, 255, 0)), "JPEG", quality=100)


def png16() -> bytes:
    return enc(Image.new("I;16", (128, 96), 65535), "PNG")


def palette_alpha() -> bytes:
    img = Image.new("P", (128, 96), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    return enc(img, "PNG", transparency=0)


def animated_webp() -> bytes:
    frames = [rgb(), Image.new("RGB", (128, 96), (0, 0, 255))]
    return enc(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


def multipage_tiff() -> bytes:
    blue = Image.new("RGB", (128, 96), (0, 0, 255))
    return enc(rgb(), "TIFF", save_all=True, append_images=[blue])


def tiff16_big_endian() -> bytes:
    """Opens in mode I;16B, which Pillow's point() does not take."""
    return enc(Image.new("I;16B", (128, 96), 65535), "TIFF")


# name, file name, bytes, stored extension, pixel (0, 0) after conversion to RGB
ACCEPTED = [
    ("png named .jpg", "photo.jpg", lambda: enc(rgb(), "PNG"), "png", (200, 40, 90)),
    ("cmyk jpeg", "c.jpg", cmyk_jpeg, "jpg", (255, 0, 0)),
    ("16-bit png", "d.png", png16, "png", (255, 255, 255)),
    ("palette + transparency", "p.png", palette_alpha, "png", (255, 255, 255)),
    (
        "rgba",
        "a.png",
        lambda: enc(Image.new("RGBA", (128, 96), (0, 0, 0, 0)), "PNG"),
        "png",
        (255, 255, 255),
    ),
    ("animated webp: first frame", "m.webp", animated_webp, "webp", (200, 40, 90)),
    ("gif", "a.gif", lambda: enc(rgb(), "GIF"), "gif", (200, 40, 90)),
    ("animated gif: first frame", "anim.gif", animated_gif, "gif", (200, 40, 90)),
    ("gif named .png", "fake.png", lambda: enc(rgb(), "GIF"), "gif", (200, 40, 90)),
    ("bmp", "a.bmp", lambda: enc(rgb(), "BMP"), "bmp", (200, 40, 90)),
    ("tiff", "a.tiff", lambda: enc(rgb(), "TIFF"), "tif", (200, 40, 90)),
    ("multi-page tiff: first page", "pages.tif", multipage_tiff, "tif", (200, 40, 90)),
    ("16-bit big-endian tiff", "be.tif", tiff16_big_endian, "tif", (255, 255, 255)),
    (
        "cmyk tiff",
        "c.tif",
        lambda: enc(Image.new("CMYK", (128, 96), (0, 255, 255, 0)), "TIFF"),
        "tif",
        (255, 0, 0),
    ),
]


@pytest.mark.parametrize(
    ("name", "filename", "make", "ext", "pixel"), ACCEPTED, ids=[a[0] for a in ACCEPTED]
)
def test_odd_but_fine_inputs_are_converted(
    setup: tuple[Settings, LocalStore],
    tmp_path: Path,
    name: str,
    filename: str,
    make: Callable[[], bytes],
    ext: str,
    pixel: tuple[int, int, int],
) -> None:
    settings, store = setup
    path = tmp_path / filename
    path.write_bytes(make())
    stored = store_input(str(path), store, settings)
    assert stored.uri.endswith(f".{ext}")  # the content decides the format, not the name
    image = to_rgb(open_image(path.read_bytes(), max_bytes=CAP, max_pixels=10**7))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == pytest.approx(pixel, abs=3)


# Names that end up in object keys: the safe alphabet keeps them inside results/.
KEYS = [
    ("job_id", "../../etc/passwd", "job_id="),
    ("job_id", "a/b", "job_id="),
    ("job_id", "job\n", "job_id="),
    ("job_id", "..", "job_id="),
    ("output_prefix", "/abs/path", "output_prefix="),
    ("output_prefix", "a/../../b", "output_prefix="),
    ("output_prefix", "a//b", "output_prefix="),
]


@pytest.mark.parametrize(("field", "value", "reason"), KEYS, ids=[f"{k[0]}={k[1]!r}" for k in KEYS])
def test_unsafe_ids_and_prefixes_are_refused(field: str, value: str, reason: str) -> None:
    from svdq.shared.spec import JobSpec

    with pytest.raises(InvalidJobError) as info:
        JobSpec.from_dict({"image": "a.png", field: value})
    assert str(info.value).startswith(reason) and info.value.field == field
