"""VarFormer's restorer: a U-Net on the degraded tile whose decoder levels take the transformer's per-scale
residuals as a prior (Wang et al., "VarFormer: Adapting VAR's Generative Prior for Image Restoration", CVPR 2025).

Encoder: conv_in → per level NAF blocks, a strided conv between levels (the VQ-VAE's downsampling, so the
coarsest level is the latent grid). Decoder, coarse to fine, per level l:

* **mix-up skip**: h = s·h + (1 − s)·enc_l, s = sigmoid(θ_l), θ_l = 1 at initialisation (s ≈ 0.73);
* **prior**: the K per-scale residuals r_k (B, Cvae, G, G) of the greedy decoding are weighted per sample by a
  softmax over scales read from h (1×1 conv to K channels, global mean), concatenated (K·Cvae channels),
  instance-normalised, projected by a 1×1 conv and resized to the level: p (B, c_l, H_l, W_l);
* **DAE** (degradation-aware enhancement): a per-pixel softmax over two maps from conv(cat(h, p)) mixes them,
  w_h·h + w_p·p;
* **AFT** (anchor cross-attention): anchors a = conv_{s×s, stride s}(GN(cat(h, p))), HW/s² tokens;
  w1 = softmax(q·aᵀ/√c), w2 = softmax(a·kᵀ/√c) with q from h and k, v from p; h + proj(w1·w2·v), proj = 0 at
  initialisation;
* NAF blocks.

Output: conv_out → y, blended with the input as y·(1 − w) + w·x per band, w = sigmoid(ω), ω = 0 (w = 0.5) at
initialisation. VarFormer's Swin blocks inside the prior weighting and the DAE are convolutions here, and its
optional deformable texture warping is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hsivar.config import VarFormerConfig, VQVAEConfig
from hsivar.models.norm import GroupNorm
from hsivar.models.refiner import NAFBlock


def _blocks(c: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[NAFBlock(c) for _ in range(n)])


class ScalePrior(nn.Module):
    """The per-scale residuals (B, K, Cvae, G, G) → a prior (B, c, H, W) for decoder features h (B, c, H, W)."""

    def __init__(self, c: int, scales: int, z_channels: int) -> None:
        super().__init__()
        self.weigh = nn.Conv2d(c, scales, 1)
        self.norm = nn.InstanceNorm2d(scales * z_channels, affine=True)
        self.proj = nn.Conv2d(scales * z_channels, c, 1)

    def forward(self, h_BcHW: torch.Tensor, scales_BKChw: torch.Tensor) -> torch.Tensor:
        """h (B, c, H, W), residuals (B, K, Cvae, G, G) → prior (B, c, H, W)."""
        B, K, Cv, G, _ = scales_BKChw.shape
        w_BK = self.weigh(h_BcHW).mean(dim=(2, 3)).softmax(dim=1)
        mixed = (scales_BKChw.to(h_BcHW.dtype) * w_BK[:, :, None, None, None]).reshape(B, K * Cv, G, G)
        p = self.proj(self.norm(mixed))
        return F.interpolate(p, size=h_BcHW.shape[-2:], mode="bilinear", align_corners=False) \
            if p.shape[-2:] != h_BcHW.shape[-2:] else p


class DAE(nn.Module):
    """Degradation-aware enhancement: a per-pixel softmax between features h and prior p, both (B, c, H, W)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, 2, 1))

    def forward(self, h_BcHW: torch.Tensor, p_BcHW: torch.Tensor) -> torch.Tensor:
        w = self.net(torch.cat([h_BcHW, p_BcHW], dim=1)).softmax(dim=1)
        return w[:, :1] * h_BcHW + w[:, 1:] * p_BcHW


