"""Clip shapes (width × height × frames) written as text, for SVDQ_WARM_SHAPES: the shapes a
compiled worker compiles at load and so the only ones it runs compiled (worker/models.py
`warm_up`; any other shape runs eagerly, worker/engine.py). Each number is checked against the
JobSpec's own bounds (shared/fields.py), so a shape no job can ask for is never warmed.
"""

from __future__ import annotations

from svdq.shared.errors import ConfigError, InvalidJobError
from svdq.shared.fields import FIELD_BY_NAME
from svdq.shared.spec import check_field

Shape = tuple[int, int, int | None]  # width, height, frames (None: the variant's own)
Resolved = tuple[int, int, int]

# A job's default size (shared/fields.py) at the variant's own frame count.
DEFAULT = f"{FIELD_BY_NAME['width'].default}x{FIELD_BY_NAME['height'].default}"
ALLOWED = (
    "a comma-separated list of WIDTHxHEIGHT or WIDTHxHEIGHTxFRAMES (frames left out: the "
    "variant's own), e.g. 1024x576,768x768x14"
)
_PARTS = ("width", "height", "num_frames")


def parse(name: str, raw: str) -> tuple[Shape, ...]:
    """The shapes `raw` lists, first-seen order, duplicates dropped; ConfigError naming `name`,
    the value, the bad shape and what is allowed otherwise."""
    shapes: list[Shape] = []
    for item in raw.split(","):
        text = item.strip()
        parts = text.lower().split("x")
        if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(
                f"{name}={raw!r} is not allowed: {text!r} is not WIDTHxHEIGHT or "
                f"WIDTHxHEIGHTxFRAMES; allowed: {ALLOWED}"
            )
        numbers = [int(p) for p in parts]
        for field, number in zip(_PARTS, numbers, strict=False):
            try:
                check_field(FIELD_BY_NAME[field], number)
            except InvalidJobError as exc:  # "width=100 is not allowed: an integer 64–2048…"
                raise ConfigError(f"{name}={raw!r} is not allowed: in {text!r}, {exc}") from None
        shape: Shape = (numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None)
        if shape not in shapes:
            shapes.append(shape)
    return tuple(shapes)


def resolve(shapes: tuple[Shape, ...], frames: int) -> tuple[Resolved, ...]:
    """`shapes` with a left-out frame count made the variant's `frames`, duplicates dropped."""
    out: list[Resolved] = []
    for width, height, count in shapes:
        shape = (width, height, count or frames)
        if shape not in out:
            out.append(shape)
    return tuple(out)


def text(shape: tuple[int, ...]) -> str:
    """`1024x576x25`: a shape as SVDQ_WARM_SHAPES and result.json write it."""
    return "x".join(map(str, shape))
