"""Small helpers for integration tests: sample images and queue inspection."""

from __future__ import annotations

import io
import random
import socket
from pathlib import Path

import redis as redis_lib
from PIL import Image, ImageDraw

# Small and quick on the tiny model, still multiples of 64.
FAST = {"variant": "tiny", "width": 128, "height": 64, "num_inference_steps": 3}


def make_image(path: Path, size: tuple[int, int] = (320, 200), color: int = 0) -> Path:
    """A small PNG with some structure (so crops and clips differ between images)."""
    img = Image.new("RGB", size, (30 + color % 200, 90, 160))
    draw = ImageDraw.Draw(img)
    draw.ellipse([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=(240, 200, 40))
    draw.rectangle([0, size[1] * 2 // 3, size[0], size[1]], fill=(40, 120, 60))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free loopback ports, below the kernel's ephemeral range.

    Workers listen on SVDQ_METRICS_PORT + their GPU index. A base from `free_port()` is itself
    ephemeral, so base + 1 may be taken a moment later by any outgoing connection; ports
    below 32768 are never handed out that way."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports found in 20000-32000")


def png_bytes(size: tuple[int, int] = (128, 128)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def queued_messages(redis_url: str) -> int:
    """Messages waiting in every svdq queue (all priority sub-lists included)."""
    client = redis_lib.Redis.from_url(redis_url)
    total = 0
    for key in client.scan_iter("svdq.*"):
        if client.type(key) == b"list":
            total += int(client.llen(key))
    return total
