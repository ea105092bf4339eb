"""The calibrated uncertainty: its features, the fit that makes σ an error bar, and how ``finish`` reports it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsivar.config import ModelConfig, UncertaintyConfig
from hsivar.prepared import calibrated_std, finish, prepare_cube
from hsivar.synth import make_cube
from hsivar.uncertainty import FEATURES, coverage_stats, features, fit_coefficients, mix, std_from


def test_features_of_a_cube() -> None:
    x = np.zeros((4, 6, 6), np.float32)
    x[:, :, 3:] = 1.0  # a vertical edge, the same in every band
    x[2] += 0.5  # a bump in band 2
    f = features(x, start01=np.zeros_like(x), noise_sigma=np.array([0.0, 0.1, 0.2, 0.3]))
    assert f.shape == (len(FEATURES), 4, 6, 6) and f.dtype == np.float32
    spatial, spectral, correction, noise, floor = f
    assert spatial[0, 2, 2] == pytest.approx(0.25) and spatial[0, 2, 1] == 0  # (1 − 0)/2 squared, beside the edge
    assert spatial[0, 0, 2] == pytest.approx(0.25)  # border rows keep their horizontal part
    assert spectral[1, 0, 0] == pytest.approx(0.0625) and spectral[2, 0, 0] == 0  # central: (0.5 − 0)/2 squared
    assert spectral[0, 0, 0] == 0 and spectral[3, 0, 0] == pytest.approx(0.25)  # one-sided at the ends
    np.testing.assert_allclose(correction, x ** 2)
    np.testing.assert_allclose(noise[:, 0, 0], [0.0, 0.01, 0.04, 0.09], rtol=1e-6)
    assert (floor == 1).all()
    none = features(x, None, None)
    assert not none[2].any() and not none[3].any()


def test_the_fit_makes_sigma_an_error_bar_on_fresh_data() -> None:
    rng = np.random.default_rng(0)
    n = 60_000
    f = np.stack([rng.uniform(0, 1, n) ** 2, rng.uniform(0, 0.5, n) ** 2, np.zeros(n), np.zeros(n), np.ones(n)])
    true = np.array([4e-3, 1e-2, 0.0, 0.0, 1e-4])
    e = rng.normal(0, np.sqrt(true @ f))
    a = fit_coefficients(e, f, seed=1)
    assert a.shape == (len(FEATURES),) and (a >= 0).all()
    f2 = f[:, rng.permutation(n)]
    e2 = rng.normal(0, np.sqrt(true @ f2))  # fresh errors of the same law
    stats = coverage_stats(e2, std_from(f2, a))
    assert 0.93 <= stats["cover_2sigma"] <= 0.97
    assert 0.62 <= stats["cover_1sigma"] <= 0.74  # a Gaussian error: ≈68 % within 1σ
    assert stats["std_error_corr"] > 0.3
    np.testing.assert_allclose(a[:2] / true[:2], 1.0, atol=0.25)  # the law itself is recovered


def test_fit_rejects_bad_input_and_falls_back_to_the_floor() -> None:
    with pytest.raises(ValueError, match="errors"):
        fit_coefficients(np.zeros(3), np.zeros((len(FEATURES), 4)))
    with pytest.raises(ValueError, match="coverage"):
        fit_coefficients(np.zeros(3), np.zeros((len(FEATURES), 3)), coverage=1.0)
    f = np.zeros((len(FEATURES), 100))
    f[-1] = 1.0
    a = fit_coefficients(np.full(100, 0.01), f)
    assert a[-1] == pytest.approx(0.005 ** 2, rel=1e-6)  # 0.01 = 2σ for every entry


def test_mix_and_sample_spread() -> None:
    a = mix([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 3.0]], [3.0, 1.0])  # normalised weights 0.75 / 0.25
    np.testing.assert_allclose(a, [0.75, 0, 0, 0, 0.75])
    with pytest.raises(ValueError, match="task weights"):
        mix([[1.0] * 5], [0.5, 0.5])
    f = np.ones((len(FEATURES), 2, 2, 2), np.float32)
    s = std_from(f, np.array([0, 0, 0, 0, 9e-4]), sample_var01=np.full((2, 2, 2), 16e-4, np.float32))
    np.testing.assert_allclose(s, 0.05, rtol=1e-5)  # √(9e-4 + 16e-4): added in quadrature


def test_finish_reports_the_calibrated_bar_in_input_units_with_kept_and_nodata_entries() -> None:
    cube = (100 + 100 * make_cube(seed=1, size=16, bands=3)[0]).astype(np.float32)  # smooth: no noise detected
    cube[1, 2:6, 2:6] = 0.0  # missing pixels: detected, the other entries are kept exactly
    cube[:, 0, 0] = -1.0  # nodata
    prep = prepare_cube(cube, bands=3, tile=16, overlap=4, nodata=-1.0, estimate=True)
    assert prep.kept is not None and prep.kept.any()
    samples = torch.stack([prep.cube01[:, :16, :16] + 0.01 * k for k in range(3)])
    coef = np.array([0, 0, 0, 0, 1e-4])  # a floor of σ = 0.01 in [0, 1] units
    std01 = calibrated_std(prep, samples, coef)
    mean, std = finish(prep, samples, std01)
    free = ~prep.kept & ~prep.mask
    expected = np.sqrt(1e-4 + 1e-4) * prep.scale  # floor and the samples' unbiased variance (0.01²)
    np.testing.assert_allclose(std[free], expected, rtol=1e-4)
    assert (std[prep.kept] == 0).all() and np.isnan(std[prep.mask]).all()
    one = finish(prep, samples[:1], calibrated_std(prep, samples[:1], coef))[1]
    np.testing.assert_allclose(one[free], 0.01 * prep.scale, rtol=1e-4)  # one decoding: the fitted part alone
    assert finish(prep, samples[:1])[1] is None  # uncalibrated, one sample: no std


def test_the_config_checks_the_uncertainty() -> None:
    rows = ((0.0,) * len(FEATURES),)
    with pytest.raises(ValueError, match="rows"):
        ModelConfig(uncertainty={"coefficients": rows})
    with pytest.raises(ValueError, match="features"):
        UncertaintyConfig(features=("spatial",), coefficients=rows)
    with pytest.raises(ValueError, match="≥ 0"):
        UncertaintyConfig(coefficients=((-1.0,) + (0.0,) * (len(FEATURES) - 1),))
