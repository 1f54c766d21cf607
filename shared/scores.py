"""Scores of a finished clip: how much it moves, how much it flickers, how close it stays to
its input. Pure functions of the frames (numpy only), cheap enough to run on every job.

SVD's failure modes are known to its users: nearly static clips, flicker from a small
`decode_chunk_size`, drift from the source with too much noise augmentation. Nobody
looks at ten thousand clips, so every clip is measured and the numbers go into result.json,
`svdq status`, the bulk report and the worker's metrics. The module lives in shared/ because
the names and units are part of the result record's contract (`SCORES`, `summary`); only the
worker computes them.

Every score but `motion` is computed on a small grey copy (`SMALL_WIDTH` pixels wide, block
means of the frames), which makes them cheap and immune to pixel noise and codec detail:

- `motion`       mean absolute change between consecutive frames, 0–1, on the full frames
                 (the score svdq has always recorded). A global brightness flicker raises it.
- `displacement` mean displacement between consecutive frames, in % of the frame's width,
                 from phase correlation of tiles (a pan moves every tile the same way, a zoom
                 moves the outer tiles outwards). A change of brightness or contrast scales
                 the correlation without moving its peak: this is the motion score a flicker
                 cannot fool. It reads small shifts about a fifth low (the tiles' window).
- `flicker`      high-frequency temporal energy of coarse brightness, 0–1: the mean absolute
                 second difference in time of the mean brightness of a 4×4 grid of regions.
                 Motion changes a region's mean slowly and smoothly (a linear drift has no
                 second difference); a brightness jump from one frame to the next does not.
- `chunk_jump`   the mean change across decode-chunk boundaries over the mean change inside
                 chunks (1 ≈ no seam; the VAE decodes each chunk on its own, which shows as a
                 jump every `decode_chunk_size` frames). None without both kinds of pairs.
- `psnr`, `ssim` fidelity of the first frame to the input as fitted (PSNR in dB, capped at
                 `PSNR_CAP`; SSIM of the grey copies with a 7×7 uniform window, 1 = identical).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from svdq.shared.fields import MAX_FLICKER, MIN_MOTION

SMALL_WIDTH = 128  # the small copy for displacement; flicker and fidelity halve it to 64
TILE = 32  # phase-correlation tile side, in small-copy pixels
PEAK_SIGMA = 1.0  # pixels: the correlation peak's smoothing
GRID = 4  # flicker: GRID×GRID regions
PSNR_CAP = 100.0  # identical images: PSNR is infinite, which JSON cannot hold


# Each score: what it measures, in a line (the metrics' help), and the histogram buckets the
# worker's metrics count it in (worker/metrics.py).
SCORES: dict[str, tuple[str, tuple[float, ...]]] = {
    "motion": (
        "mean absolute change between consecutive frames, 0-1 (a flicker raises it too)",
        (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
    ),
    "displacement": (
        "mean phase-correlation displacement between consecutive frames, % of the width",
        (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20),
    ),
    "flicker": (
        "mean absolute second difference in time of coarse region brightness, 0-1",
        (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
    ),
    "chunk_jump": (
        "change across decode-chunk boundaries over change inside chunks (1: no seam)",
        (0.5, 0.8, 1, 1.2, 1.5, 2, 3, 5, 10),
    ),
    "psnr": (
        "PSNR of the first frame against the fitted input, dB",
        (10, 15, 20, 25, 30, 35, 40, 50),
    ),
    "ssim": (
        "SSIM of the first frame against the fitted input, 1 = identical",
        (0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
    ),
}


def summary(scores: dict[str, Any]) -> str:
    """The scores in one short line for people: "motion 0.012, displacement 0.41 %, ..."."""
    units = {"displacement": " %", "psnr": " dB"}
    return ", ".join(
        f"{name} {value:.4g}{units.get(name, '')}"
        for name in SCORES
        if isinstance(value := scores.get(name), (int, float)) and not isinstance(value, bool)
    )


def score_clip(
    frames_u8: np.ndarray, fitted_u8: np.ndarray | None = None, decode_chunk_size: int = 0
) -> dict[str, Any]:
    """All the scores of a clip: `frames_u8` uint8 (F, H, W, 3), `fitted_u8` the input as
    fitted to the clip's size, uint8 (H, W, 3) (None: no fidelity scores), and the decode
    chunk the frames were decoded with (0: unknown, no `chunk_jump`). Rounded for records."""
    small = small_grey(frames_u8, SMALL_WIDTH)
    smaller = halve(small)
    scores: dict[str, Any] = {
        "motion": round(motion(frames_u8), 5),
        "displacement": round(displacement(small), 4),
        "flicker": round(flicker(smaller), 5),
        "chunk_jump": _rounded(chunk_jump(smaller, decode_chunk_size), 3),
    }
    if fitted_u8 is not None:
        first = halve(small_grey(frames_u8[:1], SMALL_WIDTH))[0]
        source = halve(small_grey(fitted_u8[None], SMALL_WIDTH))[0]
        scores["psnr"] = round(psnr(first, source), 2)
        scores["ssim"] = round(ssim(first, source), 4)
    return scores


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def small_grey(frames_u8: np.ndarray, width: int) -> np.ndarray:
    """Grey float32 copy (the mean of R, G and B, 0–255) of (F, H, W, 3) uint8 frames,
    `width` pixels wide or less, by block means of k×k pixels (the frame is cut to a multiple
    of k first). Summed in integers, contiguous axis first: 85 ms for 25 frames of 1024×576,
    where a float mean over the block axes took 900 ms."""
    if frames_u8.ndim != 4 or frames_u8.shape[-1] != 3 or frames_u8.dtype != np.uint8:
        shape = f"{frames_u8.dtype} {frames_u8.shape}"
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {shape}")
    f, h, w, _ = frames_u8.shape
    k = max(1, w // width)
    hh, ww = (h // k) * k, (w // k) * k
    if hh == 0:
        raise ValueError(f"frames of {w}×{h} are too small to score")
    cut = np.ascontiguousarray(frames_u8[:, :hh, :ww])
    rows = cut.reshape(f * hh, ww // k, k * 3).sum(axis=-1, dtype=np.uint32)
    blocks = rows.reshape(f, hh // k, k, ww // k).sum(axis=2, dtype=np.uint32)
    return blocks.astype(np.float32) / np.float32(3 * k * k)


def halve(small: np.ndarray) -> np.ndarray:
    """2×2 block means of (F, h, w) frames (odd rows and columns dropped); unchanged when a
    side would fall below 8 pixels."""
    f, h, w = small.shape
    if h < 16 or w < 16:
        return small
    h2, w2 = h // 2, w // 2
    return small[:, : h2 * 2, : w2 * 2].reshape(f, h2, 2, w2, 2).mean(axis=(2, 4))


def motion(frames_u8: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, 0–1: near 0 means a static clip.
    Frame pair by frame pair in uint8 (|a - b| = max - min), summed exactly: the same value
    as the mean of the int16 differences, in half the time and a tenth of the memory."""
    if len(frames_u8) < 2:
        return 0.0
    total = 0
    for before, after in itertools.pairwise(frames_u8):
        change = np.maximum(before, after)
        change -= np.minimum(before, after)
        total += int(change.sum(dtype=np.uint64))
    return total / (frames_u8[1:].size * 255.0)


