"""Differentiable losses: per-band SSIM, and the training objectives of the three stages.

All images here are in [0, 1], shaped (B, C, H, W) with C spectral bands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hsivar.kernels import gaussian_kernel1d


def ssim_per_band(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
                  sigma: float = 1.5) -> torch.Tensor:
    """SSIM of every band of x and y (B, C, H, W), Gaussian window, valid region; → (B, C) float32.

    The window shrinks to the image side (odd) for images smaller than ``window`` pixels. Computed in
    float32 with autocast off: the variances are differences of nearly equal local means (E[x²] − E[x]²),
    which bf16's 8-bit mantissa cancels to noise, enough to make training diverge under bf16 autocast.
    """
    with torch.autocast("cuda" if x.is_cuda else "cpu", enabled=False):  # the meta device has no autocast
        return _ssim_fp32(x.float(), y.float(), data_range, window, sigma)


def _ssim_fp32(x: torch.Tensor, y: torch.Tensor, data_range: float, window: int, sigma: float) -> torch.Tensor:
    B, C, H, W = x.shape
    size = min(window, H, W)
    size -= 1 - size % 2
    g = torch.as_tensor(gaussian_kernel1d(size, sigma), device=x.device)
    kernel = (g[:, None] * g[None, :]).expand(C, 1, size, size).to(x.dtype)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=C)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-2, -1))


def l1_ssim_loss(pred01: torch.Tensor, target01: torch.Tensor,
                 ssim_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + w·(1 − SSIM), SSIM averaged over bands; images (B, C, H, W) in [0, 1] → (scalar, logs)."""
    l1 = F.l1_loss(pred01, target01)
    ssim = ssim_per_band(pred01, target01).mean()
    return l1 + ssim_weight * (1 - ssim), {"l1": float(l1.detach()), "ssim": float(ssim.detach())}
