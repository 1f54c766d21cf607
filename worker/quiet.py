"""Library notices that tell a worker's reader nothing, silenced by name (and nothing else).

diffusers 0.42 `ModelMixin.to` (diffusers/models/modeling_utils.py) warns on every dtype cast:

    fp32_modules = self._keep_in_fp32_modules or []
    ...
    if dtype_present_in_args and fp32_modules is not None:
        logger.warning(f"There are modules in {...} that should be kept in float32: "
                       f"{fp32_modules}. Casting directly with `to()` can lead to ...")

`fp32_modules` is never None there, so the SVD pipeline's own fp16 VAE upcast and back
(`self.vae.to(dtype=torch.float32)` ... `self.vae.to(dtype=torch.float16)`,
pipeline_stable_video_diffusion.py) logs it, with an empty list, several times per job. Only
that empty-list form is dropped: a model that does name modules to keep in float32 still warns.
"""

from __future__ import annotations

import logging

FP32_NOTICE_LOGGER = "diffusers.models.modeling_utils"  # diffusers' get_logger(__name__)
EMPTY_FP32_NOTICE = "that should be kept in float32: []."


class EmptyFp32Notice(logging.Filter):
    """Drops diffusers' "modules that should be kept in float32: []" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return EMPTY_FP32_NOTICE not in record.getMessage()


_FILTER = EmptyFp32Notice()


def silence_library_notices() -> None:
    """Install the filters (idempotent). Call before the pipeline first runs."""
    logger = logging.getLogger(FP32_NOTICE_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
