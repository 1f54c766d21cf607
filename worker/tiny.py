"""The `tiny` variant: a random-weight SVD pipeline built from the real diffusers classes.

It runs every line of the real pipeline code in well under a second on a CPU, which is what
development, CI and the demo need. Its output is noise and is labelled as such wherever shown.
The build is seeded, so two builds are bit-identical.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TINY_SEED = 0
# Marker written after save_pretrained completes: a directory without it is a broken build.
TINY_MARKER = "svdq-tiny.ok"


def build_tiny_pipeline():  # type: ignore[no-untyped-def]
    """Return a freshly initialised tiny StableVideoDiffusionPipeline (fp32, CPU)."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(TINY_SEED)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(2, 2),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
    )
    torch.manual_seed(TINY_SEED + 1)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
    )
    torch.manual_seed(TINY_SEED + 2)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,
            patch_size=32,
        )
    )
    # The real SVD scheduler settings (stabilityai/stable-video-diffusion-img2vid-xt).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        interpolation_type="linear",
        sigma_min=0.002,
        sigma_max=700.0,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    feature_extractor = CLIPImageProcessorPil(
        crop_size={"height": 224, "width": 224},
        size={"shortest_edge": 224},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        do_rescale=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )


def ensure_tiny_model(directory: Path) -> Path:
    """Build and save the tiny pipeline into `directory` unless a complete build is there.

    The build goes to a sibling temporary directory and is renamed into place, so two worker
    processes racing on first use never see a half-written model.
    """
    directory = Path(directory)
    if (directory / TINY_MARKER).exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory.parent))
    build_tiny_pipeline().save_pretrained(staging, safe_serialization=True)
    (staging / TINY_MARKER).write_text("tiny random-weight SVD pipeline built by svdq\n")
    try:
        os.replace(staging, directory)
    except OSError:
        # Another process won the race (the target exists and is not empty): keep theirs.
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        if not (directory / TINY_MARKER).exists():
            raise
    return directory


if __name__ == "__main__":  # python -m svdq.worker.tiny DIR: builds it outside a worker parent
    import sys

    print(ensure_tiny_model(Path(sys.argv[1])))
