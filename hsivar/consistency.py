"""Data consistency: the restored estimate projected onto what was observed.

For a linear observation y = A x, the range–null-space decomposition (DDNM, Wang et al., "Zero-Shot Image
Restoration Using Denoising Diffusion Null-Space Model", ICLR 2023) keeps the part of the estimate x̂ that
the observation cannot see and takes the rest from y: x = A⁺y + (I − A⁺A) x̂. Here, per family
(:class:`~hsivar.degrade.observation.Observation` says which applies):

* **missing entries** (inpaint, missing bands, dead lines, nodata): A⁺A keeps the observed entries, so they
  are put back exactly — in the input's own units, by :func:`hsivar.restore.finish`, so they are bit-exact
  (:func:`exact_entries` says which entries count as exact);
* **super-resolution**: iterative back-projection, x ← x + U(y_lr − D x) with D the bicubic down-sampling of
  the protocol and U bicubic up-sampling, until the estimate down-sampled equals the low-resolution grid
  (:func:`back_project`);
* **blur**: a few Richardson–Lucy steps started at the estimate, each a multiplicative move towards K x = y
  that keeps x ≥ 0 (:func:`hsivar.deblur.richardson_lucy`; on a free border the scene beyond the frame, which the
  estimate does not cover, is estimated first with the frame held); for a noisy observation, a few conjugate-gradient
  steps on ‖K x − y‖² + w‖x − x̂‖² with the estimate as the prior instead (:func:`hsivar.deblur.tikhonov`), which
  stop once the residual is within the observation's noise (an estimate that close is kept: pulled closer, it took
  the noise back, 1–6 dB on noisy blurred cubes);
* **noise**, **haze**, **low light**: nothing — such an observation is not more exact than the estimate, and the
  first estimate already weighs it (:mod:`hsivar.estimate`).

Everything works on (C, H, W) float32 in [0, 1] units.
"""

from __future__ import annotations

import numpy as np

from hsivar.deblur import richardson_lucy, tikhonov
from hsivar.degrade.observation import Observation

__all__ = ["back_project", "exact_entries", "project"]


def exact_entries(obs: Observation) -> np.ndarray | None:
    """(C, H, W) bool: the entries observed without noise, blur or resampling, which the output keeps as they were
    observed; None when there are none to keep (nothing is missing, or the observation is noisy / blurred /
    super-resolution, haze or a short exposure, where no entry was observed exactly)."""
    if not obs.has_missing or obs.noisy() or obs.sr_scale or obs.blur_sigma or obs.haze or obs.underexposed:
        return None
    return obs.observed


def back_project(x01: np.ndarray, y01: np.ndarray, scale: int, iters: int = 10) -> np.ndarray:
    """``x01`` (C, H, W) corrected until its bicubic down-sampling by ``scale`` (``align_corners=True``, the
    sr protocol's) equals the low-resolution grid ``y01[:, ::scale, ::scale]`` of the pixel-replicated input."""
    import torch
    import torch.nn.functional as F

    C, H, W = y01.shape
    lr = (-(-H // scale), -(-W // scale))
    target = torch.from_numpy(np.ascontiguousarray(y01[:, ::scale, ::scale], dtype=np.float32))[None]
    if min(lr) < 2:
        return x01
    x = torch.from_numpy(np.ascontiguousarray(x01, dtype=np.float32))[None]
    for _ in range(iters):
        residual = target - F.interpolate(x, size=lr, mode="bicubic", align_corners=True)
        x = x + F.interpolate(residual, size=(H, W), mode="bicubic", align_corners=True)
    return x[0].numpy()


def project(x01: np.ndarray, y01: np.ndarray, obs: Observation, blur_weight: float = 1e-2,
            blur_iters: int = 10) -> np.ndarray:
    """The estimate ``x01`` (C, H, W) made consistent with the observation ``y01`` (C, H, W) as ``obs`` describes
    it (see the module docstring; exact entries are put back later, in the input's units). ``blur_iters`` steps
    for a blur; ``blur_weight``: the prior's weight when the observation is noisy."""
    x = np.asarray(x01, np.float32)
    if obs.sr_scale:
        x = back_project(x, y01, obs.sr_scale)
    if obs.blur_sigma:
        border = obs.blur_border  # None: read from y's border, as the first estimate reads it
        x = (tikhonov(y01, obs.blur_sigma, prior=x, weight=blur_weight, iters=blur_iters, border=border,
                      noise_rms=float(np.sqrt(np.mean(np.square(obs.noise_sigma)))))
             if obs.noisy() else
             richardson_lucy(y01, obs.blur_sigma, iters=blur_iters, start=x, plain=blur_iters, border=border))
    return x
