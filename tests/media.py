"""Reading the clips svdq delivers back, to check them: frames, size, rate, codec, looping.

Only tests need these (the worker never reads its own output back), so they live here rather
than in worker/export.py.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from PIL import GifImagePlugin, Image, ImageSequence


def mp4_info(data: bytes) -> dict[str, Any]:
    """Decode an MP4 and report {"frames", "width", "height", "fps", "codec", "pix_fmt"}.

    "frames" counts the frames actually decoded, not what the container claims.
    """
    with tempfile.TemporaryDirectory(prefix="svdq-mp4-") as tmp, warnings.catch_warnings():
        # read_frames leaves ffmpeg's stdin/stdout pipes open when ffmpeg has already exited
        # at the end of the stream; they are closed when collected, with a ResourceWarning.
        warnings.simplefilter("ignore", ResourceWarning)
        path = Path(tmp) / "video.mp4"
        path.write_bytes(data)
        # Gray is enough to count frames (a third of the bytes through the pipe); passthrough
        # stops ffmpeg from duplicating or dropping frames to fit a frame rate.
        reader = imageio_ffmpeg.read_frames(
            str(path), pix_fmt="gray", bpp=1, output_params=["-fps_mode", "passthrough"]
        )
        try:
            meta = next(reader)
            frames = sum(1 for _ in reader)
        finally:
            reader.close()
            del reader  # collect the pipes while the warning is still ignored
    width, height = meta["size"]
    pix_fmt = str(meta.get("pix_fmt", "")).split("(")[0]
    return {"frames": frames, "width": width, "height": height, "fps": meta["fps"],
            "codec": meta["codec"], "pix_fmt": pix_fmt}  # fmt: skip


def gif_info(data: bytes) -> dict[str, Any]:
    """Read a GIF and report {"frames", "width", "height", "loop", "duration_ms", "total_ms"}.

    "duration_ms" is the first frame's delay; "total_ms" sums all frames' delays.
    "loop" is None when the GIF plays once (no looping extension).
    """
    with Image.open(io.BytesIO(data)) as image:
        if not isinstance(image, GifImagePlugin.GifImageFile):
            raise ValueError(f"not a GIF: {image.format}")
        frames, (width, height), loop = image.n_frames, image.size, image.info.get("loop")
        durations = [int(frame.info.get("duration", 0)) for frame in ImageSequence.Iterator(image)]
    return {"frames": frames, "width": width, "height": height, "loop": loop,
            "duration_ms": durations[0], "total_ms": sum(durations)}  # fmt: skip
