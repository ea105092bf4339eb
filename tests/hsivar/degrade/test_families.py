"""Each degradation family: statistics, masks and the record fields its table row lists."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.random import default_rng as rng

from hsivar.degrade import COMPLEX_SIGMAS, FAMILIES, IMPULSE_AMOUNTS, DegradationRecord, degrade, missing_band_mask
from hsivar.degrade import families as families_module
from hsivar.kernels import blur_sigma, gaussian_kernel1d
from hsivar.tasks import task_weights

C, H, W = 31, 64, 64  # the shape of the `cube` fixture


# ------------------------------------------------------------------------------------------ gaussian


@pytest.mark.parametrize("sigma", [30, 50, 70])
def test_gaussian_noise_std_and_no_clipping(cube: np.ndarray, sigma: int) -> None:
    y, rec = degrade(cube, "gaussian", sigma, rng(sigma))
    n = y - cube
    # N = 31*64*64 = 126 976 samples: the std estimate has relative s.e. 1/sqrt(2N) = 0.2 %, so 2 % is
    # 10 standard errors; the mean has s.e. sigma/sqrt(N) = 0.0028 sigma.
    assert rec.sigma == pytest.approx(sigma / 255)
    assert n.std() == pytest.approx(sigma / 255, rel=0.02)
    assert abs(n.mean()) < 5 * (sigma / 255) / math.sqrt(n.size)
    assert y.min() < 0 or y.max() > 1  # not clipped
    assert y.dtype == np.float32 and y.shape == cube.shape
    np.testing.assert_array_equal(rec.weights, task_weights(["gaussian"]))


# ------------------------------------------------------------------------------------------ complex


def test_complex_case1_per_band_sigmas(cube: np.ndarray) -> None:
    y, rec = degrade(cube, "complex", 1, rng(1))
    allowed = np.asarray(COMPLEX_SIGMAS, np.float32) / 255
    assert rec.band_sigmas.shape == (C,) and np.isin(rec.band_sigmas, allowed).all()
    assert len(np.unique(rec.band_sigmas)) > 1  # non-i.i.d. across bands
    # 4096 samples per band: relative s.e. of a std is 1.1 %, tolerance 6 % (> 5 s.e.).
    np.testing.assert_allclose((y - cube).std(axis=(1, 2)), rec.band_sigmas, rtol=0.06)
    assert rec.extra is None and rec.affected_bands is None


@pytest.mark.parametrize("case", [2, 3, 4])
def test_complex_extras_on_floor_c_over_3_bands(cube: np.ndarray, case: int) -> None:
    # Same seed → same band sigmas and noise as case 1; the extra is all that differs.
    y1, _ = degrade(cube, "complex", 1, rng(11))
    y, rec = degrade(cube, "complex", f"case{case}", rng(11))
    assert rec.case == case and rec.affected_bands.size == C // 3 == 10
    assert len(np.unique(rec.affected_bands)) == 10
    hit = np.zeros(C, bool)
    hit[rec.affected_bands] = True
    np.testing.assert_array_equal(y[~hit], y1[~hit])  # other bands: noise only
    if case in (2, 3):
        counts = rec.column_mask.sum(axis=1)
        assert (counts[~hit] == 0).all()
        lo, hi = (int(0.05 * W), int(0.15 * W)) if case == 2 else (math.ceil(0.05 * W), math.ceil(0.15 * W))
        assert ((counts[hit] >= lo) & (counts[hit] < hi)).all()  # numpy randint: hi exclusive
        frac = counts[hit] / W
        assert (frac >= 0.04).all() and (frac <= 0.15).all()  # ~5-15 % of the columns
    if case == 2:
        off = rec.stripe_offsets
        assert (np.abs(off) <= 0.25).all() and (off[~rec.column_mask] == 0).all()
        assert (off[rec.column_mask] != 0).all()
        np.testing.assert_allclose(y - y1, np.broadcast_to(off[:, None, :], y.shape), atol=1e-6)
    if case == 3:
        dead = np.broadcast_to(rec.column_mask[:, None, :], y.shape)
        assert (y[dead] == 0).all()
        np.testing.assert_array_equal(y[~dead], y1[~dead])
    if case == 4:
        assert rec.impulse_amount in IMPULSE_AMOUNTS
        m = rec.impulse_mask
        assert not m[~hit].any()
        # 10*64*64 = 40 960 Bernoulli draws: s.e. <= 0.0025; tolerance 0.02.
        assert m[hit].mean() == pytest.approx(rec.impulse_amount, abs=0.02)
        assert np.isin(y[m], [0.0, 1.0]).all()
        assert (y[m] == 1).mean() == pytest.approx(0.5, abs=0.03)  # salt vs pepper 50/50
        np.testing.assert_array_equal(y[~m], y1[~m])


def test_complex_rejects_bad_case(cube: np.ndarray) -> None:
    with pytest.raises(ValueError, match="case 1-4"):
        degrade(cube, "complex", 5, rng())


# ------------------------------------------------------------------------------------------ blur


@pytest.mark.parametrize(("k", "sigma"), [(9, 1.7), (15, 2.6), (21, 3.5)])
def test_blur_kernel_rule_and_zero_padding(cube: np.ndarray, k: int, sigma: float) -> None:
    y, rec = degrade(cube, "blur", k, rng())
    assert rec.kernel_size == k and rec.blur_sigma == pytest.approx(sigma)
    assert rec.kernel.shape == (k,) and rec.kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert rec.kernel2d.sum() == pytest.approx(1.0, abs=1e-5)
    x = np.arange(k) - (k - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    np.testing.assert_allclose(rec.kernel, g / g.sum(), rtol=1e-5)
    # Reference: MP-HSIR's depthwise F.conv2d with zero padding k//2.
    kt = torch.from_numpy(rec.kernel2d)[None, None].expand(C, 1, k, k)
    ref = F.conv2d(torch.from_numpy(cube)[None], kt, padding=k // 2, groups=C)[0].numpy()
    np.testing.assert_allclose(y, ref, atol=2e-6)
    ones, _ = degrade(np.ones((2, 48, 48), np.float32), "blur", k, rng())
    assert ones[:, 24, 24] == pytest.approx(1.0, abs=1e-5)  # interior unchanged
    assert (ones[:, 0, 0] < 0.5).all()  # zero padding darkens corners


def test_gaussian_kernel1d() -> None:
    assert blur_sigma(15) == pytest.approx(2.6)
    np.testing.assert_array_equal(gaussian_kernel1d(15), gaussian_kernel1d(15, blur_sigma(15)))
    g = gaussian_kernel1d(11, 1.5)
    assert g.dtype == np.float32 and g.shape == (11,) and g.argmax() == 5
    assert g.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(g, g[::-1])
    assert gaussian_kernel1d(1, 0.3).tolist() == [1.0]
    for bad in (0, 4, -3):
        with pytest.raises(ValueError, match="odd"):
            gaussian_kernel1d(bad, 1.0)


# ------------------------------------------------------------------------------------------ sr


@pytest.mark.parametrize("s", [2, 4, 8])
def test_sr_round_trip_and_replication(cube: np.ndarray, s: int) -> None:
    y, rec = degrade(cube, "sr", s, rng())
    assert y.shape == cube.shape and rec.scale == s and rec.lr_shape == (H // s, W // s)
    blocks = y.reshape(C, H // s, s, W // s, s)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # each s×s block constant
    lr = F.interpolate(torch.from_numpy(cube)[None], size=(H // s, W // s), mode="bicubic", align_corners=True)
    np.testing.assert_allclose(blocks[:, :, 0, :, 0], lr[0].numpy(), atol=1e-6)


def test_sr_non_divisible_size() -> None:
    x = np.random.default_rng(0).random((3, 30, 45), dtype=np.float32)
    y, rec = degrade(x, "sr", 4, rng())
    assert y.shape == x.shape and rec.lr_shape == (8, 12)  # ceil(30/4), ceil(45/4)
    assert (y[:, :28:4] == y[:, 1:29:4]).all()


# ------------------------------------------------------------------------------------------ inpaint


@pytest.mark.parametrize("r", [0.7, 0.8, 0.9])
def test_inpaint_fraction_and_independent_mask(cube: np.ndarray, r: float) -> None:
    y, rec = degrade(cube, "inpaint", r, rng(3))
    m = rec.removed_mask
    # 126 976 Bernoulli(r) draws: s.e. <= 0.0015; tolerance 0.01.
    assert m.mean() == pytest.approx(r, abs=0.01)
    assert (y[m] == 0).all()
    np.testing.assert_array_equal(y[~m], cube[~m])
    # Independent per band: two bands share a removed pixel with probability r² (4096 px, s.e. < 0.008).
    assert (m[0] & m[1]).mean() == pytest.approx(r * r, abs=0.04)


# ------------------------------------------------------------------------------------------ bandmiss


@pytest.mark.parametrize(("r", "n"), [(0.1, 3), (0.2, 6), (0.3, 9)])
def test_bandmiss_exact_count(cube: np.ndarray, r: float, n: int) -> None:
    y, rec = degrade(cube, "bandmiss", r, rng(5))
    assert rec.missing_bands.size == n == int(r * C)
    assert (y[rec.missing_bands] == 0).all()
    keep = np.setdiff1d(np.arange(C), rec.missing_bands)
    np.testing.assert_array_equal(y[keep], cube[keep])
    assert rec.band_mask.sum() == n
    np.testing.assert_array_equal(missing_band_mask(y), rec.band_mask)
    np.testing.assert_array_equal(missing_band_mask(torch.from_numpy(y)), rec.band_mask)


# ------------------------------------------------------------------------------------------ haze


@pytest.mark.parametrize("beta", [0.5, 1.5])
def test_haze_is_the_scattering_model_with_smooth_wavelength_dependent_transmission(cube: np.ndarray,
                                                                                     beta: float) -> None:
    y, rec = degrade(cube, "haze", beta, rng(3))
    t, a = rec.transmission, rec.airlight
    assert rec.haze_beta == beta and t.shape == cube.shape and a.shape == (C,)
    np.testing.assert_allclose(y, cube * t + a[:, None, None] * (1 - t), atol=1e-6)
    assert 0.75 <= a[0] <= 0.95 and np.all(a == a[0])  # white airlight, one per image
    # t = exp(-β f_c d), d in [0.3, 1]: the band factors f_c = (λ_c/550)^-1 over 400-700 nm in band order
    depth = -np.log(t) / beta  # f_c d
    factors = families_module.haze_band_factors(C)
    np.testing.assert_allclose(depth / factors[:, None, None], np.broadcast_to(depth[:1] / factors[0], depth.shape),
                               rtol=1e-4)
    d = depth[0] / factors[0]
    assert d.min() == pytest.approx(0.3, abs=1e-5) and d.max() == pytest.approx(1.0, abs=1e-5)
    assert factors[0] == pytest.approx(550 / 400) and factors[-1] == pytest.approx(550 / 700)
    assert np.abs(np.diff(d, axis=0)).max() < 0.1  # smooth across the scene
    assert (y > cube).mean() > 0.9  # haze brightens a mid-grey scene
    rgb, rec3 = degrade(cube[:3], "haze", beta, rng(3))
    assert np.allclose(rec3.transmission, rec3.transmission[:1])  # RGB: one transmission for every channel


# ------------------------------------------------------------------------------------------ low light


@pytest.mark.parametrize("e", [0.2, 0.05])
def test_low_light_scales_bends_and_adds_signal_dependent_noise(cube: np.ndarray, e: float) -> None:
    y, rec = degrade(cube, "lowlight", e, rng(4))
    assert rec.exposure == e and 1.0 <= rec.gamma <= 1.4
    signal = e * cube.astype(np.float64) ** rec.gamma
    resid = y - signal
    assert abs(resid.mean()) < 1e-3
    expected_var = signal / families_module.LOWLIGHT_PHOTONS + families_module.LOWLIGHT_READ_NOISE ** 2
    assert np.mean(resid ** 2) / np.mean(expected_var) == pytest.approx(1.0, rel=0.05)
    assert (y < 0).any() or e > 0.1  # not clipped: a dark exposure leaves [0, 1]
    with pytest.raises(ValueError, match="lowlight level 0: must be an exposure in"):
        degrade(cube, "lowlight", 0, rng(0))


# ------------------------------------------------------------------------------------------ every row


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_each_family_sets_only_the_record_fields_of_its_row(cube: np.ndarray, fam) -> None:
    base = {"task", "level", "shape", "weights", "components"}
    known = {f.name for f in dataclasses.fields(DegradationRecord)} - base
    assert set(fam.record_fields) <= known, fam.name
    seen: set[str] = set()
    for level in fam.test_levels:
        _, rec = degrade(cube, fam.name, level, rng(1))
        set_fields = {f for f in known if getattr(rec, f) is not None}
        assert set_fields <= set(fam.record_fields), (fam.name, level, set_fields)
        seen |= set_fields
    assert seen == set(fam.record_fields), fam.name  # every listed field is set at some test level
