"""Full-reference restoration metrics for hyperspectral cubes (numpy, vectorised over bands and images).

The definitions follow MP-HSIR's evaluation code (``utils/val_utils.py`` of the public MP-HSIR
repository) and scikit-image's ``skimage.metrics``:

* :func:`psnr` — per-band PSNR in dB with data range 1, averaged over bands (then over images).
  Both inputs are clipped to [0, 1] first. A band reproduced exactly has infinite PSNR (as
  scikit-image's ``peak_signal_noise_ratio``), so the mean is then ``inf``. The formula itself is
  :func:`psnr_from_mse`, shared with the training logs (numpy or torch, no host copy).
* :func:`ssim` — per-band SSIM averaged over bands, identical to scikit-image's
  ``structural_similarity(data_range=1)`` defaults applied to each band: 7×7 uniform window, sample
  covariance (N/(N−1)), K1 = 0.01, K2 = 0.03, ``reflect`` borders, the 3-pixel border of the SSIM
  map excluded from the mean. Needs H, W ≥ 7. Computed in float64.
* :func:`sam` — mean spectral angle in degrees over pixels. Pixels whose spectrum is the zero
  vector in either input have no defined angle and are left out of the mean (0 if none is left).
* :func:`ergas` — ``100 · ratio · sqrt(mean_b (RMSE_b / μ_b)²)`` with μ_b the mean of the reference
  band b. ``ratio`` is h/l, the high-resolution pixel size over the low-resolution one (1 for
  same-resolution restoration, 1/s for ×s super-resolution — i.e. the common HSI-SR ``100/s``
  convention). Bands whose reference mean is 0 are left out.

All of them take ``(C, H, W)`` or ``(N, C, H, W)`` arrays (numpy or torch) and an optional
``band_mask`` (bool (C,) or band indices) so band completion is scored on the missing bands only;
:func:`evaluate_record` takes the mask from a degradation record.

Perceptual metrics on false-colour renderings are in :mod:`hsivar.perceptual`; the renderings and
report figures in :mod:`hsivar.render`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from scipy.ndimage import uniform_filter

if TYPE_CHECKING:
    import torch

    from hsivar.degrade import DegradationRecord

    Array = np.ndarray | torch.Tensor
    BandMask = np.ndarray | Sequence[int] | None

__all__ = [
    "QualityMetrics",
    "as_numpy",
    "psnr_from_mse",
    "psnr",
    "ssim",
    "sam",
    "ergas",
    "evaluate",
    "evaluate_record",
]

MSE = TypeVar("MSE")

# --------------------------------------------------------------------------------------------- helpers


def as_numpy(a: Any) -> np.ndarray:
    """``a`` (numpy array, torch tensor on any device, or nested sequence) as a numpy array of the same shape.

    A torch tensor is detached and copied to the host; torch is not imported here.
    """
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _prepare(restored: Any, clean: Any, band_mask: Any, clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 (N, C', H, W), band-selected and clipped to [0, 1]."""
    x, y = as_numpy(restored), as_numpy(clean)
    if x.shape != y.shape:
        raise ValueError(f"restored and clean shapes differ: {x.shape} vs {y.shape}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (N, C, H, W) arrays, got shape {x.shape}")
    if x.ndim == 3:
        x, y = x[None], y[None]
    if band_mask is not None:
        idx = _band_index(band_mask, x.shape[1])
        x, y = x[:, idx], y[:, idx]
    x = x.astype(np.float64, copy=True)
    y = y.astype(np.float64, copy=True)
    if clip:
        np.clip(x, 0.0, 1.0, out=x)
        np.clip(y, 0.0, 1.0, out=y)
    return x, y


def _band_index(band_mask: Any, n_bands: int) -> np.ndarray:
    m = as_numpy(band_mask)
    if m.dtype == bool:
        if m.shape != (n_bands,):
            raise ValueError(f"band_mask has shape {m.shape}, expected ({n_bands},)")
        idx = np.flatnonzero(m)
    else:
        idx = m.astype(np.int64).ravel()
        if idx.size and (idx.min() < -n_bands or idx.max() >= n_bands):
            raise ValueError(f"band indices {idx.tolist()} out of range for {n_bands} bands")
    if idx.size == 0:
        raise ValueError("band_mask selects no band")
    return idx


