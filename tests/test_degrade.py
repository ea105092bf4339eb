"""Degradation synthesis: statistics of every family, masks, determinism, any band count."""

from __future__ import annotations

import json
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsivar.data import degrade as deg
from hsivar.tasks import TASKS

C, H, W = 31, 64, 64


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    # Smooth positive cube in [0.2, 0.8] (no zero band, so masks are unambiguous).
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W] / 64.0
    bands = np.linspace(0, 1, C)[:, None, None]
    x = 0.5 + 0.2 * np.sin(3 * xx + 2 * bands) * np.cos(2 * yy - bands) + 0.05 * rng.random((C, H, W))
    return x.astype(np.float32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------ gaussian


@pytest.mark.parametrize("sigma", [30, 50, 70])
def test_gaussian_noise_std_and_no_clipping(cube: np.ndarray, sigma: int) -> None:
    y, rec = deg.degrade(cube, "gaussian", sigma, rng(sigma))
    n = y - cube
    # N = 31*64*64 = 126 976 samples: the std estimate has relative s.e. 1/sqrt(2N) = 0.2 %, so 2 % is
    # 10 standard errors; the mean has s.e. sigma/sqrt(N) = 0.0028 sigma.
    assert rec.sigma == pytest.approx(sigma / 255)
    assert n.std() == pytest.approx(sigma / 255, rel=0.02)
    assert abs(n.mean()) < 5 * (sigma / 255) / math.sqrt(n.size)
    assert y.min() < 0 or y.max() > 1  # not clipped
    assert y.dtype == np.float32 and y.shape == cube.shape
    assert rec.weights.tolist() == [1, 0, 0, 0, 0, 0]


# ------------------------------------------------------------------------------------------ complex


def test_complex_case1_per_band_sigmas(cube: np.ndarray) -> None:
    y, rec = deg.degrade(cube, "complex", 1, rng(1))
    allowed = np.asarray(deg.COMPLEX_SIGMAS, np.float32) / 255
    assert rec.band_sigmas.shape == (C,) and np.isin(rec.band_sigmas, allowed).all()
    assert len(np.unique(rec.band_sigmas)) > 1  # non-i.i.d. across bands
    # 4096 samples per band: relative s.e. of a std is 1.1 %, tolerance 6 % (> 5 s.e.).
    np.testing.assert_allclose((y - cube).std(axis=(1, 2)), rec.band_sigmas, rtol=0.06)
    assert rec.extra is None and rec.affected_bands is None


@pytest.mark.parametrize("case", [2, 3, 4])
def test_complex_extras_on_floor_c_over_3_bands(cube: np.ndarray, case: int) -> None:
    # Same seed → same band sigmas and noise as case 1; the extra is all that differs.
    y1, _ = deg.degrade(cube, "complex", 1, rng(11))
    y, rec = deg.degrade(cube, "complex", f"case{case}", rng(11))
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
        assert rec.impulse_amount in deg.IMPULSE_AMOUNTS
        m = rec.impulse_mask
        assert not m[~hit].any()
        # 10*64*64 = 40 960 Bernoulli draws: s.e. <= 0.0025; tolerance 0.02.
        assert m[hit].mean() == pytest.approx(rec.impulse_amount, abs=0.02)
        assert np.isin(y[m], [0.0, 1.0]).all()
        assert (y[m] == 1).mean() == pytest.approx(0.5, abs=0.03)  # salt vs pepper 50/50
        np.testing.assert_array_equal(y[~m], y1[~m])


def test_complex_rejects_bad_case(cube: np.ndarray) -> None:
    with pytest.raises(ValueError, match="case 1-4"):
        deg.degrade(cube, "complex", 5, rng())


# ------------------------------------------------------------------------------------------ blur


@pytest.mark.parametrize(("k", "sigma"), [(9, 1.7), (15, 2.6), (21, 3.5)])
def test_blur_kernel_rule_and_zero_padding(cube: np.ndarray, k: int, sigma: float) -> None:
    y, rec = deg.degrade(cube, "blur", k, rng())
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
    ones, _ = deg.degrade(np.ones((2, 48, 48), np.float32), "blur", k, rng())
    assert ones[:, 24, 24] == pytest.approx(1.0, abs=1e-5)  # interior unchanged
    assert (ones[:, 0, 0] < 0.5).all()  # zero padding darkens corners


# ------------------------------------------------------------------------------------------ sr


@pytest.mark.parametrize("s", [2, 4, 8])
def test_sr_round_trip_and_replication(cube: np.ndarray, s: int) -> None:
    y, rec = deg.degrade(cube, "sr", s, rng())
    assert y.shape == cube.shape and rec.scale == s and rec.lr_shape == (H // s, W // s)
    blocks = y.reshape(C, H // s, s, W // s, s)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # each s×s block constant
    lr = F.interpolate(torch.from_numpy(cube)[None], size=(H // s, W // s), mode="bicubic", align_corners=True)
    np.testing.assert_allclose(blocks[:, :, 0, :, 0], lr[0].numpy(), atol=1e-6)


def test_sr_non_divisible_size() -> None:
    x = np.random.default_rng(0).random((3, 30, 45), dtype=np.float32)
    y, rec = deg.degrade(x, "sr", 4, rng())
    assert y.shape == x.shape and rec.lr_shape == (8, 12)  # ceil(30/4), ceil(45/4)
    assert (y[:, :28:4] == y[:, 1:29:4]).all()


# ------------------------------------------------------------------------------------------ inpaint


@pytest.mark.parametrize("r", [0.7, 0.8, 0.9])
def test_inpaint_fraction_and_independent_mask(cube: np.ndarray, r: float) -> None:
    y, rec = deg.degrade(cube, "inpaint", r, rng(3))
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
    y, rec = deg.degrade(cube, "bandmiss", r, rng(5))
    assert rec.missing_bands.size == n == int(r * C)
    assert (y[rec.missing_bands] == 0).all()
    keep = np.setdiff1d(np.arange(C), rec.missing_bands)
    np.testing.assert_array_equal(y[keep], cube[keep])
    assert rec.band_mask.sum() == n
    np.testing.assert_array_equal(deg.missing_band_mask(y), rec.band_mask)


# ------------------------------------------------------------------------------------------ general


def test_determinism_and_input_untouched(cube: np.ndarray) -> None:
    before = cube.copy()
    for case in deg.test_protocol():
        a, ra = deg.degrade_for_test(cube, case.task, case.level, index=3)
        b, rb = deg.degrade_for_test(cube, case.task, case.level, index=3)
        np.testing.assert_array_equal(a, b)
        assert json.dumps(ra.summary()) == json.dumps(rb.summary())
        if case.task not in ("blur", "sr"):  # those are deterministic by nature
            c, _ = deg.degrade_for_test(cube, case.task, case.level, index=4)
            assert not np.array_equal(a, c)
    np.testing.assert_array_equal(cube, before)
    a, _ = deg.degrade(cube, "gaussian", 30, rng(9))
    b, _ = deg.degrade(cube, "gaussian", 30, rng(9))
    np.testing.assert_array_equal(a, b)


def test_test_protocol_lists_every_pair() -> None:
    cases = deg.test_protocol()
    assert len(cases) == 19 and len({c.name for c in cases}) == 19  # 3 + 4 + 3 + 3 + 3 + 3
    assert tuple(dict.fromkeys(c.task for c in cases)) == TASKS
    assert {c.name for c in cases} >= {"gaussian_30", "complex_case4", "blur_21", "sr_8", "inpaint_0.9"}
    assert [c.level for c in cases if c.task == "bandmiss"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("c", [1, 3, 8, 31])
def test_any_band_count(c: int) -> None:
    x = np.random.default_rng(c).random((c, 12, 17), dtype=np.float32) * 0.8 + 0.1
    for case in deg.test_protocol():
        y, rec = deg.degrade_for_test(x, case.task, case.level)
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all(), case.name
        assert rec.shape == x.shape
        if case.task == "complex" and case.level > 1:
            assert rec.affected_bands.size == max(1, c // 3)
        if case.task == "bandmiss":
            expect = 0 if c == 1 else min(max(1, int(case.level * c)), c - 1)
            assert rec.missing_bands.size == expect
            assert (rec.band_mask is None) == (expect == 0)
    # C = 1: band completion has nothing it may remove (the only band stays observed).
    if c == 1:
        y, rec = deg.degrade(x, "bandmiss", 0.3, rng())
        np.testing.assert_array_equal(y, x)


def test_torch_in_torch_out(cube: np.ndarray) -> None:
    t = torch.from_numpy(cube).double()
    y, rec = deg.degrade(t, "blur", 9, rng())
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64 and y.shape == t.shape
    y2, _ = deg.degrade(cube, "blur", 9, rng())
    np.testing.assert_allclose(y.numpy(), y2, atol=1e-6)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        deg.degrade(np.zeros((4, 4), np.float32), "gaussian", 30, rng())
    with pytest.raises(ValueError, match="unknown task"):
        deg.degrade(np.zeros((1, 4, 4), np.float32), "rain", 1, rng())
    with pytest.raises(ValueError, match="odd"):
        deg.degrade(np.zeros((1, 4, 4), np.float32), "blur", 4, rng())


def test_training_sampler_covers_families_uniformly() -> None:
    x = np.full((4, 8, 8), 0.5, np.float32)
    g = rng(123)
    recs = [deg.sample_training_degradation(x, g)[1] for _ in range(600)]
    counts = np.bincount([r.task_id for r in recs], minlength=6)
    # Binomial(600, 1/6): mean 100, s.d. 9.1; [60, 140] is > 4 s.d.
    assert ((counts >= 60) & (counts <= 140)).all(), counts
    for r in recs:
        assert r.weights.sum() == pytest.approx(1.0) and r.weights[r.task_id] == 1
        if r.task == "gaussian":
            assert 30 / 255 <= r.sigma <= 70 / 255
        elif r.task == "complex":
            assert r.case in (2, 3, 4)  # pure non-i.i.d. is never trained
        else:
            assert r.level in deg.TRAIN_LEVELS[r.task]
    assert {r.case for r in recs if r.task == "complex"} == {2, 3, 4}
    assert len({r.level for r in recs if r.task == "gaussian"}) > 50  # continuous σ


def test_mixture_weights_order_and_noise(cube: np.ndarray) -> None:
    y, rec = deg.degrade_mixture(cube, [("gaussian", 30), ("blur", 9)], rng(2))
    assert rec.task == "mixture" and rec.task_id == -1
    assert [c.task for c in rec.components] == ["blur", "gaussian"]  # physical order: blur first
    np.testing.assert_allclose(rec.weights, [0.5, 0, 0.5, 0, 0, 0])
    blurred, _ = deg.degrade(cube, "blur", 9, rng())
    assert (y - blurred).std() == pytest.approx(30 / 255, rel=0.02)  # noise is not blurred
    _, rec2 = deg.degrade_mixture(cube, [("gaussian", 30), ("blur", 9)], rng(2), physical_order=False)
    assert [c.task for c in rec2.components] == ["gaussian", "blur"]
    _, rec3 = deg.degrade_mixture(cube, [("bandmiss", 0.1), ("inpaint", 0.7)], rng(2))
    assert rec3.missing_bands.size == 3 and rec3.band_mask is None  # all bands degraded → score all
    json.dumps(rec3.summary())
    np.testing.assert_allclose(deg.task_weights(["gaussian", "gaussian", "sr"]), [2 / 3, 0, 0, 1 / 3, 0, 0])
