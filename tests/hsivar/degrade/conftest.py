"""Shared fixture of the degradation tests: a smooth positive cube."""

from __future__ import annotations

import numpy as np
import pytest

C, H, W = 31, 64, 64


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    """(31, 64, 64) float32 in [0.2, 0.8]: smooth plus a little texture, no zero band (masks are unambiguous)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W] / 64.0
    bands = np.linspace(0, 1, C)[:, None, None]
    x = 0.5 + 0.2 * np.sin(3 * xx + 2 * bands) * np.cos(2 * yy - bands) + 0.05 * rng.random((C, H, W))
    return x.astype(np.float32)