# --------------------------------------------------------------------------------------------- metrics


def psnr_from_mse(mse: MSE) -> MSE:
    """PSNR in dB for data range 1 from mean squared errors: ``10 · log10(1 / mse)``, elementwise.

    Args:
        mse: mean squared errors of [0, 1] images, any shape (e.g. (N, C) per band): a numpy array or
            float, or a torch tensor.

    Returns:
        dB, same shape and kind as ``mse``; a torch tensor stays on its device (nothing is copied to the
        host). ``mse = 0`` gives ``inf``.
    """
    if hasattr(mse, "log10"):  # torch tensor, without importing torch here
        return 10.0 * (1.0 / mse).log10()  # type: ignore[attr-defined,operator]
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / np.asarray(mse, dtype=np.float64))  # type: ignore[return-value]


def psnr(restored: Array, clean: Array, band_mask: BandMask = None, *, per_band: bool = False) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, data range 1, per band then averaged.

    Args:
        restored, clean: (C, H, W) or (N, C, H, W), values nominally in [0, 1] (clipped).
        band_mask: bool (C,) or band indices to score; None for all bands.
        per_band: return the (N, C') array of per-band values instead of the mean.

    Returns:
        Mean over bands, then over images (dB); ``inf`` when a band is reproduced exactly.
    """
    x, y = _prepare(restored, clean, band_mask)
    out = psnr_from_mse(np.mean((x - y) ** 2, axis=(-2, -1)))
    return out if per_band else float(out.mean(axis=1).mean())


def ssim(restored: Array, clean: Array, band_mask: BandMask = None, *, per_band: bool = False) -> float | np.ndarray:
    """Structural similarity per band (scikit-image defaults, data range 1), averaged over bands.

    Args:
        restored, clean: (C, H, W) or (N, C, H, W) with H, W ≥ 7, values clipped to [0, 1].
        band_mask: bool (C,) or band indices to score; None for all bands.
        per_band: return the (N, C') array of per-band values instead of the mean.

    Returns:
        Mean SSIM over bands, then images (dimensionless, ≤ 1).
    """
    x, y = _prepare(restored, clean, band_mask)
    win = 7
    if min(x.shape[-2:]) < win:
        raise ValueError(f"SSIM needs H, W >= {win}, got {x.shape[-2:]}")
    size = (1, 1, win, win)  # filter within each band only
    cov_norm = win * win / (win * win - 1.0)
    ux, uy = uniform_filter(x, size), uniform_filter(y, size)
    vx = cov_norm * (uniform_filter(x * x, size) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, size) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, size) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    out = s[..., p : s.shape[-2] - p, p : s.shape[-1] - p].mean(axis=(-2, -1))
    return out if per_band else float(out.mean(axis=1).mean())


def sam(restored: Array, clean: Array, band_mask: BandMask = None, *, clip: bool = True) -> float:
    """Spectral angle mapper: mean angle in degrees between restored and clean spectra.

    Args:
        restored, clean: (C, H, W) or (N, C, H, W); the spectrum of a pixel is its C values.
        band_mask: bands forming the spectrum (bool (C,) or indices); None for all.
        clip: clip both inputs to [0, 1] first (as for PSNR/SSIM).

    Returns:
        Mean over valid pixels of ``arccos(<x, y> / (|x| |y|))`` in degrees, averaged over images.
        Pixels whose clean spectrum is all zeros are skipped (no angle to recover); an image with no
        valid pixel counts 0. An all-zero *restored* spectrum against a non-zero clean one counts
        90° (the largest angle between non-negative spectra): it carries no spectral information,
        and skipping it would give a band-completion input with its missing bands zeroed 0°.
    """
    x, y = _prepare(restored, clean, band_mask, clip=clip)
    nx = np.sqrt(np.einsum("nchw,nchw->nhw", x, x))[:, None]
    ny = np.sqrt(np.einsum("nchw,nchw->nhw", y, y))[:, None]
    valid = ny[:, 0] > 0
    ux, uy = x / np.where(nx > 0, nx, 1.0), y / np.where(ny > 0, ny, 1.0)
    # Kahan's 2·atan2(|u−v|, |u+v|) is accurate near 0° (arccos of a dot product is not: ~1e-6° noise).
    ang = np.degrees(
        2.0
        * np.arctan2(
            np.sqrt(np.einsum("nchw,nchw->nhw", ux - uy, ux - uy)),
            np.sqrt(np.einsum("nchw,nchw->nhw", ux + uy, ux + uy)),
        )
    )
    ang = np.where(nx[:, 0] > 0, ang, 90.0)
    counts = valid.sum(axis=(1, 2))
    per_img = np.where(counts > 0, (ang * valid).sum(axis=(1, 2)) / np.maximum(counts, 1), 0.0)
    return float(per_img.mean())


def ergas(restored: Array, clean: Array, band_mask: BandMask = None, *, ratio: float = 1.0, clip: bool = True) -> float:
    """Erreur relative globale adimensionnelle de synthèse (lower is better, 0 for identical).

    Args:
        restored, clean: (C, H, W) or (N, C, H, W).
        band_mask: bands to score (bool (C,) or indices); None for all.
        ratio: h/l, high-resolution over low-resolution pixel size (1 for same-resolution
            restoration, 1/s for ×s super-resolution).
        clip: clip both inputs to [0, 1] first.

    Returns:
        ``100 · ratio · sqrt(mean_b (RMSE_b / μ_b)²)`` averaged over images; bands with reference mean
        μ_b = 0 are skipped (0 if no band is left).
    """
    x, y = _prepare(restored, clean, band_mask, clip=clip)
    rmse = np.sqrt(np.mean((x - y) ** 2, axis=(-2, -1)))
    mu = np.mean(y, axis=(-2, -1))
    ok = mu > 0
    rel = np.where(ok, rmse / np.where(ok, mu, 1.0), 0.0) ** 2
    n_ok = ok.sum(axis=1)
    per_img = 100.0 * ratio * np.sqrt(np.where(n_ok > 0, rel.sum(axis=1) / np.maximum(n_ok, 1), 0.0))
    return float(per_img.mean())


@dataclass(frozen=True)
class QualityMetrics:
    """PSNR (dB), SSIM, SAM (degrees) and ERGAS of one evaluation, and the number of bands scored."""

    psnr: float
    ssim: float
    sam: float
    ergas: float
    n_bands: int

    def as_dict(self) -> dict[str, float]:
        """The four metrics as a plain dict (e.g. for MLflow)."""
        return {"psnr": self.psnr, "ssim": self.ssim, "sam": self.sam, "ergas": self.ergas}


def evaluate(restored: Array, clean: Array, band_mask: BandMask = None, *, ergas_ratio: float = 1.0) -> QualityMetrics:
    """PSNR, SSIM, SAM and ERGAS of ``restored`` against ``clean`` ((C, H, W) or (N, C, H, W)).

    ``band_mask`` restricts every metric to the selected bands (SAM: the spectrum is made of those
    bands); ``ergas_ratio`` is ERGAS's h/l.
    """
    n_all = as_numpy(clean).shape[-3]
    n_bands = n_all if band_mask is None else _band_index(band_mask, n_all).size
    return QualityMetrics(
        psnr=psnr(restored, clean, band_mask),
        ssim=ssim(restored, clean, band_mask),
        sam=sam(restored, clean, band_mask),
        ergas=ergas(restored, clean, band_mask, ratio=ergas_ratio),
        n_bands=int(n_bands),
    )


def evaluate_record(restored: Array, clean: Array, record: DegradationRecord) -> QualityMetrics:
    """:func:`evaluate` with the scoring rules of a degradation record; cubes (C, H, W) or (N, C, H, W) in [0, 1].

    Band completion (``record.band_mask``) is scored on the missing bands only, as MP-HSIR's
    ``compute_psnr_ssim2``; super-resolution uses ERGAS ratio 1/s (product over the sr components
    of a mixture); everything else uses all bands and ratio 1.
    """
    comps = record.components or (record,)
    ratio = math.prod(1.0 / c.scale for c in comps if c.task == "sr" and c.scale)
    return evaluate(restored, clean, record.band_mask, ergas_ratio=ratio)
