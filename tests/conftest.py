"""Shared fixtures: tiny model configs (CPU, seconds) and reproducible seeds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
torch.set_num_threads(2)

from hsivar.config import ModelConfig, preset  # noqa: E402
from hsivar.models.hsivar import HSIVAR  # noqa: E402

TINY_BANDS = 8


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    """The tiny preset with 8 bands: 32×32 tiles, 6 scales, a 2-block transformer."""
    return preset("tiny", bands=TINY_BANDS)


@pytest.fixture
def tiny_model(tiny_cfg: ModelConfig) -> HSIVAR:
    """A randomly initialised tiny model in eval mode (seeded)."""
    torch.manual_seed(0)
    return HSIVAR(tiny_cfg).eval()
