"""Classical restoration baselines, scored next to the model in evaluations.

Each method is ``fn(degraded, level) -> restored``: ``degraded`` (C, H, W) float32 in [0, 1] data
units (noisy inputs may leave [0, 1]), ``level`` the family's protocol level (units as in
:mod:`hsivar.degrade.families`), ``restored`` (C, H, W) float32. The family rows of
:data:`hsivar.degrade.families.FAMILIES` list the :class:`Baseline` objects that serve each family, the
strongest first (importing the table imports this module: torch, SciPy and scikit-image are imported
inside the functions that use them). The strongest is the model's own classical first estimate
(:mod:`hsivar.estimate`, :func:`first_estimate_baseline`) given the level the protocol knows:
HySime-whitened subspace denoising with non-local means (FastHyDe's idea, free of BM3D's licence),
low-rank completion, Richardson–Lucy deconvolution with the known kernel under the blur's zero-padded
forward model (:mod:`hsivar.deblur`), bicubic interpolation, spectral interpolation. ``blind_deblur`` is the
same deconvolution with the width estimated from the cube (what the classical route can do in blind mode, the
fair comparison for ``task=auto``); the simple ones (TV with a fixed or a noise-following weight, scikit-image's
Richardson–Lucy, biharmonic) are kept for comparison. Haze: the dark channel prior (:mod:`hsivar.dehaze`);
low light: the gain of a percentile stretch and the subspace denoiser, blind (:mod:`hsivar.exposure`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from hsivar.kernels import gaussian_kernel1d

if TYPE_CHECKING:
    import torch

__all__ = [
    "Baseline",
    "BICUBIC",
    "BLIND_DEBLUR",
    "BLIND_EXPOSURE",
    "BIHARMONIC",
    "BM4D",
    "DARK_CHANNEL",
    "OPTIONAL_BASELINES",
    "RICHARDSON_LUCY",
    "SPECTRAL_INTERP",
    "TV_ADAPTIVE",
    "TV_CHAMBOLLE",
    "bicubic",
    "biharmonic",
    "blind_deblur",
    "blind_exposure",
    "bm4d_denoise",
    "dark_channel",
    "first_estimate_baseline",
    "missing_band_mask",
    "richardson_lucy",
    "spectral_interp",
    "tv_adaptive",
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


def tv_adaptive(degraded: np.ndarray, level: float) -> np.ndarray:
    """Denoise (C, H, W) float32 by Chambolle's total variation per band, each band's weight following its
    estimated noise σ (weight = 0.9 σ̂, :func:`hsivar.degrade.observation.band_noise_sigma`).

    ``level`` is not used: the noise is estimated from the cube.
    """
    from skimage.restoration import denoise_tv_chambolle

    from hsivar.degrade.observation import band_noise_sigma

    sigma = band_noise_sigma(degraded)
    return np.stack([denoise_tv_chambolle(b, weight=max(0.9 * float(s), 1e-4))
                     for b, s in zip(degraded, sigma)]).astype(np.float32)


def bm4d_denoise(degraded: np.ndarray, level: float) -> np.ndarray:
    """Denoise (C, H, W) float32 with BM4D (Mäkinen et al.), its σ the median of the bands' estimated noise σ.

    Needs the optional ``bm4d`` package (``pip install 'hsivar[bm4d]'``), whose licence allows non-commercial
    use only: it is an opt-in reference (``hsivar evaluate --extra-baseline bm4d``), never a default.
    ``level`` is not used. It takes ≈20 s per 64×64×31 cube on one CPU core.

    Raises:
        ImportError: the ``bm4d`` package is not installed (the message says how to install it).
    """
    try:
        import bm4d
    except ImportError as exc:
        raise ImportError("BM4D needs the bm4d package: pip install 'hsivar[bm4d]' "
                          "(its licence allows non-commercial use only)") from exc
    from hsivar.degrade.observation import band_noise_sigma

    sigma = float(np.median(band_noise_sigma(degraded)))
    out = bm4d.bm4d(np.moveaxis(degraded.astype(np.float32), 0, -1), sigma_psd=sigma)
    return np.ascontiguousarray(np.moveaxis(np.asarray(out, np.float32), -1, 0))


def blind_deblur(degraded: np.ndarray, level: float) -> np.ndarray:
    """Deblur (C, H, W) float32 blind: the width estimated from the cube (:func:`hsivar.deblur.blind_width`, as
    ``task=auto`` does for a noiseless cube, but knowing no training data: without a model's sharp width nor its
    fitted ratio to the data fit's width), then :func:`hsivar.deblur.deconvolve`; unchanged when no blur shows.

    ``level`` is not used: the width is estimated, as ``task=auto`` must.
    """
    from hsivar.deblur import blind_width, deconvolve

    sigma = blind_width(np.asarray(degraded, np.float32))
    return np.asarray(degraded, np.float32).copy() if sigma is None else deconvolve(degraded, sigma)


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
    from hsivar.estimate import interpolate_bands

    return interpolate_bands(degraded, missing_band_mask(degraded))


def dark_channel(degraded: np.ndarray, level: float) -> np.ndarray:
    """Dehaze (C, H, W) float32 by the dark channel prior with guided-filter refinement (:func:`hsivar.dehaze.dehaze`).

    ``level`` (the haze's optical depth) is not used: transmission and airlight are estimated from the cube.
    """
    from hsivar.dehaze import dehaze

    return dehaze(degraded)


def blind_exposure(degraded: np.ndarray, level: float) -> np.ndarray:
    """Brighten a short exposure (C, H, W) float32 blind: the exposure read from the cube's brightness
    (:func:`hsivar.exposure.estimate_exposure`, a percentile stretch), the gain, then the subspace denoiser — the
    first estimate as ``task=auto`` computes it, the fair comparison there. ``level`` is not used."""
    from hsivar.degrade.observation import Observation
    from hsivar.estimate import first_estimate
    from hsivar.exposure import estimate_exposure

    x = np.asarray(degraded, np.float32)
    return first_estimate(x, Observation.detect(x).replaced(exposure=estimate_exposure(x)))


@dataclass(frozen=True)
class Baseline:
    """A classical method: ``name`` (the method column of evaluation tables) and ``fn(degraded, level) -> restored``."""

    name: str
    fn: Callable[[np.ndarray, float], np.ndarray]


TV_CHAMBOLLE = Baseline("tv_chambolle", tv_chambolle)
TV_ADAPTIVE = Baseline("tv_adaptive", tv_adaptive)
RICHARDSON_LUCY = Baseline("richardson_lucy", richardson_lucy)
BLIND_DEBLUR = Baseline("blind_deblur", blind_deblur)
BICUBIC = Baseline("bicubic", bicubic)
BIHARMONIC = Baseline("biharmonic", biharmonic)
SPECTRAL_INTERP = Baseline("spectral_interp", spectral_interp)
BM4D = Baseline("bm4d", bm4d_denoise)
DARK_CHANNEL = Baseline("dark_channel", dark_channel)
BLIND_EXPOSURE = Baseline("blind_exposure", blind_exposure)

OPTIONAL_BASELINES: dict[str, tuple[Baseline, tuple[str, ...]]] = {"bm4d": (BM4D, ("gaussian", "complex"))}
"""Opt-in baselines (slow, or under a non-commercial licence) by name → (the method, the families it serves)."""


def _first_estimate_at_level(task: str, degraded: np.ndarray, level: float) -> np.ndarray:
    from hsivar.degrade.observation import Observation
    from hsivar.degrade.protocol import observation_of_level
    from hsivar.estimate import first_estimate

    obs = observation_of_level(task, level, degraded.shape).merge(Observation.detect(degraded))
    return first_estimate(degraded, obs)


def first_estimate_baseline(task: str) -> Baseline:
    """The classical first estimate of :mod:`hsivar.estimate` as a baseline of family ``task``: from what the cube
    shows of its observation plus what the protocol level says (noise σ, blur width, sr scale, stripes) —
    the facts the other baselines get too (the kernel of Richardson–Lucy, the scale of bicubic)."""
    return Baseline("first_estimate", partial(_first_estimate_at_level, task))
