"""The clip scores (shared/scores.py) on synthetic clips whose ordering is obvious: a still, a
pan, a zoom, a brightness flicker, chunk seams and a drift from the input."""

from __future__ import annotations

import numpy as np
import pytest

from svdq.shared import scores

W, H, F = 128, 64, 12


_RNG = np.random.default_rng(0)
# Random plane waves: wavenumber (2–16 cycles a width), direction, amplitude, RGB phases.
_WAVES = [
    (
        _RNG.uniform(2, 16) * 2 * np.pi,
        _RNG.uniform(0, np.pi),
        _RNG.uniform(0.3, 1.0),
        _RNG.uniform(0, 2 * np.pi, 3),
    )
    for _ in range(12)
]


def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth RGB texture defined everywhere (a sum of plane waves), so a pan or a zoom is
    exact sampling, not interpolation; about -2…2."""
    out = np.zeros((*np.broadcast(x, y).shape, 3))
    for k, th, amp, phase in _WAVES:
        out += amp * np.sin((k * (np.cos(th) * x + np.sin(th) * y))[..., None] + phase)
    return out / np.sqrt(len(_WAVES))


def clip(kind: str, frames: int = F) -> np.ndarray:
    """uint8 (F, H, W, 3): still, pan (0.6 % of the width a frame), zoom (4 % a frame about
    the centre), flicker (a still whose brightness jumps ±25 levels a frame), seams (a pan
    whose brightness steps every 4 frames, as chunks decoded apart), drift (a still whose
    every frame is shifted and darker than its first-frame input)."""
    y, x = np.mgrid[0:H, 0:W] / W
    rng = np.random.default_rng(1)
    still, drifted = texture(x, y), texture(x + 0.05, y)
    out = []
    for t in range(frames):
        img, offset = still, 0.0
        if kind in ("pan", "seams"):
            img = texture(x + 0.006 * t, y)
        elif kind == "zoom":
            s, cx, cy = 1.04**t, 0.5, H / W / 2
            img = texture(cx + (x - cx) / s, cy + (y - cy) / s)
        elif kind == "flicker":
            offset = rng.uniform(-25, 25)
        elif kind == "drift":
            img, offset = drifted, -30.0
        if kind == "seams":
            offset = 20.0 * (t // 4)
        out.append(np.clip(img * 40 + 128 + offset, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    return {k: clip(k) for k in ("still", "pan", "zoom", "flicker", "seams", "drift")}


@pytest.fixture(scope="module")
def scored(clips: dict[str, np.ndarray]) -> dict[str, dict]:
    source = clips["still"][0]
    return {k: scores.score_clip(c, source, decode_chunk_size=4) for k, c in clips.items()}


def test_motion_orders_still_pan_zoom(scored: dict[str, dict]) -> None:
    for name in ("motion", "displacement"):
        still, pan, zoom = (scored[k][name] for k in ("still", "pan", "zoom"))
        assert still == 0.0 < pan < zoom, name


def test_displacement_measures_a_pan_in_percent_of_the_width(scored: dict[str, dict]) -> None:
    # 0.6 % of the width a frame; the Hann window pulls phase correlation's estimate of a
    # small shift towards 0 by about a fifth.
    assert 0.4 < scored["pan"]["displacement"] < 0.7


def test_a_brightness_flicker_fools_motion_but_not_displacement(scored: dict[str, dict]) -> None:
    flick, pan = scored["flicker"], scored["pan"]
    assert flick["motion"] > pan["motion"]  # mean |Δ| counts the brightness jumps as motion
    assert flick["displacement"] < pan["displacement"] / 5  # phase correlation does not
    assert flick["flicker"] > 20 * pan["flicker"]
    assert pan["flicker"] < 0.002 and scored["still"]["flicker"] == 0.0


def test_chunk_jump_finds_seams_every_decode_chunk(scored: dict[str, dict]) -> None:
    assert scored["seams"]["chunk_jump"] > 3
    assert scored["pan"]["chunk_jump"] == pytest.approx(1.0, abs=0.1)
    assert scored["still"]["chunk_jump"] == 1.0
    pan = scores.small_grey(clip("pan"), 64)
    assert scores.chunk_jump(pan, F) is None  # one chunk: no boundary
    assert scores.chunk_jump(pan, 1) is None  # chunks of 1: nothing inside a chunk
    assert scores.chunk_jump(pan, 0) is None  # unknown


def test_fidelity_drift_scores_lower_than_still(scored: dict[str, dict]) -> None:
    still, drift = scored["still"], scored["drift"]
    assert still["psnr"] == scores.PSNR_CAP and still["ssim"] == 1.0
    assert drift["psnr"] < 25 and drift["ssim"] < 0.7
    assert "psnr" not in scores.score_clip(clip("still", 3))  # no input given: no fidelity


def test_psnr_and_ssim_known_values() -> None:
    a = np.full((16, 16), 100.0)
    assert scores.psnr(a, a + 1) == pytest.approx(10 * np.log10(255**2), abs=1e-9)
    ramp = np.tile(np.arange(32.0) * 8, (32, 1))
    assert scores.ssim(ramp, ramp) == pytest.approx(1.0)
    assert scores.ssim(ramp, 255 - ramp) < 0  # anti-correlated structure


def test_short_and_odd_clips() -> None:
    one = clip("still", 1)
    assert scores.score_clip(one, one[0], 4) == {
        "motion": 0.0,
        "displacement": 0.0,
        "flicker": 0.0,
        "chunk_jump": None,
        "psnr": scores.PSNR_CAP,
        "ssim": 1.0,
    }
    odd = np.random.default_rng(0).integers(0, 256, (3, 70, 97, 3), dtype=np.uint8)
    result = scores.score_clip(odd, odd[0], 2)
    assert all(v is None or np.isfinite(v) for v in result.values())
    with pytest.raises(ValueError, match="uint8"):
        scores.small_grey(odd.astype(np.float32), 64)


def test_motion_is_the_mean_absolute_frame_difference() -> None:
    frames = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    expected = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() / 255
    assert scores.motion(frames) == pytest.approx(expected, rel=1e-12)
