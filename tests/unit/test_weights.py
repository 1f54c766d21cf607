"""Which weight files a real variant loads from its folder (no weights needed: file names)."""

from __future__ import annotations

from pathlib import Path

from svdq.worker.models import weights_variant


def touch(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_the_readme_download_fp16_only_loads_for_every_dtype(tmp_path: Path) -> None:
    # `huggingface-cli download ... --include '*.fp16.safetensors'` leaves only these.
    folder = touch(
        tmp_path,
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "image_encoder/model.fp16.safetensors",
    )
    assert weights_variant(folder) == "fp16"


def test_a_full_precision_download_loads_its_own_files(tmp_path: Path) -> None:
    folder = touch(
        tmp_path, "unet/diffusion_pytorch_model.safetensors", "image_encoder/model.safetensors"
    )
    assert weights_variant(folder) is None
