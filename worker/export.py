"""Turning a generated clip into the files a job delivers: MP4 (H.264), animated GIF, JPEG poster.

`ENCODERS` maps every format in shared/formats.py to its encoder. The MP4 encoder runs the
ffmpeg binary that imageio-ffmpeg ships as a subprocess of its own, fed raw frames on stdin,
so its exit status and error output are ours to read.
"""

from __future__ import annotations

import io
import math
import subprocess
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import GifImagePlugin, Image

from svdq.shared.errors import EncodeError

MP4_CRF = 18
MP4_PRESET = "veryfast"
_X264_PARAMS = ["-crf", str(MP4_CRF), "-preset", MP4_PRESET, "-movflags", "+faststart"]
# Pixels sampled to build the GIF palette: median cut and k-means cost grow with the sample,
# and beyond a few thousand samples the palette hardly gets better.
GIF_PALETTE_SAMPLES = 8192
# k-means polishing of the median-cut palette (stops once fewer samples than this move) cuts
# the error of one shared palette by 15-30%, to about that of Pillow's per-frame palettes.
_GIF_KMEANS = 32
# Palette index kept free for "unchanged since the previous frame" in GIF delta frames.
_GIF_TRANSPARENT = 255


def _check_shape(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be shaped (F, H, W, 3), none zero; got {frames.shape}")


def _check_video(frames: np.ndarray) -> np.ndarray:
    """Return `frames` as a C-contiguous uint8 (F, H, W, 3) array, or raise."""
    _check_shape(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 (use to_uint8 first), got {frames.dtype}")
    return np.ascontiguousarray(frames)


def _check_fps(fps: float) -> float:
    """Return `fps` as a plain float, or raise ValueError."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return value


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Convert one video from the pipeline (float in [0, 1], (F, H, W, 3)) to uint8.

    Values are scaled by 255 and rounded to nearest; values outside [0, 1] are clipped.
    uint8 input is passed through (made contiguous). NaN or infinity raises ValueError:
    they mean the pipeline diverged (e.g. an fp16 VAE overflow), and casting them would
    silently turn the clip black.
    """
    _check_shape(frames)
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if not np.issubdtype(frames.dtype, np.floating):
        raise TypeError(f"frames must be float in [0, 1] or uint8, got {frames.dtype}")
    if not np.isfinite(frames).all():
        raise ValueError("frames contain NaN or infinity; the pipeline output is broken")
    # float32 work buffer: float16 lacks the precision to round x*255 correctly, and in-place
    # steps avoid three temporaries the size of the clip.
    scaled = frames.astype(np.float32, copy=True)
    scaled *= 255.0
    scaled += 0.5
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8)


def _mp4_command(width: int, height: int, fps: float, out: Path) -> list[str]:
    """ffmpeg reading raw RGB frames on stdin and writing H.264/yuv420p MP4 to `out`."""
    # A rational rate, so 29.97 or 7.5 are passed exactly rather than rounded.
    rate = str(Fraction(fps).limit_denominator())
    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",  # only errors on stderr: anything there means the encode failed
        "-y",
        "-f",
        "rawvideo",
        "-vcodec",
        "rawvideo",
        "-s",
        f"{width}x{height}",
        "-pix_fmt",
        "rgb24",
        "-r",
        rate,
        "-i",
        "-",
        "-an",
        "-vcodec",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        *_X264_PARAMS,
        str(out),
    ]


