"""`svdq run`: the whole workflow in this process, no queue (load, fit, generate, export).

Worker code (it loads the model and runs it here), reached from the `svdq` command only
through producer.cli's lazy import of the worker parts, with the job flags already parsed.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from svdq.shared import formats
from svdq.shared.errors import ConfigError, InvalidJobError
from svdq.shared.images import check_image, fit, open_image, to_rgb
from svdq.shared.inputs import read_local
from svdq.shared.jobid import finalize
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.worker import engine, export
from svdq.worker.devices import local_profile
from svdq.worker.models import load_model


def run_local(image: str, output: str, params: dict[str, Any], random_seed: bool = False) -> int:
    """Generate one clip from the local file `image` into `output` (.mp4, .gif: see
    shared/formats.py); `params` are JobSpec fields from the job flags."""
    settings = Settings.from_env()
    out = Path(output)
    fmt = formats.by_suffix(out.suffix)
    if fmt is None:
        allowed = formats.in_words(formats.suffixes())
        raise InvalidJobError(f"--output={output!r} is not allowed: a {allowed} file")
    kind = fmt.name
    params = dict(params)
    params.setdefault("variant", settings.default_variant)
    params["formats"] = [kind]
    spec = JobSpec.from_dict({"image": image, **params})
    if spec.variant == "auto":
        raise ConfigError(
            "--variant auto needs a real model on a GPU host; name one (--variant svd-xt) "
            "or use --variant tiny to try the pipeline with random weights"
        )
    data = read_local(image, settings)
    limits: dict[str, int] = {
        "max_bytes": settings.max_input_bytes,
        "max_pixels": settings.max_input_pixels,
    }
    check_image(data, source=image, **limits)
    spec = finalize(spec, hashlib.sha256(data).hexdigest(), random_seed=random_seed)
    fitted = fit(
        to_rgb(open_image(data, source=image, **limits)), spec.width, spec.height, spec.resize
    )

    assert spec.variant
    t0 = time.perf_counter()
    model = load_model(settings, local_profile(settings, spec.variant))
    plan = engine.params_for(spec, model)
    print(
        f"loaded {plan.variant} ({model.profile.name}) in {time.perf_counter() - t0:.1f}s; "
        f"generating {plan.num_frames} frames {spec.width}×{spec.height}, seed {plan.seed}",
        file=sys.stderr,
    )

    def progress(phase: str, step: int, steps: int) -> None:
        print(f"\r{phase} {step}/{steps}   ", end="", file=sys.stderr, flush=True)

    frames, _ = engine.generate(model, spec, fitted, plan, progress)
    print(file=sys.stderr)
    frames_u8 = export.to_uint8(frames)
    blob = export.encode(kind, frames_u8, plan.output_fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    print(
        f"wrote {out} ({len(blob):,} bytes, {plan.num_frames} frames at {plan.output_fps} fps, "
        f"{time.perf_counter() - t0:.1f}s)"
    )
    if model.info.note:
        print(f"note: {model.info.note}", file=sys.stderr)
    return 0
