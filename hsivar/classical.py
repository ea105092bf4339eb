"""Classical restoration baselines, one per degradation family, scored next to the model in evaluations.

Each method is ``fn(degraded, level) -> restored``: ``degraded`` (C, H, W) float32 in [0, 1] data
units (noisy inputs may leave [0, 1]), ``level`` the family's protocol level (units as in
:mod:`hsivar.degrade.families`), ``restored`` (C, H, W) float32. The family rows of
:data:`hsivar.degrade.families.FAMILIES` say which :class:`Baseline` serves which family (so importing
the table imports this module: torch and scikit-image are imported inside the functions that use them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hsivar.kernels import gaussian_kernel1d

if TYPE_CHECKING:
    import torch

__all__ = [
    "Baseline",
    "BICUBIC",
    "BIHARMONIC",
    "RICHARDSON_LUCY",
    "SPECTRAL_INTERP",
    "TV_CHAMBOLLE",
    "bicubic",
    "biharmonic",
    "missing_band_mask",
    "richardson_lucy",
    "spectral_interp",
    "tv_chambolle",
]


def missing_band_mask(degraded: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C,) bool, True for bands that are entirely zero in ``degraded`` (C, H, W).

    MP-HSIR's rule for which bands are missing (and which ``compute_psnr_ssim2`` scores) when no
    :class:`~hsivar.degrade.DegradationRecord` is at hand.
    """
    import torch

    x = degraded.detach().cpu().numpy() if isinstance(degraded, torch.Tensor) else np.asarray(degraded)
    return ~np.any(x.reshape(x.shape[0], -1) != 0, axis=1)


def tv_chambolle(degraded: np.ndarray, level: float) -> np.ndarray:
    """Denoise (C, H, W) float32 by Chambolle's total variation, weight 0.1 in data units, all bands jointly.

    ``level`` (σ in 0–255 units, or a complex case) is not used: one weight serves every level.
    """
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(degraded, weight=0.1, channel_axis=0).astype(np.float32)


def richardson_lucy(degraded: np.ndarray, level: float) -> np.ndarray:
    """Deblur (C, H, W) float32 by 10 Richardson–Lucy iterations per band with the known kernel.

    ``level`` is the blur kernel size k in pixels (odd); the PSF is the k×k Gaussian with
    :func:`~hsivar.kernels.blur_sigma` σ. Negative values are clipped to 0 first (RL needs them ≥ 0).
    """
    from skimage.restoration import richardson_lucy as rl

    k1 = gaussian_kernel1d(int(level))
    psf = np.outer(k1, k1)
    return np.stack([rl(np.clip(b, 0, None), psf, num_iter=10, clip=False) for b in degraded]).astype(np.float32)


def bicubic(degraded: np.ndarray, level: float) -> np.ndarray:
    """Super-resolve (C, H, W) float32 by bicubic interpolation (align_corners) from the low-resolution grid.

    ``level`` is the integer scale factor s; the low-resolution pixels are read back as every s-th
    pixel of the replicated input. Inputs whose grid is smaller than 2×2 come back unchanged.
    """
    import torch
    import torch.nn.functional as F

    s = int(level)
    lr = torch.from_numpy(np.ascontiguousarray(degraded[:, ::s, ::s]))[None]  # the replicated grid's first pixels
    if min(lr.shape[-2:]) < 2:
        return degraded
    up = F.interpolate(lr, size=degraded.shape[-2:], mode="bicubic", align_corners=True)[0]
    return up.numpy().astype(np.float32)


def biharmonic(degraded: np.ndarray, level: float) -> np.ndarray:
    """Inpaint (C, H, W) float32 band by band with biharmonic interpolation of the zero voxels.

    ``level`` (the fraction removed) is not used: the zeros are the mask. A band with no zero or only
    zeros is kept as it is.
    """
    from skimage.restoration import inpaint_biharmonic

    out = degraded.copy()
    for b in range(degraded.shape[0]):
        mask = degraded[b] == 0
        if mask.any() and not mask.all():
            out[b] = inpaint_biharmonic(degraded[b], mask)
    return out


def spectral_interp(degraded: np.ndarray, level: float) -> np.ndarray:
    """Fill the missing (all-zero) bands of (C, H, W) float32 by linear interpolation over band index.

    Each missing band is interpolated between its nearest observed neighbours (copied from the one
    neighbour at the ends of the spectrum). ``level`` (the fraction of bands removed) is not used.
    """
    missing = missing_band_mask(degraded)
    obs = np.flatnonzero(~missing)
    if obs.size == 0 or not missing.any():
        return degraded
    C = degraded.shape[0]
    flat = degraded.reshape(C, -1)
    out = flat.copy()
    for b in np.flatnonzero(missing):
        lo, hi = obs[obs < b], obs[obs > b]
        if lo.size and hi.size:
            a, c = lo[-1], hi[0]
            w = (b - a) / (c - a)
            out[b] = (1 - w) * flat[a] + w * flat[c]
        else:
            out[b] = flat[lo[-1] if lo.size else hi[0]]
    return out.reshape(degraded.shape)


@dataclass(frozen=True)
class Baseline:
    """A classical method: ``name`` (the method column of evaluation tables) and ``fn(degraded, level) -> restored``."""

    name: str
    fn: Callable[[np.ndarray, float], np.ndarray]


TV_CHAMBOLLE = Baseline("tv_chambolle", tv_chambolle)
RICHARDSON_LUCY = Baseline("richardson_lucy", richardson_lucy)
BICUBIC = Baseline("bicubic", bicubic)
BIHARMONIC = Baseline("biharmonic", biharmonic)
SPECTRAL_INTERP = Baseline("spectral_interp", spectral_interp)
