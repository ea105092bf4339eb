"""Condition path: E_con encodes the degraded cube; P projects its latent to prefix tokens.

E_con is a copy of the trained VQ-VAE encoder (and its quant_conv), so at the start of stage 2 it
maps a clean cube exactly where E does; the alignment loss ‖E_con(lq) − E(hq)‖² then pulls the
degraded cube's continuous latent towards the clean one (VarFormer's "hq_feat" idea). The latent
is kept continuous (RestoreVAR feeds the pre-quantisation latent too): flattened to h·w tokens and
projected by P = Linear(Cvae, width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hsivar.config import VQVAEConfig
from hsivar.models.autoencoder import Encoder


class ConditionEncoder(nn.Module):
    """E_con + P: degraded cube (B, C, H, W) in [-1, 1] → latent (B, Cvae, h, w) → tokens (B, h·w, width)."""

    def __init__(self, cfg: VQVAEConfig, width: int) -> None:
        super().__init__()
        self.encoder = Encoder(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, padding=ks // 2)
        self.proj = nn.Linear(cfg.z_channels, width)

    @torch.no_grad()
    def copy_from(self, encoder: Encoder, quant_conv: nn.Conv2d) -> None:
        """Initialise E_con as an exact copy of the trained encoder E and its quant_conv."""
        self.encoder.load_state_dict(encoder.state_dict())
        self.quant_conv.load_state_dict(quant_conv.state_dict())

    def encode(self, lq_BCHW: torch.Tensor) -> torch.Tensor:
        """Continuous condition latent c = quant_conv(E_con(lq)); → (B, Cvae, h, w)."""
        return self.encode_with_features(lq_BCHW)[0]

    def encode_with_features(self, lq_BCHW: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """c as :meth:`encode` plus E_con's per-level features (the decoder's skip inputs)."""
        h, feats = self.encoder.forward_features(lq_BCHW)
        return self.quant_conv(h), feats

    def prefix(self, c_BChw: torch.Tensor) -> torch.Tensor:
        """Prefix tokens P(c); (B, Cvae, h, w) → (B, h·w, width), row-major over the latent grid."""
        return self.proj(c_BChw.flatten(2).transpose(1, 2))


def alignment_loss(c_BChw: torch.Tensor, f_BChw: torch.Tensor) -> torch.Tensor:
    """‖E_con(lq) − E(hq)‖², the mean squared error to the (detached) clean latent; → scalar."""
    return F.mse_loss(c_BChw.float(), f_BChw.detach().float())
