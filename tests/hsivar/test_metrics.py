"""hsivar.metrics: agreement with scikit-image, SAM/ERGAS identities, band masks, PSNR from MSE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hsivar import degrade as deg
from hsivar import metrics as M


def pair(shape=(8, 24, 20), seed=0, noise=0.1, dtype=np.float32):
    r = np.random.default_rng(seed)
    clean = r.random(shape).astype(dtype)
    restored = (clean + noise * r.standard_normal(shape)).astype(dtype)  # leaves [0, 1]: clipped
    return restored, clean


def skimage_band_means(restored, clean):
    x, y = np.clip(restored, 0, 1).astype(np.float64), np.clip(clean, 0, 1).astype(np.float64)
    p = [peak_signal_noise_ratio(y[b], x[b], data_range=1) for b in range(y.shape[0])]
    s = [structural_similarity(y[b], x[b], data_range=1) for b in range(y.shape[0])]
    return float(np.mean(p)), float(np.mean(s))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "seed"), [((8, 24, 20), 0), ((31, 16, 16), 1), ((1, 7, 9), 2)])
def test_psnr_ssim_match_skimage(shape, seed, dtype) -> None:
    restored, clean = pair(shape, seed, dtype=dtype)
    p_ref, s_ref = skimage_band_means(restored, clean)
    assert M.psnr(restored, clean) == pytest.approx(p_ref, abs=1e-6)
    assert M.ssim(restored, clean) == pytest.approx(s_ref, abs=1e-6)
    assert M.psnr(torch.from_numpy(restored), torch.from_numpy(clean)) == pytest.approx(p_ref, abs=1e-6)


def test_batch_mean_and_per_band() -> None:
    a = pair((4, 16, 16), 3)
    b = pair((4, 16, 16), 4, noise=0.2)
    batch_r, batch_c = np.stack([a[0], b[0]]), np.stack([a[1], b[1]])
    assert M.psnr(batch_r, batch_c) == pytest.approx((M.psnr(*a) + M.psnr(*b)) / 2)
    assert M.ssim(batch_r, batch_c) == pytest.approx((M.ssim(*a) + M.ssim(*b)) / 2)
    per = M.psnr(*a, per_band=True)
    assert per.shape == (1, 4)
    x = np.clip(a[0], 0, 1)
    assert per[0, 2] == pytest.approx(peak_signal_noise_ratio(a[1][2], x[2], data_range=1), abs=1e-6)


def test_identical_inputs() -> None:
    _, clean = pair()
    assert M.psnr(clean, clean) == np.inf
    assert M.ssim(clean, clean) == pytest.approx(1.0)
    assert M.sam(clean, clean) == 0.0
    assert M.ergas(clean, clean) == 0.0


def test_sam_known_angles_and_zero_vectors() -> None:
    x = np.zeros((3, 2, 2))
    y = np.zeros((3, 2, 2))
    x[0] = 1.0
    y[0], y[1] = 1.0, 1.0  # 45° everywhere
    assert M.sam(x, y) == pytest.approx(45.0)
    y2 = np.zeros((3, 2, 2))
    y2[0], y2[1] = 0.5, 0.5 * np.sqrt(3)  # 60°
    assert M.sam(x, y2) == pytest.approx(60.0)
    assert M.sam(0.5 * y, y) == pytest.approx(0.0, abs=1e-12)  # scale invariant
    x[:, 0, 0] = 0.0  # a zero restored spectrum has no angle to the clean one: it counts 90°, no NaN
    assert M.sam(x, y) == pytest.approx((3 * 45.0 + 90.0) / 4)
    assert M.sam(np.zeros((3, 2, 2)), y) == pytest.approx(90.0)  # e.g. zeroed missing bands
    y[:, 0, 0] = 0.0  # a zero clean spectrum: that pixel is skipped
    assert M.sam(x, y) == pytest.approx(45.0)
    assert M.sam(np.zeros((3, 2, 2)), np.zeros((3, 2, 2))) == 0.0


def test_ergas_known_value_and_ratio() -> None:
    clean = np.full((4, 8, 8), 0.5)
    restored = clean + 0.05  # RMSE 0.05 / mean 0.5 = 0.1 in every band
    assert M.ergas(restored, clean) == pytest.approx(10.0)
    assert M.ergas(restored, clean, ratio=1 / 4) == pytest.approx(2.5)


def test_band_mask_scores_selected_bands_only() -> None:
    restored, clean = pair((10, 16, 16), 5, noise=0.02)
    mask = np.zeros(10, bool)
    mask[[1, 4, 7]] = True
    ruined = restored.copy()
    ruined[~mask] = 1.0 - clean[~mask]
    for fn in (M.psnr, M.ssim, M.sam, M.ergas):
        v = fn(ruined, clean, mask)
        assert v == pytest.approx(fn(restored[mask], clean[mask])), fn.__name__
        assert v == pytest.approx(fn(ruined, clean, [1, 4, 7])), fn.__name__
    assert M.psnr(ruined, clean) < M.psnr(ruined, clean, mask) - 10
    with pytest.raises(ValueError, match="no band"):
        M.psnr(restored, clean, np.zeros(10, bool))


def test_evaluate_record_bandmiss_and_sr() -> None:
    restored, clean = pair((31, 16, 16), 6, noise=0.02)
    degraded, rec = deg.degrade(clean, "bandmiss", 0.2, np.random.default_rng(0))
    q = M.evaluate_record(restored, clean, rec)
    assert q.n_bands == 6
    assert q.psnr == pytest.approx(M.psnr(restored, clean, rec.missing_bands))
    # MP-HSIR's fallback rule (bands all-zero in the input) selects the same bands.
    assert q.psnr == pytest.approx(M.psnr(restored, clean, deg.missing_band_mask(degraded)))
    _, rec_sr = deg.degrade(clean, "sr", 4, np.random.default_rng(0))
    q_sr = M.evaluate_record(restored, clean, rec_sr)
    assert q_sr.n_bands == 31 and q_sr.ergas == pytest.approx(M.ergas(restored, clean) / 4)
    assert set(q_sr.as_dict()) == {"psnr", "ssim", "sam", "ergas"}


def test_psnr_from_mse_numpy_and_torch_agree() -> None:
    mse = np.array([[1e-2, 1e-3, 0.0]])
    db = M.psnr_from_mse(mse)
    np.testing.assert_allclose(db[0, :2], [20.0, 30.0])
    assert db[0, 2] == np.inf
    t = M.psnr_from_mse(torch.tensor(mse[:, :2], dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), db[:, :2], rtol=1e-6)
    restored, clean = pair((4, 16, 16), 7)
    per_band = M.psnr(restored, clean, per_band=True)
    x, y = np.clip(restored, 0, 1).astype(np.float64), np.clip(clean, 0, 1).astype(np.float64)
    np.testing.assert_allclose(per_band, M.psnr_from_mse(((x - y) ** 2).mean(axis=(-2, -1)))[None])
