"""Gaussian kernels shared by the blur degradation, its classical baseline, SSIM and the fusion head."""

from __future__ import annotations

import numpy as np

__all__ = ["blur_sigma", "gaussian_kernel1d"]


def blur_sigma(kernel_size: int) -> float:
    """Gaussian σ in pixels for an odd kernel size k by OpenCV's rule ``0.3((k−1)/2 − 1) + 0.8``.

    k = 9, 15, 21 → σ = 1.7, 2.6, 3.5 px (the blur family's test levels).
    """
    return 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8


def gaussian_kernel1d(size: int, sigma: float | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle one; → (size,) float32 summing to 1.

    Args:
        size: number of taps, a positive odd integer.
        sigma: width in pixels; None for :func:`blur_sigma` of ``size``.

    Raises:
        ValueError: ``size`` is not a positive odd integer.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be a positive odd integer, got {size}")
    sigma = blur_sigma(size) if sigma is None else sigma
    # float64 taps, normalised, then float32: the sum is 1 to float32 precision.
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)
