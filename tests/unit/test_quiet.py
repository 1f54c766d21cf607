"""Defect 12 (issue 9): the fp16 "modules that should be kept in float32: []" warning, logged
by diffusers' `ModelMixin.to` on each of the SVD pipeline's VAE dtype casts (three per job),
is silenced by name; the same warning naming real modules is kept."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder

from svdq.worker.quiet import FP32_NOTICE_LOGGER, EmptyFp32Notice, silence_library_notices


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def records() -> Iterator[_Records]:
    logger = logging.getLogger(FP32_NOTICE_LOGGER)
    handler, filters = _Records(), list(logger.filters)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.filters[:] = filters


def _vae() -> AutoencoderKLTemporalDecoder:
    return AutoencoderKLTemporalDecoder(  # the tiny model's VAE (worker/tiny.py)
        down_block_types=("DownEncoderBlock2D",) * 2,
        block_out_channels=(32, 32),
        layers_per_block=1,
        latent_channels=4,
    )


def test_the_real_cast_warns_until_silenced(records: _Records) -> None:
    vae = _vae()
    logging.getLogger(FP32_NOTICE_LOGGER).filters[:] = []
    vae.to(dtype=torch.float16)  # what the pipeline does around its VAE upcast
    assert any("should be kept in float32: []" in m for m in records.messages)
    records.messages.clear()
    silence_library_notices()
    silence_library_notices()  # idempotent
    vae.to(dtype=torch.float32)
    vae.to(dtype=torch.float16)
    assert records.messages == []


def test_a_warning_that_names_modules_is_kept() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(FP32_NOTICE_LOGGER, logging.WARNING, "x", 1, message, None, None)

    notice = EmptyFp32Notice()
    named = "There are modules in X that should be kept in float32: ['norm']. Casting ..."
    assert notice.filter(record(named))
    assert not notice.filter(record(named.replace("['norm']", "[]")))
