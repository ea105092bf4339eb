"""Low-light correction: the exposure of a dark cube, and the cube brought back to a normal exposure.

A short exposure ``e`` scales the signal and leaves shot and read noise (:mod:`hsivar.degrade.families`,
family ``lowlight``). Undoing it is a gain ``1/e`` — after denoising, since the gain multiplies the noise
too. When ``e`` is not known it is read from the cube: a normally exposed scene in [0, 1] units has its
99.5th percentile near :data:`REFERENCE_BRIGHTNESS` (the min–max normalised demo and Landsat-8 scenes: 0.6–0.9),
so ``ê`` is the cube's 99.5th percentile over it (a percentile stretch, the classical correction). The tone
curve's γ is not estimated: the gain is linear and the model learns what remains.

Every function takes (C, H, W) float32 in [0, 1] units.
"""

from __future__ import annotations

import numpy as np

__all__ = ["REFERENCE_BRIGHTNESS", "brightness", "correct_exposure", "estimate_exposure"]

REFERENCE_BRIGHTNESS = 0.75
"""99.5th percentile of a normally exposed scene, [0, 1] units."""


def brightness(cube: np.ndarray) -> float:
    """The 99.5th percentile of ``cube`` (C, H, W), [0, 1] units: its bright end, robust to a few hot pixels."""
    return float(np.quantile(np.asarray(cube, np.float32), 0.995)) if np.size(cube) else 0.0


def estimate_exposure(cube: np.ndarray) -> float:
    """The exposure of ``cube`` (C, H, W) relative to a normal one, in (0, 1]: its :func:`brightness` over
    :data:`REFERENCE_BRIGHTNESS` (1 for a cube as bright as a normal scene or brighter)."""
    return float(np.clip(brightness(cube) / REFERENCE_BRIGHTNESS, 1e-3, 1.0))


def correct_exposure(cube: np.ndarray, exposure: float) -> np.ndarray:
    """``cube`` (C, H, W) at a normal exposure: divided by ``exposure`` (in (0, 1]), float32, not clipped."""
    return (np.asarray(cube, np.float32) / np.float32(max(exposure, 1e-3))).astype(np.float32)
