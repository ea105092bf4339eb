"""Convolutional encoder and decoder of the multi-scale VQ-VAE (VAR's LDM-style family).

Same structure and parameter names as VAR's ``models/basic_vae.py`` so its checkpoints load
directly, but the band count is a parameter: the encoder's ``conv_in`` takes C bands and the
decoder's ``conv_out`` gives C bands. Images live in [-1, 1] as in VAR.

Encoder: conv_in → per level [res blocks (+ self-attention in the last level), downsample except
at the last level] → mid (res, attn, res) → GroupNorm → SiLU → conv_out (→ Cvae).
Decoder: conv_in (Cvae →) → mid → per level, reversed [res blocks ×(n+1) (+ attn at the top level),
SSA, upsample except at level 0] → GroupNorm → SiLU → conv_out (→ C).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hsivar.config import VQVAEConfig
from hsivar.models.norm import GroupNorm
from hsivar.models.ssa import SSA


def _norm(channels: int, groups: int) -> GroupNorm:
    return GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3, twice, plus a 1×1 shortcut when widths differ; (B,Ci,H,W) → (B,Co,H,W)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                             else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (1×1 qkv conv, scale C^-½); (B,C,H,W) → same."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # (B,HW,C)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √C) v
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample2x(nn.Module):
    """Pad right/bottom by one, then a stride-2 conv3×3; (B,C,H,W) → (B,C,H/2,W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    """Nearest ×2 then conv3×3; (B,C,H,W) → (B,C,2H,2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int, attn: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups) if attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks), ``attn`` (one per block or empty), resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample is not None:
            # VAR names the resampler ``downsample`` in the encoder and ``upsample`` in the decoder.
            setattr(self, "downsample" if isinstance(resample, Downsample2x) else "upsample", resample)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class Encoder(nn.Module):
    """Image (B, C, H, W) in [-1, 1] → latent (B, Cvae, H/d, W/d), d = 2^(levels−1)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        g, n_levels = cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.bands, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i_level, mult in enumerate(cfg.ch_mult):
            block_out = cfg.ch * mult
            last = i_level == n_levels - 1
            blocks = [ResnetBlock(block_in if i == 0 else block_out, block_out, cfg.dropout, g)
                      for i in range(cfg.num_res_blocks)]
            attns = [AttnBlock(block_out, g) for _ in range(cfg.num_res_blocks)] if last and cfg.using_sa else []
            self.down.append(_Level(blocks, attns, None if last else Downsample2x(block_out)))
            block_in = block_out
        self.mid = _Mid(block_in, cfg.dropout, g, cfg.using_mid_sa)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor, features: bool = False) -> Any:
        """Latent (B, Cvae, H/d, W/d); with ``features``, (latent, features) as :meth:`forward_features`."""
        h = self.conv_in(x_BCHW)
        feats = []
        for level in self.down:
            h = level.run_blocks(h)
            feats.append(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        z = self.conv_out(F.silu(self.norm_out(h)))
        return (z, feats) if features else z

    def forward_features(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Latent (B, Cvae, H/d, W/d) and each level's features before its downsampling:
        level i is (B, ch·ch_mult[i], H/2^i, W/2^i) (the decoder's skip inputs). A module call, so that hooks
        (``hsivar info``'s FLOP count per part) see the encoder."""
        return self(x_BCHW, features=True)


class Decoder(nn.Module):
    """Latent (B, Cvae, h, w) → image (B, C, h·d, w·d) (unclamped; VAR clamps to [-1, 1] after)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        g, n_levels = cfg.norm_groups, len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.dropout, g, cfg.using_mid_sa)
        levels: list[_Level] = []
        ssa: list[SSA] = []
        for i_level in reversed(range(n_levels)):
            block_out = cfg.ch * cfg.ch_mult[i_level]
            blocks = [ResnetBlock(block_in if i == 0 else block_out, block_out, cfg.dropout, g)
                      for i in range(cfg.num_res_blocks + 1)]
            top = i_level == n_levels - 1
            attns = [AttnBlock(block_out, g) for _ in range(cfg.num_res_blocks + 1)] if top and cfg.using_sa else []
            levels.insert(0, _Level(blocks, attns, Upsample2x(block_out) if i_level != 0 else None))
            if cfg.ssa:
                ssa.insert(0, SSA(block_out, cfg.ssa_heads, cfg.ssa_window, g))
            block_in = block_out
        self.up = nn.ModuleList(levels)  # indexed by level, as in VAR: up[0] is the full-resolution level
        self.ssa = nn.ModuleList(ssa) if cfg.ssa else None
        # Skips from the condition encoder's level-i features (same width as decoder level i), zero-
        # initialised so that adding them leaves a trained decoder unchanged until stage 3 trains them.
        self.skips = nn.ModuleList(
            [nn.Conv2d(cfg.ch * m, cfg.ch * m, 1) for m in cfg.ch_mult]) if cfg.decoder_skips else None
        if self.skips is not None:
            for conv in self.skips:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.bands, 3, padding=1)

    def forward(self, z_BChw: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Decode (B, Cvae, h, w) → (B, C, H, W); ``skips`` (with ``decoder_skips``): the condition
        encoder's per-level features (:meth:`Encoder.forward_features`), each added through its 1×1
        conv after the level's blocks."""
        h = self.mid(self.conv_in(z_BChw))
        for i_level in reversed(range(len(self.up))):
            level = self.up[i_level]
            h = level.run_blocks(h)
            if self.ssa is not None:
                h = self.ssa[i_level](h)
            if self.skips is not None and skips is not None:
                h = h + self.skips[i_level](skips[i_level].to(h.dtype))
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