def displacement(small: np.ndarray) -> float:
    """Mean displacement between consecutive (F, h, w) grey frames, in % of the width: the
    phase-correlation shift of each TILE×TILE tile (a grid over the frame), its length
    averaged over tiles and frame pairs. Brightness and contrast changes shift nothing.
    Tiles are mean-free and Hann-windowed; their cross-power spectrum partly whitened."""
    f, h, w = small.shape
    if f < 2:
        return 0.0
    side = min(TILE, h, w)
    tiles = _tiles(small, side)  # (F, n, side, side)
    window = np.outer(np.hanning(side), np.hanning(side)).astype(np.float32)
    tiles = (tiles - tiles.mean(axis=(2, 3), keepdims=True)) * window
    spectra = np.fft.rfft2(tiles)
    cross = spectra[1:] * np.conj(spectra[:-1])
    # Partly whitened (the square root of the magnitude divided out): a fully whitened
    # spectrum weighs the pixel noise of empty high frequencies as much as the picture and
    # the peak wanders; an unwhitened one is broad. Scaling a frame's brightness or contrast
    # scales the surface and leaves its peak where it is. A Gaussian low-pass (PEAK_SIGMA
    # pixels) rounds the peak for the sub-pixel fit.
    cross /= np.sqrt(np.abs(cross)) + 1e-9
    fy, fx = np.fft.fftfreq(side)[:, None], np.fft.rfftfreq(side)[None, :]
    cross *= np.exp(-2 * (np.pi * PEAK_SIGMA) ** 2 * (fy**2 + fx**2))
    corr = np.fft.irfft2(cross, s=(side, side))  # (F-1, n, side, side)
    corr /= np.abs(corr).max(axis=(2, 3), keepdims=True) + 1e-12
    dy, dx = _peaks(corr)
    # A tile with no texture (flat on both frames) has no peak to find: it counts as still.
    flat = tiles.std(axis=(2, 3)) < 1e-3
    length = np.hypot(dy, dx)
    length[flat[1:] | flat[:-1]] = 0.0
    return float(length.mean() / w * 100.0)


