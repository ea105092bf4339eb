"""The classical baselines of the family table restore their family better than doing nothing."""

from __future__ import annotations

import numpy as np
import pytest

from hsivar.classical import OPTIONAL_BASELINES, Baseline
from hsivar.degrade import FAMILIES, Family, degrade_for_test
from hsivar.metrics import psnr
from hsivar.synth import make_cube


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A synthetic demo cube: (16, 48, 48) float32 in [0, 1], smooth spectra, spatial texture."""
    return make_cube(seed=5, size=48, bands=16)[0]


CASES = [(f, b) for f in FAMILIES for b in f.baselines]


@pytest.mark.parametrize("fam,baseline", CASES, ids=[f"{f.name}-{b.name}" for f, b in CASES])
def test_baselines_improve_psnr_at_the_middle_level(clean: np.ndarray, fam: Family, baseline: Baseline) -> None:
    degraded, record = degrade_for_test(clean, fam.name, fam.middle_level)
    degraded = np.asarray(degraded, np.float32)
    restored = baseline.fn(degraded, float(fam.middle_level))
    assert restored.shape == clean.shape and restored.dtype == np.float32 and np.isfinite(restored).all()
    region = (slice(None),) * 3
    if baseline.name == "richardson_lucy":
        # Richardson–Lucy does not model the zero-padded border of the blur (it loses PSNR there): score the
        # interior, k pixels in from every side.
        k = int(fam.middle_level)
        region = (slice(None), slice(k, -k), slice(k, -k))
    before = psnr(degraded[region], clean[region], record.band_mask)
    after = psnr(restored[region], clean[region], record.band_mask)
    assert after > before + 0.5, (baseline.name, before, after)


def test_the_first_estimate_is_the_strongest_baseline_of_every_family(clean: np.ndarray) -> None:
    """The table lists the strongest first: the classical first estimate beats the simple methods on every family
    (not its own blind forms, ``blind_*``, which estimate what the level tells it: a low-light cube's estimated gain
    can partly undo its tone curve, which the true exposure does not)."""
    for fam in FAMILIES:
        degraded, record = degrade_for_test(clean, fam.name, fam.middle_level)
        degraded = np.asarray(degraded, np.float32)
        scores = [psnr(b.fn(degraded, float(fam.middle_level)), clean, record.band_mask) for b in fam.baselines
                  if not b.name.startswith("blind_")]
        assert fam.baselines[0].name == "first_estimate"
        assert scores[0] >= max(scores) - 0.05, (fam.name, [b.name for b in fam.baselines], scores)


def test_bm4d_is_opt_in_with_a_clear_message(clean: np.ndarray) -> None:
    baseline, families = OPTIONAL_BASELINES["bm4d"]
    assert families == ("gaussian", "complex") and baseline not in {b for f in FAMILIES for b in f.baselines}
    try:
        import bm4d  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'hsivar\[bm4d\]'.*non-commercial"):
            baseline.fn(clean, 30)
