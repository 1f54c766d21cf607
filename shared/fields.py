"""The JobSpec fields, their defaults and bounds: one table that validation, the JSON Schema
and the command-line flags are all built from. Names are diffusers' own."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from svdq.shared import formats, variants

RESIZE_MODES = ("crop", "pad", "stretch")
SEED_MAX = 2**32 - 1
MAX_SIDE = 2048
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SAFE_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
MAX_PREFIX_LEN = 200
MAX_URL_LEN = 2048
MAX_METADATA_BYTES = 16 * 1024
# diffusers' defaults for SVD's per-frame guidance ramp (see the fields below).
MIN_GUIDANCE_SCALE = 1.0
MAX_GUIDANCE_SCALE = 3.0
MAX_GUIDANCE = 20
# Quality checks and repair (worker/quality.py): what a static or flickering clip is, and how
# many more generations a job may spend fixing it; candidates (one image, N seeds).
CHECK_ACTIONS = ("keep", "retry")
MIN_MOTION = 0.005
MAX_FLICKER = 0.01
MAX_REPAIR_ATTEMPTS = 3


@dataclass(frozen=True)
class Field:
    """One JobSpec field: its JSON type, default, bounds and the help a person reads."""

    name: str
    type: str  # JSON Schema type: integer, number, boolean, string, array, object
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    multiple_of: int | None = None
    nullable: bool = False
    flag: str | None = None  # command-line flag, when it is not --<name with dashes>

    def allowed(self) -> str:
        """What values this field accepts, in words, for error messages."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        parts = []
        if self.minimum is not None and self.maximum is not None:
            parts.append(f"{_num(self.minimum)}–{_num(self.maximum)}")
        elif self.minimum is not None:
            parts.append(f">= {_num(self.minimum)}")
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        if self.type == "boolean":
            return "true or false"
        kind = {"integer": "an integer", "number": "a number"}.get(self.type, self.type)
        return f"{kind} " + ", ".join(parts) if parts else kind


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


