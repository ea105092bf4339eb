"""Metrics: agreement with scikit-image, SAM/ERGAS identities, band masks, pyiqa paths."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hsivar import metrics as M
from hsivar.data import degrade as deg


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


def test_false_colour_band_choice() -> None:
    wl = np.arange(400, 701, 10.0)
    cube = np.broadcast_to(np.arange(31, dtype=np.float32)[:, None, None] / 40, (31, 5, 6))
    assert M.false_colour_indices(31, wl) == (24, 15, 6)  # 640, 550, 460 nm
    assert M.false_colour_indices(31) == (24, 15, 6)
    assert M.false_colour_indices(1) == (0, 0, 0)
    assert M.false_colour_indices(6, [443, 482, 561, 590, 655, 865]) == (4, 2, 0)
    rgb = M.false_colour(cube * 2, wl)
    assert rgb.shape == (3, 5, 6) and rgb.dtype == np.float32 and rgb.max() <= 1.0
    np.testing.assert_allclose(rgb[1], 2 * 15 / 40)


def test_pyiqa_classical_metrics_agree() -> None:
    import pyiqa

    restored, clean = pair((31, 32, 32), 8, noise=0.05)
    fr, fc = M.false_colour(restored), M.false_colour(clean)
    # pyiqa's PSNR pools the channels of one image; one band replicated to RGB per image gives
    # per-band PSNR, which must equal ours on the same rendering.
    metric = pyiqa.create_metric("psnr", device="cpu")
    per_band = metric(
        torch.from_numpy(fr)[:, None].expand(3, 3, 32, 32), torch.from_numpy(fc)[:, None].expand(3, 3, 32, 32)
    )
    np.testing.assert_allclose(per_band.numpy(), M.psnr(fr, fc, per_band=True)[0], atol=1e-3)

    res = M.perceptual_metrics(restored, clean, None, names=("psnr", "ssim"))
    joint = 10 * np.log10(1 / np.mean((fr.astype(np.float64) - fc) ** 2))
    assert res["psnr"].value == pytest.approx(joint, abs=1e-3) and res["psnr"].reason is None
    assert 0 < res["ssim"].value < 1 and not res["ssim"].lower_better
    big, _ = pair((3, 176, 176), 9)  # MS-SSIM's 5 scales need >= 161 px
    same = M.perceptual_metrics(big, big, names=("ms_ssim", "ssim"))
    assert same["ms_ssim"].value == pytest.approx(1.0, abs=1e-4)
    assert same["ssim"].value == pytest.approx(1.0, abs=1e-4)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_perceptual_unavailable_is_fast_and_names_files(tmp_path: Path, no_network) -> None:
    restored, clean = pair((31, 32, 32), 10)
    t0 = time.perf_counter()
    res = M.perceptual_metrics(restored, clean, np.arange(400, 701, 10.0), weights_dir=tmp_path)
    assert time.perf_counter() - t0 < 5.0
    assert set(res) == set(M.PERCEPTUAL_METRICS)
    expect = {
        "lpips": "LPIPS_v0.1_alex-df73285e.pth",
        "dists": "DISTS_weights-f5e65c96.pth",
        "clipiqa": "RN50.pt",
        "musiq": "musiq_koniq_ckpt-e95806b9.pth",
        "maniqa": "ckpt_koniq10k.pt",
    }
    for name, r in res.items():
        assert r.value is None and not r.available
        assert expect[name] in r.reason and str(tmp_path) in r.reason and "unavailable" in r.reason
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in res["dists"].reason
    assert res["lpips"].lower_better and not res["musiq"].lower_better
    assert M.required_weight_files("musiq", tmp_path) == [str(tmp_path / "pyiqa/musiq_koniq_ckpt-e95806b9.pth")]
    with pytest.raises(ValueError, match="unsupported"):
        M.perceptual_metrics(restored, clean, names=("niqe_xyz",))


def test_perceptual_uses_weights_dir_without_download(tmp_path: Path, no_network) -> None:
    # A present-but-corrupt file is loaded from weights_dir (not downloaded) and reported as a failure.
    (tmp_path / "pyiqa").mkdir()
    (tmp_path / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth").write_bytes(b"not a checkpoint")
    restored, clean = pair((3, 32, 32), 11)
    r = M.perceptual_metrics(restored, clean, names=("musiq",), weights_dir=tmp_path)["musiq"]
    assert r.value is None and r.reason.startswith("musiq failed")
    assert "network" not in r.reason
    assert torch.hub.get_dir() != str(tmp_path)  # redirection undone