def encode_mp4(frames_u8: np.ndarray, fps: float) -> bytes:
    """Encode a uint8 (F, H, W, 3) clip as H.264/yuv420p MP4 with exactly F frames at `fps`.

    Width and height must be even (yuv420p halves chroma in both directions); nothing is
    resized or padded. Raises ValueError for bad input and EncodeError, with ffmpeg's error
    output, if ffmpeg fails.
    """
    frames = _check_video(frames_u8)
    fps = _check_fps(fps)
    _, height, width, _ = frames.shape
    if width % 2 or height % 2:
        raise ValueError(
            f"H.264 yuv420p needs even width and height, got {width}x{height} "
            f"(svdq sizes are multiples of 64)"
        )
    with tempfile.TemporaryDirectory(prefix="svdq-mp4-") as tmp:
        # A real file, not a pipe: +faststart rewrites the file to put the index first.
        out = Path(tmp) / "video.mp4"
        process = subprocess.Popen(
            _mp4_command(width, height, fps, out),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # communicate() feeds stdin while draining stderr, so neither pipe can fill up and
        # stall the other; a broken pipe (ffmpeg died early) ends the feeding, and the exit
        # status and stderr say why.
        _, stderr = process.communicate(frames.tobytes())
        errors = stderr.decode(errors="replace").strip()
        if process.returncode or errors or not out.is_file() or out.stat().st_size == 0:
            raise EncodeError(
                f"ffmpeg failed to encode MP4 (exit status {process.returncode}):\n"
                f"{errors or 'no output written'}"
            )
        return out.read_bytes()


def gif_frame_ms(fps: float) -> int:
    """The per-frame delay `encode_gif` stores for `fps`, in milliseconds.

    GIF delays are whole centiseconds, so round(1000 / fps) is rounded to the nearest
    10 ms (half up); at least 20 ms, since browsers slow shorter delays down to 100 ms.
    """
    fps = _check_fps(fps)
    return max(20, (round(1000 / fps) + 5) // 10 * 10)


def _gif_palette(frames: np.ndarray) -> bytes:
    """At most 255 RGB colours (flat bytes) for the whole clip, from a sample of its pixels."""
    flat = frames.reshape(-1, 3)
    count = min(GIF_PALETTE_SAMPLES, flat.shape[0])
    # Random (seeded, so output is reproducible) rather than strided: a stride can alias with
    # the row width and see only a few columns.
    picks = np.random.default_rng(0).integers(0, flat.shape[0], count)
    sample = Image.fromarray(flat[picks].reshape(1, count, 3))
    quantized = sample.quantize(255, Image.Quantize.MEDIANCUT, kmeans=_GIF_KMEANS)
    palette = quantized.getpalette() or [0, 0, 0]
    colors = min(len(palette) // 3, 255)
    return bytes(palette[: colors * 3])


def _indexed(indices: np.ndarray, palette: bytes) -> Image.Image:
    image = Image.fromarray(indices)  # mode "L"; putpalette turns it into "P"
    image.putpalette(palette, "RGB")
    return image


def encode_gif(frames_u8: np.ndarray, fps: float) -> bytes:
    """Encode a uint8 (F, H, W, 3) clip as an animated GIF that loops forever.

    One palette for the whole clip (median cut + k-means on a pixel sample), no dithering
    (it would flicker from frame to frame), and each frame after the first stores only the
    rectangle that changed, unchanged pixels transparent. Always exactly F frames: Pillow's
    own multi-frame writer silently merges identical consecutive frames, so the GIF is built
    here with GifImagePlugin.getheader/getdata. Frame delay is `gif_frame_ms(fps)`.
    """
    frames = _check_video(frames_u8)
    delay = gif_frame_ms(fps)
    count, height, width, _ = frames.shape
    palette = _gif_palette(frames)
    # Padding with the first colour keeps the mapping palette at 255 entries, so the nearest
    # colour is never the transparent index 255 (it would show the previous frame instead).
    mapping = Image.new("P", (1, 1))
    mapping.putpalette(palette + palette[:3] * (255 - len(palette) // 3), "RGB")
    # One call for the whole clip: Pillow's nearest-colour cache is built once, not per frame.
    stacked = Image.fromarray(frames.reshape(count * height, width, 3))
    indexed = stacked.quantize(palette=mapping, dither=Image.Dither.NONE)
    indices = np.asarray(indexed).reshape(count, height, width)
    if indices.max() >= _GIF_TRANSPARENT:
        raise EncodeError("GIF palette mapping used the reserved transparent index")
    full_palette = palette + bytes(768 - len(palette))

    first = _indexed(indices[0], full_palette)
    header, _ = GifImagePlugin.getheader(first, None, {"loop": 0, "duration": delay})
    parts = [*header, *GifImagePlugin.getdata(first, duration=delay, disposal=1)]
    for i in range(1, count):
        changed = indices[i] != indices[i - 1]
        rows = np.flatnonzero(changed.any(axis=1))
        if rows.size:
            cols = np.flatnonzero(changed.any(axis=0))
            top, bottom = int(rows[0]), int(rows[-1]) + 1
            left, right = int(cols[0]), int(cols[-1]) + 1
        else:  # identical frame: a 1x1 transparent patch still counts as a frame
            top, bottom, left, right = 0, 1, 0, 1
        patch = np.where(
            changed[top:bottom, left:right], indices[i, top:bottom, left:right], _GIF_TRANSPARENT
        ).astype(np.uint8)
        parts += GifImagePlugin.getdata(
            _indexed(patch, full_palette),
            offset=(left, top),
            duration=delay,
            disposal=1,  # keep this frame under the next one's transparent pixels
            transparency=_GIF_TRANSPARENT,
        )
    parts.append(b";")  # GIF trailer
    return b"".join(parts)


# The encoder of every format in shared/formats.py, by name: adding a format is its row there
# and its function here (tests/unit/test_export.py checks that the two lists agree).
Encoder = Callable[[np.ndarray, float], bytes]
ENCODERS: dict[str, Encoder] = {"mp4": encode_mp4, "gif": encode_gif}


def encode(kind: str, frames_u8: np.ndarray, fps: float) -> bytes:
    """Encode a uint8 (F, H, W, 3) clip as format `kind` (a name from shared/formats.py)."""
    try:
        encoder = ENCODERS[kind]
    except KeyError:
        raise ValueError(
            f"format {kind!r} has no encoder in this worker: one of {', '.join(ENCODERS)}"
        ) from None
    return encoder(frames_u8, fps)


def encode_poster(frame_u8: np.ndarray, quality: int = 90) -> bytes:
    """Encode one uint8 (H, W, 3) frame as a JPEG."""
    if not isinstance(frame_u8, np.ndarray) or frame_u8.dtype != np.uint8:
        raise TypeError("frame must be a uint8 numpy array")
    if frame_u8.ndim != 3 or frame_u8.shape[-1] != 3 or 0 in frame_u8.shape:
        raise ValueError(f"frame must be shaped (H, W, 3), got {frame_u8.shape}")
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be 1-95, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame_u8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