FIELDS: tuple[Field, ...] = (
    Field("image", "string", None, "input image: a local path, s3://bucket/key or https:// URL"),
    Field(
        "variant",
        "string",
        None,
        f"model: {variants.help_text()}",
        choices=variants.VARIANTS,
        nullable=True,
    ),
    Field(
        "num_frames",
        "integer",
        None,
        f"frames to generate (default: the variant's, {variants.real_frames_help()})",
        minimum=2,
        maximum=64,
        nullable=True,
        flag="--frames",
    ),
    Field(
        "num_inference_steps",
        "integer",
        25,
        "denoising steps; above 30 rarely helps, below 20 degrades visibly",
        minimum=1,
        maximum=150,
        flag="--steps",
    ),
    Field(
        "motion_bucket_id",
        "integer",
        127,
        "how much the scene moves: 180+ dramatic, below 100 subtle",
        minimum=0,
        maximum=255,
    ),
    Field(
        "noise_aug_strength",
        "number",
        0.02,
        "noise added to the conditioning image; 0.1–0.3 "
        "moves more and drifts further from the source",
        minimum=0,
        maximum=1,
    ),
    # diffusers 0.42, StableVideoDiffusionPipeline.__call__: "min_guidance_scale (`float`,
    # *optional*, defaults to 1.0): The minimum guidance scale. Used for the classifier free
    # guidance with first frame." / "max_guidance_scale (`float`, *optional*, defaults to
    # 3.0): ... with last frame."; the ramp is `torch.linspace(min_guidance_scale,
    # max_guidance_scale, num_frames)`, one scale per frame, and classifier-free guidance (a
    # second UNet pass on every step) runs only when `guidance_scale.max() > 1`.
    Field(
        "min_guidance_scale",
        "number",
        MIN_GUIDANCE_SCALE,
        "classifier-free guidance on the first frame; it rises linearly to max_guidance_scale "
        "on the last. Higher follows the input image more closely on that frame",
        minimum=0,
        maximum=MAX_GUIDANCE,
    ),
    Field(
        "max_guidance_scale",
        "number",
        MAX_GUIDANCE_SCALE,
        "classifier-free guidance on the last frame (>= min_guidance_scale); higher keeps "
        "late frames closer to the image, lower lets them move more; 1 or less on both skips "
        "guidance (about twice as fast, usually worse)",
        minimum=0,
        maximum=MAX_GUIDANCE,
    ),
    Field("fps", "integer", 7, "conditioning frame rate the model is told", minimum=1, maximum=60),
    Field(
        "output_fps",
        "integer",
        None,
        "playback frame rate of the exported clip (default: fps)",
        minimum=1,
        maximum=60,
        nullable=True,
    ),
    Field(
        "decode_chunk_size",
        "integer",
        None,
        "frames the VAE decodes at once (default: the "
        "worker's memory profile); smaller uses less memory and can flicker",
        minimum=1,
        maximum=64,
        nullable=True,
    ),
    Field(
        "seed",
        "integer",
        None,
        "random seed (default: derived from the image and the parameters that shape the clip, "
        "not the repair/candidate options, so a re-run reproduces the clip and a repair's first "
        "try or candidate 0 is the plain job's clip; 'random' draws one and records it)",
        minimum=0,
        maximum=SEED_MAX,
        nullable=True,
    ),
    Field(
        "width",
        "integer",
        1024,
        "output width in pixels",
        minimum=64,
        maximum=MAX_SIDE,
        multiple_of=64,
    ),
    Field(
        "height",
        "integer",
        576,
        "output height in pixels",
        minimum=64,
        maximum=MAX_SIDE,
        multiple_of=64,
    ),
    Field(
        "resize",
        "string",
        "crop",
        "fit the image to width×height: crop (center crop, then "
        "resize), pad (letterbox) or stretch",
        choices=RESIZE_MODES,
    ),
    Field(
        "formats",
        "array",
        formats.DEFAULT,
        f"outputs besides the poster: {formats.choices_help()}",
        choices=formats.names(),
        flag="--format",
    ),
    Field(
        "on_static",
        "string",
        "keep",
        "a clip that hardly moves (motion below min_motion): keep it, or retry it with the "
        "guide's fix (motion_bucket_id 180-200, noise_aug_strength 0.1, a seed derived from "
        "the job's), up to repair_attempts more generations",
        choices=CHECK_ACTIONS,
    ),
    Field(
        "on_flicker",
        "string",
        "keep",
        "a clip that flickers (flicker above max_flicker): keep it, or retry it with the "
        "largest decode chunk the worker's memory profile carries",
        choices=CHECK_ACTIONS,
    ),
    Field(
        "min_motion",
        "number",
        MIN_MOTION,
        "below this motion score (mean frame-to-frame change, 0-1) a clip counts as static",
        minimum=0,
        maximum=1,
    ),
    Field(
        "max_flicker",
        "number",
        MAX_FLICKER,
        "above this flicker score (0-1) a clip counts as flickering",
        minimum=0,
        maximum=1,
    ),
    Field(
        "repair_attempts",
        "integer",
        2,
        "at most this many more generations to repair a static or flickering clip (each "
        "costs one more clip's GPU time); the best one is kept",
        minimum=1,
        maximum=MAX_REPAIR_ATTEMPTS,
    ),
    Field(
        "candidates",
        "integer",
        1,
        "generate this many clips from the image (candidate 0 the job's seed, the others seeds "
        "derived from it) and keep the best as clip.mp4; costs about N times the GPU time",
        minimum=1,
        maximum=formats.MAX_CANDIDATES,
    ),
    Field(
        "keep_candidates",
        "boolean",
        False,
        "also store the candidates not kept, as candidates/<i>.mp4 (with candidates > 1 it "
        "changes the job id: another set of outputs)",
    ),
    Field("priority", "integer", 5, "queue priority, 9 runs first", minimum=0, maximum=9),
    Field(
        "job_id",
        "string",
        None,
        "job id (default: derived from the image and parameters); "
        "letters, digits, . _ -, up to 128",
        nullable=True,
    ),
    Field(
        "output_prefix",
        "string",
        None,
        "folder in the bucket the results go under",
        nullable=True,
        flag="--prefix",
    ),
    Field(
        "callback_url",
        "string",
        None,
        "URL that receives the result JSON when the job ends",
        nullable=True,
    ),
    Field(
        "metadata",
        "object",
        None,
        "your own key/values, passed through untouched",
        nullable=True,
        flag="--meta",
    ),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
