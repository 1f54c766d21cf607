"""worker.export: the MP4, GIF and poster a job delivers, checked by decoding them back."""

from __future__ import annotations

import io
import os
import warnings

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageSequence

from svdq.shared import formats
from svdq.shared.errors import EncodeError, SvdqError
from svdq.worker import export
from svdq.worker.export import (
    encode_gif,
    encode_mp4,
    encode_poster,
    gif_frame_ms,
    to_uint8,
)
from tests.media import gif_info, mp4_info

FRAMES, HEIGHT, WIDTH = 14, 64, 64


def smooth_clip(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A moving gradient with a little noise, like real output."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    clip = np.empty((frames, height, width, 3), np.float32)
    for f in range(frames):
        clip[f, ..., 0] = x / width
        clip[f, ..., 1] = (y / height + f / frames) % 1.0
        clip[f, ..., 2] = 0.5 + 0.4 * np.sin(x / 7 + f)
    clip += np.random.default_rng(1).normal(0, 0.02, clip.shape).astype(np.float32)
    return to_uint8(clip)


def noise_clip() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)


def blocks_clip() -> np.ndarray:
    """Four flat colours; one block moves, one changes colour, some frames repeat."""
    colours = np.array([[255, 255, 255], [200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
    clip = np.empty((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    for f in range(FRAMES):
        step = min(f, 8)  # frames 8.. are identical
        clip[f] = colours[0]
        clip[f, 8:24, 2 * step : 2 * step + 16] = colours[1]
        clip[f, 40:56, 10:30] = colours[2 + (step // 4) % 2]
    return clip


def decode_mp4_rgb(data: bytes, tmp_path: os.PathLike[str]) -> np.ndarray:
    path = os.path.join(tmp_path, "decoded.mp4")
    with open(path, "wb") as out:
        out.write(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # see tests/media.py mp4_info
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
        reader.close()
        del reader
    return np.stack(frames)


def decode_gif_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
    return np.stack(frames)


# --- to_uint8 ---------------------------------------------------------------------------


def test_to_uint8_rounds_and_clips() -> None:
    values = np.array([0.0, 0.5, 1.0, 0.25, 1 / 255, 0.998, -0.3, 1.7], np.float32)
    out = to_uint8(np.broadcast_to(values[:, None, None, None], (8, 2, 2, 3)))
    assert out.dtype == np.uint8 and out.shape == (8, 2, 2, 3) and out.flags.c_contiguous
    assert out[:, 0, 0, 0].tolist() == [0, 128, 255, 64, 1, 254, 0, 255]


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_to_uint8_accepts_other_float_widths(dtype: type[np.floating]) -> None:
    frames = np.full((2, 4, 4, 3), 0.5, dtype=dtype)
    assert (to_uint8(frames) == 128).all()


def test_to_uint8_passes_uint8_through() -> None:
    frames = noise_clip()[:, :, ::-1]  # not contiguous
    out = to_uint8(frames)
    assert out.flags.c_contiguous and np.array_equal(out, frames)


def test_to_uint8_keeps_channels_and_layout() -> None:
    frames = np.zeros((3, 4, 6, 3), np.float32)
    frames[1, 2, 5] = [1.0, 0.0, 0.5]
    out = to_uint8(frames)
    assert out[1, 2, 5].tolist() == [255, 0, 128] and out.sum() == 255 + 128


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_to_uint8_rejects_non_finite(bad: float) -> None:
    frames = np.zeros((2, 4, 4, 3), np.float32)
    frames[1, 1, 1, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        to_uint8(frames)


def test_to_uint8_rejects_wrong_shape_and_dtype() -> None:
    with pytest.raises(ValueError, match="shaped"):
        to_uint8(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError):
        to_uint8(np.zeros((2, 4, 4, 3), np.int32))


# --- MP4 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [7, 8, 7.5])
def test_mp4_has_every_frame_at_the_requested_fps(fps: float) -> None:
    data = encode_mp4(smooth_clip(), fps)
    info = mp4_info(data)
    assert info == {
        "frames": FRAMES,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": pytest.approx(fps),
        "codec": "h264",
        "pix_fmt": "yuv420p",
    }


def test_mp4_is_faststart_and_not_mangled(tmp_path: os.PathLike[str]) -> None:
    clip = smooth_clip(height=64, width=128)  # not square: catches a width/height swap
    data = encode_mp4(clip, 7)
    assert data.index(b"moov") < data.index(b"mdat")  # index first: playable while downloading
    decoded = decode_mp4_rgb(data, tmp_path)
    assert decoded.shape == clip.shape
    assert np.abs(decoded.astype(np.int16) - clip).mean() < 6  # lossy, but the same picture


def test_mp4_encodes_random_noise() -> None:
    info = mp4_info(encode_mp4(noise_clip(), 8))
    assert (info["frames"], info["width"], info["height"]) == (FRAMES, WIDTH, HEIGHT)


@pytest.mark.parametrize("shape", [(FRAMES, 64, 63, 3), (FRAMES, 65, 64, 3)])
def test_mp4_rejects_odd_sizes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="even width and height"):
        encode_mp4(np.zeros(shape, np.uint8), 7)


def test_mp4_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        encode_mp4(np.zeros((FRAMES, 64, 64, 3), np.float32), 7)
    with pytest.raises(ValueError, match="fps"):
        encode_mp4(smooth_clip(), 0)


def test_mp4_ffmpeg_failure_carries_its_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "_X264_PARAMS", ["-preset", "no-such-preset"])
    with pytest.raises(EncodeError, match="no-such-preset") as caught:
        encode_mp4(smooth_clip(), 7)
    assert isinstance(caught.value, SvdqError)  # caught wherever svdq's errors are
    assert "FFREPORT" not in os.environ


# --- GIF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fps", "ms"), [(7, 140), (8, 130), (25, 40), (100, 20)])
def test_gif_frame_ms_is_whole_centiseconds(fps: float, ms: int) -> None:
    assert gif_frame_ms(fps) == ms


@pytest.mark.parametrize("fps", [7, 8])
def test_gif_has_every_frame_and_loops(fps: float) -> None:
    info = gif_info(encode_gif(smooth_clip(), fps))
    delay = gif_frame_ms(fps)
    assert abs(delay - 1000 / fps) <= 5
    assert info == {
        "frames": FRAMES,
        "width": WIDTH,
        "height": HEIGHT,
        "loop": 0,
        "duration_ms": delay,
        "total_ms": FRAMES * delay,
    }


def test_gif_keeps_identical_frames() -> None:
    # Pillow's own writer would merge these 14 frames into one 14x longer frame.
    constant = np.full((FRAMES, HEIGHT, WIDTH, 3), 90, np.uint8)
    info = gif_info(encode_gif(constant, 7))
    assert (info["frames"], info["loop"], info["total_ms"]) == (FRAMES, 0, FRAMES * 140)
    assert np.array_equal(decode_gif_rgb(encode_gif(constant, 7)), constant)


def test_gif_frames_decode_exactly_for_few_colours() -> None:
    clip = blocks_clip()  # moving, recolouring and repeated frames: every delta-frame case
    assert np.array_equal(decode_gif_rgb(encode_gif(clip, 8)), clip)


def test_gif_is_close_to_the_clip() -> None:
    clip = smooth_clip(height=64, width=128)
    decoded = decode_gif_rgb(encode_gif(clip, 7))
    assert decoded.shape == clip.shape
    # One 255-colour palette for a clip that fills much of the colour cube: Pillow's default
    # save (a palette per frame) gets 9.0 here.
    assert np.abs(decoded.astype(np.int16) - clip).mean() < 12


def test_gif_encodes_random_noise() -> None:
    data = encode_gif(noise_clip(), 7)
    assert gif_info(data)["frames"] == FRAMES
    assert decode_gif_rgb(data).shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_gif_is_reproducible() -> None:
    clip = smooth_clip()
    assert encode_gif(clip, 7) == encode_gif(clip.copy(), 7)


# --- the format table ---------------------------------------------------------------------


def test_every_format_has_an_encoder() -> None:
    assert set(export.ENCODERS) == set(formats.names())


def test_encode_dispatches_by_format_name() -> None:
    clip = smooth_clip()
    assert export.encode("gif", clip, 7) == encode_gif(clip, 7)
    assert mp4_info(export.encode("mp4", clip, 7))["frames"] == FRAMES
    with pytest.raises(ValueError, match="'mov' has no encoder"):
        export.encode("mov", clip, 7)


# --- poster -------------------------------------------------------------------------------


def test_poster_is_a_jpeg_of_the_frame() -> None:
    frame = smooth_clip(height=48, width=64)[0]
    data = encode_poster(frame, quality=90)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (64, 48) and image.mode == "RGB"
        assert np.abs(np.asarray(image).astype(np.int16) - frame).mean() < 8


def test_poster_rejects_a_video() -> None:
    with pytest.raises(ValueError, match="shaped"):
        encode_poster(smooth_clip())
