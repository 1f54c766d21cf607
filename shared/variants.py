"""The model variants svdq runs, in one table.

Validation (shared/fields.py), the queues (shared/constants.py's `queue_for` over `VARIANTS`),
time limits (shared/limits.py), model loading (worker/models.py), the profile ladder
(worker/profiles.py: which rows carry a variant) and the help text all read this table.

Adding a variant is one `Variant` row here plus its weights on the workers (svdq never
downloads them). `auto` is not a row: it means the best real variant a worker can run, so its
time limit is the slowest real variant's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One model svdq knows how to run."""

    name: str  # what a job asks for; its queue is svdq.<name>
    model_id: str  # Hugging Face repo id (tiny: how it is made)
    frames: int  # what the model was trained to make: a job's default num_frames
    time_scale: float  # share of SVDQ_TASK_TIME_LIMIT one job may use
    real: bool  # real weights; False for tiny, which `auto` never means
    # The smallest card, in the decimal GB floors of worker/profiles.py's table, whose memory
    # settings run it (tiny and svd fit below 8 GB with sequential offload; svd-xt does not).
    min_vram_gb: float
    help: str  # a few words for `--variant` help, after the frame count
    # Frames the VAE decodes at once when neither the job nor the memory profile says;
    # None: all of them at once.
    decode_chunk_size: int | None = None
    note: str = ""  # recorded in every result this variant makes
    revision: str | None = None  # pinned Hugging Face revision (None: what is in the cache)


AUTO = "auto"
AUTO_HELP = "best real model the worker can run"

# SVD-XT (25 frames) is the slowest real model and sets the time limit; SVD makes 14 frames.
# tiny is the test/demo model: it keeps the whole limit because the machines that run it
# (CPU, shared CI) are the least predictable.
TABLE: tuple[Variant, ...] = (
    Variant(
        "svd",
        "stabilityai/stable-video-diffusion-img2vid",
        frames=14,
        time_scale=0.6,
        real=True,
        min_vram_gb=0,
        help="the original SVD",
    ),
    Variant(
        "svd-xt",
        "stabilityai/stable-video-diffusion-img2vid-xt",
        frames=25,
        time_scale=1.0,
        real=True,
        min_vram_gb=8,
        help="SVD-XT, the default on cards of 8 GB and more",
    ),
    Variant(
        "svd-xt-1-1",
        "stabilityai/stable-video-diffusion-img2vid-xt-1-1",
        frames=25,
        time_scale=1.0,
        real=True,
        min_vram_gb=8,
        help="SVD-XT 1.1 weights",
    ),
    Variant(
        "tiny",
        "svdq/tiny (random weights, built locally)",
        frames=14,
        time_scale=1.0,
        real=False,
        min_vram_gb=0,
        help="random weights, for tests and demos",
        note="made by the tiny random-weight model: noise, for testing the pipeline only",
    ),
)

BY_NAME: dict[str, Variant] = {v.name: v for v in TABLE}
# Every name a job may ask for, `auto` first; the queues are made from this list.
VARIANTS: tuple[str, ...] = (AUTO, *BY_NAME)
REAL_VARIANTS: tuple[str, ...] = tuple(v.name for v in TABLE if v.real)


def variant(name: str) -> Variant:
    """The row for `name` (not `auto`, which a worker resolves first); KeyError otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"variant {name!r} is not one of {', '.join(BY_NAME)}") from None


def time_scale(name: str | None) -> float:
    """The share of the task time limit a job of `name` may use. `auto` (and None, which a
    worker also resolves) gets the slowest real variant's share: it may become any of them."""
    if name in BY_NAME:
        return BY_NAME[name].time_scale
    return max(v.time_scale for v in TABLE if v.real)


def help_text() -> str:
    """`auto (...), svd (14 frames, ...), ...`: every name a job may ask for, explained."""
    rows = [f"{v.name} ({v.frames} frames, {v.help})" for v in TABLE]
    return ", ".join([f"{AUTO} ({AUTO_HELP})", *rows])


def real_frames_help() -> str:
    """`14 or 25`: the frame counts of the real variants, for num_frames' help."""
    counts = sorted({v.frames for v in TABLE if v.real})
    return " or ".join(str(n) for n in counts)