class AFT(nn.Module):
    """Anchor cross-attention from features h to prior p through HW/s² anchors; (B, c, H, W) → same."""

    def __init__(self, c: int, stride: int, groups: int) -> None:
        super().__init__()
        self.norm = GroupNorm(groups, 2 * c, eps=1e-6)
        self.anchor = nn.Conv2d(2 * c, c, stride, stride=stride)
        self.norm_p = GroupNorm(groups, c, eps=1e-6)
        self.q = nn.Conv2d(c, c, 1)
        self.kv = nn.Conv2d(c, 2 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h_BcHW: torch.Tensor, p_BcHW: torch.Tensor) -> torch.Tensor:
        B, c, H, W = h_BcHW.shape
        a = self.anchor(self.norm(torch.cat([h_BcHW, p_BcHW], dim=1))).flatten(2).transpose(1, 2)  # (B, M, c)
        q = self.q(h_BcHW).flatten(2).transpose(1, 2)  # (B, N, c)
        k, v = (t.flatten(2).transpose(1, 2) for t in self.kv(self.norm_p(p_BcHW)).chunk(2, dim=1))
        scale = c**-0.5
        w1 = (q @ a.transpose(1, 2) * scale).softmax(dim=-1)  # (B, N, M)
        w2 = (a @ k.transpose(1, 2) * scale).softmax(dim=-1)  # (B, M, N)
        out = (w1 @ (w2 @ v)).transpose(1, 2).reshape(B, c, H, W)
        return h_BcHW + self.proj(out)


class PriorUNet(nn.Module):
    """(x (B, C, S, S) in [0, 1], residuals (B, K, Cvae, G, G)) → restored tile (B, C, S, S) in [-1, 1]."""

    def __init__(self, cfg: VarFormerConfig, vq: VQVAEConfig) -> None:
        super().__init__()
        n, K = len(vq.ch_mult), len(vq.patch_nums)
        widths = [cfg.width * m for m in vq.ch_mult]
        sides = [vq.image_size // 2**level for level in range(n)]
        self.conv_in = nn.Conv2d(vq.bands, widths[0], 3, padding=1)
        self.enc = nn.ModuleList([_blocks(w, cfg.blocks) for w in widths])
        self.down = nn.ModuleList([nn.Conv2d(widths[i], widths[i + 1], 2, stride=2) for i in range(n - 1)])
        self.middle = _blocks(widths[-1], cfg.blocks)
        self.up = nn.ModuleList([nn.Sequential(nn.Conv2d(widths[i + 1], 4 * widths[i], 1), nn.PixelShuffle(2))
                                 for i in range(n - 1)])
        self.mix = nn.Parameter(torch.ones(n))  # θ_l of the mix-up skips
        self.prior = nn.ModuleList([ScalePrior(w, K, vq.z_channels) for w in widths])
        self.dae = nn.ModuleList([DAE(w) for w in widths])
        self.aft = nn.ModuleList([AFT(w, min(cfg.anchor_stride, s), min(cfg.groups, w)) for w, s in zip(widths, sides)])
        self.dec = nn.ModuleList([_blocks(w, cfg.blocks) for w in widths])
        self.conv_out = nn.Conv2d(widths[0], vq.bands, 3, padding=1)
        self.input_w = nn.Parameter(torch.zeros(vq.bands))  # w = sigmoid(ω) = 0.5 per band at initialisation

    def forward(self, x01_BCHW: torch.Tensor, scales_BKChw: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S) in [0, 1] (the degraded tile or its first estimate), the greedy decoding's per-scale
        residuals (B, K, Cvae, G, G) → (B, C, S, S) in [-1, 1] units (not clamped)."""
        x = x01_BCHW * 2 - 1
        h, feats = self.conv_in(x), []
        for i, blocks in enumerate(self.enc):
            h = blocks(h)
            feats.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        h = self.middle(h)
        for i in reversed(range(len(self.enc))):
            if i < len(self.up):
                h = self.up[i](h)
            s = torch.sigmoid(self.mix[i])
            h = s * h + (1 - s) * feats[i]
            p = self.prior[i](h, scales_BKChw)
            h = self.dec[i](self.aft[i](self.dae[i](h, p), p))
        w = torch.sigmoid(self.input_w)[None, :, None, None]
        return self.conv_out(h) * (1 - w) + w * x
