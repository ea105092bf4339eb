"""The classical baselines of the family table restore their family better than doing nothing."""

from __future__ import annotations

import numpy as np
import pytest

from hsivar.degrade import FAMILIES, Family, degrade_for_test
from hsivar.metrics import psnr
from hsivar.synth import make_cube


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A synthetic demo cube: (16, 48, 48) float32 in [0, 1], smooth spectra, spatial texture."""
    return make_cube(seed=5, size=48, bands=16)[0]


@pytest.mark.parametrize("fam", [f for f in FAMILIES if f.baseline is not None], ids=lambda f: f.name)
def test_baseline_improves_psnr_at_the_middle_level(clean: np.ndarray, fam: Family) -> None:
    degraded, record = degrade_for_test(clean, fam.name, fam.middle_level)
    degraded = np.asarray(degraded, np.float32)
    restored = fam.baseline.fn(degraded, float(fam.middle_level))
    assert restored.shape == clean.shape and restored.dtype == np.float32 and np.isfinite(restored).all()
    region = (slice(None),) * 3
    if fam.name == "blur":
        # Richardson–Lucy does not model the zero-padded border of the blur (it loses PSNR there): score the
        # interior, k pixels in from every side.
        k = int(fam.middle_level)
        region = (slice(None), slice(k, -k), slice(k, -k))
    before = psnr(degraded[region], clean[region], record.band_mask)
    after = psnr(restored[region], clean[region], record.band_mask)
    assert after > before + 0.5, (fam.baseline.name, before, after)
