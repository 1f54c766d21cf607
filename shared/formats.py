"""The output formats a job can ask for, in one table.

Validation and the JSON Schema (shared/spec.py via shared/fields.py), object keys
(shared/constants.py), upload content types, the `--format` choices and help, `svdq run -o`'s
suffixes and the worker's encode step all read this table, so a format is known in one place.

Adding a format (say `webm`) changes exactly two places:

1. a row in `FORMATS` below: name, file name, content type, help;
2. its encoder: a function in worker/export.py and its entry in `worker.export.ENCODERS`
   (numpy and ffmpeg stay on the worker side; this module imports nothing).

Everything else follows from the row. A row must be written here, in the source: some consumers
read the table once at import (the JSON Schema's field choices in shared/fields.py), so a row
appended at run time would not reach them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class OutputFormat:
    """One kind of file a job can deliver."""

    name: str  # in JobSpec.formats, `--format`, result.json's "outputs" and ENCODERS
    file_name: str  # object name under results/<job_id>/
    content_type: str  # sent with the upload, so a browser plays the presigned link
    help: str  # a few words for `--format` help

    @property
    def suffix(self) -> str:
        """The file name's extension with its dot: `.mp4`."""
        return PurePosixPath(self.file_name).suffix


FORMATS: tuple[OutputFormat, ...] = (
    OutputFormat("mp4", "clip.mp4", "video/mp4", "H.264 video"),
    OutputFormat("gif", "clip.gif", "image/gif", "animated GIF that loops"),
)
# Every job also gets a poster (its first frame) whatever formats it asked for: an output,
# but not a choice.
POSTER = OutputFormat("poster", "poster.jpg", "image/jpeg", "the first frame")
# A job with `candidates` > 1 and `keep_candidates` also keeps the clips it did not pick, as
# MP4s named by their candidate index: output kind "candidate-<i>", file candidates/<i>.mp4.
MAX_CANDIDATES = 8
CANDIDATES = tuple(
    OutputFormat(f"candidate-{i}", f"candidates/{i}.mp4", "video/mp4", f"candidate {i} (MP4)")
    for i in range(MAX_CANDIDATES)
)
# Names that stand for several formats at once: accepted wherever a format name is.
ALIASES: dict[str, tuple[str, ...]] = {"both": ("mp4", "gif")}
DEFAULT: tuple[str, ...] = ("mp4",)


def names() -> tuple[str, ...]:
    """The formats a job may ask for, in table order."""
    return tuple(f.name for f in FORMATS)


def output(kind: str) -> OutputFormat:
    """The row for output `kind` (a format, `poster` or `candidate-<i>`); KeyError naming the
    allowed kinds."""
    for row in (*FORMATS, POSTER, *CANDIDATES):
        if row.name == kind:
            return row
    allowed = ", ".join((*names(), POSTER.name, f"candidate-0…{MAX_CANDIDATES - 1}"))
    raise KeyError(f"output kind {kind!r} is not one of {allowed}")


def candidate_kind(index: int) -> str:
    """The output kind of the candidate clip `index` (0-based): "candidate-3"."""
    return CANDIDATES[index].name


def expand(name: str) -> tuple[str, ...]:
    """The format names `name` stands for: an alias's formats, else `name` itself."""
    return ALIASES.get(name, (name,))


def suffixes() -> tuple[str, ...]:
    """The file extensions of the formats (`.mp4`, `.gif`), for `svdq run -o`."""
    return tuple(f.suffix for f in FORMATS)


def by_suffix(suffix: str) -> OutputFormat | None:
    """The format whose files end in `suffix` (`.mp4`, any case), or None."""
    lowered = suffix.lower()
    return next((f for f in FORMATS if f.suffix == lowered), None)


def in_words(items: tuple[str, ...]) -> str:
    """`a, b or c`, for help and error text."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def choices_help() -> str:
    """`mp4 (H.264 video), gif (…) or both`: every name `--format` accepts, explained."""
    rows = [f"{f.name} ({f.help})" for f in FORMATS]
    return in_words((*rows, *ALIASES))
