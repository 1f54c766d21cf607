"""Adversary review of candidates (issue 14 item 3) on the tiny pipeline, in-process: what a
clip is, by seed, when it is a candidate. A strict xfail fails on the code as reviewed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from svdq.shared.spec import JobSpec
from tests.integration.helpers import FAST

pytestmark = pytest.mark.integration


def test_candidate_zero_is_the_clip_its_seed_makes_alone(model_dir):
    """README: "candidate 0 has the job's seed". The plain call (seeds=None) and the
    candidates call with that one seed (seeds=(seed,)) should make the same clip; the same
    holds for a repair try, which runs batched=True in a candidates job and batched=False
    otherwise (worker/quality.py _repair), so one repair plan makes two different clips."""
    from PIL import Image

    from svdq.shared.settings import Settings
    from svdq.worker import engine
    from svdq.worker.models import load_model
    from svdq.worker.profiles import CPU_PROFILE

    settings = dataclasses.replace(Settings.from_env({}), model_dir=model_dir)
    model = load_model(settings, CPU_PROFILE)
    spec = JobSpec.from_dict({"image": "x.png", "seed": 5, "job_id": "c0", **FAST, "num_frames": 4})
    image = Image.new("RGB", (128, 64), (200, 80, 30))
    params = engine.params_for(spec, model)
    plain, _ = engine.generate(model, spec, image, params)
    candidate, _ = engine.generate(model, spec, image, params, seeds=(spec.seed,))
    assert np.abs(candidate[0] - plain).max() < 1e-4
