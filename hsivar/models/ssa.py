"""Spatial–spectral adaptation (SSA) for the VQ-VAE decoder.

In every decoder stage ``f ← Spa-A(f) + σ·Spe-A(f)`` with

* ``Spa-A(f) = f + γ·WinAttn(f)`` — multi-head self-attention inside non-overlapping spatial
  windows (linear in H·W, so it runs at the decoder's full resolution);
* ``Spe-A(f)`` — attention across channels (a C×C map per head from L2-normalised queries and keys
  over all pixels, with a learned temperature), the decoder's stand-in for "spectral" attention.

γ and σ start at 0, so adding SSA to a trained decoder leaves its output unchanged; stage 3
fine-tunes decoder + SSA from there (the zero-init gate pattern of NAFNet's β/γ and RestoreVAR's
cross-attention gain).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hsivar.models.norm import GroupNorm


class WindowAttention(nn.Module):
    """Multi-head self-attention within ``window``×``window`` spatial windows; (B,C,H,W) → (B,C,H,W)."""

    def __init__(self, channels: int, heads: int, window: int, norm_groups: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.norm = GroupNorm(norm_groups, channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        w = min(self.window, H, W)
        pad_h, pad_w = (-H) % w, (-W) % w
        qkv = self.qkv(self.norm(x_BCHW))
        if pad_h or pad_w:
            qkv = F.pad(qkv, (0, pad_w, 0, pad_h))
        q, k, v = rearrange(
            qkv, "b (three n d) (hh wy) (ww wx) -> three (b hh ww) n (wy wx) d",
            three=3, n=self.heads, wy=w, wx=w,
        )
        out = F.scaled_dot_product_attention(q, k, v)  # (B·windows, heads, w², d)
        out = rearrange(out, "(b hh ww) n (wy wx) d -> b (n d) (hh wy) (ww wx)",
                        b=B, hh=(H + pad_h) // w, wy=w, wx=w)
        return self.proj(out[:, :, :H, :W])


class SpectralAttention(nn.Module):
    """Attention across channels (transposed attention); (B,C,H,W) → (B,C,H,W), cost linear in H·W."""

    def __init__(self, channels: int, heads: int, norm_groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm(norm_groups, channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.qkv_dw = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels)
        self.log_temperature = nn.Parameter(torch.zeros(heads, 1, 1))
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        q, k, v = self.qkv_dw(self.qkv(self.norm(x_BCHW))).chunk(3, dim=1)
        q, k, v = (rearrange(t, "b (n c) h w -> b n c (h w)", n=self.heads) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.log_temperature.exp()).softmax(dim=-1)  # (B,n,c,c)
        out = rearrange(attn @ v, "b n c (h w) -> b (n c) h w", h=H, w=W)
        return self.proj(out)


class SSA(nn.Module):
    """``f + γ·WinAttn(f) + σ·SpeAttn(f)`` with γ = σ = 0 at initialisation; (B,C,H,W) → same."""

    def __init__(self, channels: int, heads: int, window: int, norm_groups: int) -> None:
        super().__init__()
        self.spa = WindowAttention(channels, heads, window, norm_groups)
        self.spe = SpectralAttention(channels, heads, norm_groups)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.sigma = nn.Parameter(torch.zeros(1))

    def forward(self, f_BCHW: torch.Tensor) -> torch.Tensor:
        spa = f_BCHW + self.gamma * self.spa(f_BCHW)
        return spa + self.sigma * self.spe(f_BCHW)