def _tiles(small: np.ndarray, side: int) -> np.ndarray:
    """Non-overlapping side×side tiles on a grid centred in the frame: (F, n, side, side)."""
    f, h, w = small.shape
    rows, cols = h // side, w // side
    top, left = (h - rows * side) // 2, (w - cols * side) // 2
    grid = small[:, top : top + rows * side, left : left + cols * side]
    grid = grid.reshape(f, rows, side, cols, side).transpose(0, 1, 3, 2, 4)
    return grid.reshape(f, rows * cols, side, side)


def _peaks(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed sub-pixel (dy, dx) of the correlation peak of each (..., n, n) surface: the
    argmax, refined by a parabola through the logarithms of it and its two neighbours on each
    axis (Gaussian peak interpolation)."""
    n = corr.shape[-1]
    flat = corr.reshape(*corr.shape[:-2], n * n)
    at = flat.argmax(axis=-1)
    iy, ix = np.divmod(at, n)

    def refine(index: np.ndarray, axis: str) -> np.ndarray:
        def pick(offset: int) -> np.ndarray:
            y = (iy + offset) % n if axis == "y" else iy
            x = (ix + offset) % n if axis == "x" else ix
            return np.take_along_axis(flat, (y * n + x)[..., None], axis=-1)[..., 0]

        # The smoothed peak is close to a Gaussian, whose logarithm is a parabola.
        before, peak, after = (np.log(np.maximum(pick(o), 1e-6)) for o in (-1, 0, 1))
        denom = before - 2 * peak + after
        safe = np.where(np.abs(denom) > 1e-12, denom, 1.0)
        step = np.where(np.abs(denom) > 1e-12, 0.5 * (before - after) / safe, 0.0)
        signed = np.where(index > n // 2, index - n, index).astype(np.float64)
        return signed + np.clip(step, -0.5, 0.5)

    return refine(iy, "y"), refine(ix, "x")


def flicker(small: np.ndarray) -> float:
    """High-frequency temporal energy of coarse brightness, 0–1: the mean absolute second
    difference in time of the mean grey level of each of GRID×GRID regions, over 255."""
    f, h, w = small.shape
    if f < 3:
        return 0.0
    rows, cols = min(GRID, h), min(GRID, w)
    cut = small[:, : (h // rows) * rows, : (w // cols) * cols]
    means = cut.reshape(f, rows, h // rows, cols, w // cols).mean(axis=(2, 4))
    second = means[2:] - 2 * means[1:-1] + means[:-2]
    return float(np.abs(second).mean() / 255.0)


def chunk_jump(small: np.ndarray, decode_chunk_size: int) -> float | None:
    """Mean absolute change between frames across a decode-chunk boundary (frame t-1 → t
    where t is a multiple of the chunk) over the mean change between frames inside a chunk;
    None when the clip has no pair of one kind or the other (one chunk, or chunks of 1)."""
    f = len(small)
    if decode_chunk_size < 2 or f < 3:
        return None
    change = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2))  # change[t-1]: t-1 → t
    boundary = np.arange(1, f) % decode_chunk_size == 0
    if not boundary.any() or boundary.all():
        return None
    # The floor keeps a still clip at 1 (no seam) rather than 0/0.
    floor = 0.05
    ratio = (change[boundary].mean() + floor) / (change[~boundary].mean() + floor)
    return float(min(ratio, 100.0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two same-shaped 0–255 images, in dB, capped at PSNR_CAP."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse <= 0:
        return PSNR_CAP
    return float(min(PSNR_CAP, 10.0 * np.log10(255.0**2 / mse)))


def ssim(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Mean structural similarity of two same-shaped grey 0–255 images (Wang et al. 2004,
    with a win×win uniform window over the positions where it fits, as scikit-image's
    default): 1 for identical images, lower as structure, contrast or brightness differ."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    win = min(win, *a.shape)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n = win * win
    mean_a, mean_b = _box(a, win), _box(b, win)
    cov = n / (n - 1) if n > 1 else 1.0  # sample (co)variances, as scikit-image
    var_a = (_box(a * a, win) - mean_a**2) * cov
    var_b = (_box(b * b, win) - mean_b**2) * cov
    cov_ab = (_box(a * b, win) - mean_a * mean_b) * cov
    num = (2 * mean_a * mean_b + c1) * (2 * cov_ab + c2)
    den = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


def _box(x: np.ndarray, win: int) -> np.ndarray:
    """Means over every win×win window that fits in `x` (summed-area table)."""
    s = np.pad(x, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    total = s[win:, win:] - s[:-win, win:] - s[win:, :-win] + s[:-win, :-win]
    return total / (win * win)


# Badges: the few words a reviewer filters a batch by (`svdq report`'s contact sheet, the
# console, the bulk report's `badges` column) and the problems a job's automatic repair acts on
# (worker/quality.py): one rule for both, so a clip the worker repaired for being static is the
# clip the sheet calls static. The thresholds are the job's own `min_motion` / `max_flicker`
# (shared/fields.py, defaults MIN_MOTION / MAX_FLICKER); starting points from SVD's known
# failures, not laws: tune them on your own clips.
CHUNK_JUMP_MAX = 2.0  # a jump at decode-chunk seams twice the change inside chunks
BADGES = {
    "static": f"motion < min_motion (default {MIN_MOTION:g})",
    "flicker": (
        f"flicker > max_flicker (default {MAX_FLICKER:g}) or chunk_jump > {CHUNK_JUMP_MAX:g}"
    ),
}


def finite(value: Any) -> int | float | None:
    """`value` when it is a finite number, else None: missing, the wrong type, NaN or
    infinite (json.loads accepts NaN and Infinity in a result.json). A score that is not
    finite earns no badge, sorts as missing on the contact sheet and is left out of the
    report (a JSON-lines row holding NaN is not JSON)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value if number and math.isfinite(value) else None


def badges(scores: Any, min_motion: Any = MIN_MOTION, max_flicker: Any = MAX_FLICKER) -> list[str]:
    """The score badges a clip earns ("static", "flicker"), in BADGES order, under the job's
    thresholds (a threshold that is not a finite number counts as its default). `scores` comes
    from a record anyone with write access to the bucket could edit: anything but an object of
    numbers earns nothing, never an error."""
    if not isinstance(scores, dict):
        return []
    low = finite(min_motion)
    high = finite(max_flicker)
    low = MIN_MOTION if low is None else low
    high = MAX_FLICKER if high is None else high
    out = []
    move = finite(scores.get("motion"))
    if move is not None and move < low:
        out.append("static")
    flick, jump = finite(scores.get("flicker")), finite(scores.get("chunk_jump"))
    if (flick is not None and flick > high) or (jump is not None and jump > CHUNK_JUMP_MAX):
        out.append("flicker")
    return out
