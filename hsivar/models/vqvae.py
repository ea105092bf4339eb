"""The multi-scale VQ-VAE: encoder → quant_conv → residual quantiser → post_quant_conv → decoder.

Parameter names follow VAR's ``VQVAE`` (``encoder.*``, ``decoder.*``, ``quantize.*``,
``quant_conv.*``, ``post_quant_conv.*``) so VAR checkpoints map one to one; SSA adds
``decoder.ssa.*``. Images are in [-1, 1]; the latent is (B, Cvae, H/d, W/d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hsivar.config import VQVAEConfig
from hsivar.models.autoencoder import Decoder, Encoder
from hsivar.models.quant import MultiScaleQuantizer, QuantOutput


@dataclass
class VQVAEOutput:
    """Stage-1 forward result."""

    reconstruction: torch.Tensor  # (B, C, H, W), unclamped, image units [-1, 1]
    latent: torch.Tensor  # (B, Cvae, h, w): quant_conv(encoder(x))
    quant: QuantOutput


class VQVAE(nn.Module):
    """Multi-scale residual VQ-VAE for C-band cubes."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, padding=ks // 2)

    def encode(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Continuous latent f = quant_conv(E(x)); x (B, C, H, W) in [-1, 1] → (B, Cvae, H/d, W/d)."""
        return self.quant_conv(self.encoder(x_BCHW))

    def decode(self, f_hat: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Decoder D(post_quant_conv(f̂)); (B, Cvae, h, w) → (B, C, h·d, w·d), unclamped.

        ``skips``: the condition encoder's per-level features when ``decoder_skips`` is on.
        """
        return self.decoder(self.post_quant_conv(f_hat), skips)

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decode and clamp to [-1, 1]; (B, Cvae, h, w) → (B, C, H, W)."""
        return self.decode(f_hat).clamp(-1, 1)

    def forward(self, x_BCHW: torch.Tensor) -> VQVAEOutput:
        """Encode, quantise and decode x (B, C, H, W) in [-1, 1]; H = W = cfg.image_size."""
        f = self.encode(x_BCHW)
        q = self.quantize(f)
        return VQVAEOutput(self.decode(q.f_hat), f, q)

    @torch.no_grad()
    def img_to_idx(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        """Token indices per scale of x (B, C, H, W) in [-1, 1]; → K tensors (B, p_k²) int64."""
        return self.quantize.f_to_idx(self.encode(x_BCHW))[0]
