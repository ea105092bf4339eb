"""VarFormer (Wang et al., CVPR 2025) as a model family of the platform, for C-band cubes.

Parts: the cross-attention condition path and transformer it shares with RestoreVAR
(:class:`~hsivar.models.cross_condition.CrossConditioned`), trained in stage ``var`` and then frozen: with the
VQ-VAE it is a multi-scale prior. Then ``restorer`` (a U-Net on the degraded tile whose decoder levels take the
greedy decoding's per-scale residuals through DAE and AFT; :mod:`hsivar.models.prior_unet`) and, when
``cfg.fusion.width > 0``, ``fusion``.

Restoration of one tile: condition tokens of E(lq) → greedy tokens scale by scale → the per-scale residuals
f̂_k − f̂_{k−1} (B, K, Cvae, h, w) → U-Net(lq, residuals) → ŷ (and the fusion head, as in HSI-VAR); the VQ-VAE
decoder is not used. With ``cfg.first_estimate`` the first estimate x0 takes lq's place in the condition and in
the U-Net. Stages: ``vqvae``, ``var`` (as RestoreVAR's), ``decoder`` (the U-Net and the fusion head, L1 (+ SSIM)
on greedy decodings; the prior stays frozen, so VarFormer's token CE term has nothing to train here).
VarFormer's own transformer conditions differently (cross-attention from the degraded image's tokens that
replaces the hidden states in the first blocks); this family uses RestoreVAR's cross-attention for its prior.
"""

from __future__ import annotations

import torch
from torch import nn

from hsivar.config import ModelConfig, Stage
from hsivar.models.base import RestoreOutput, parameters_of
from hsivar.models.cross_condition import CrossConditioned
from hsivar.models.prior_unet import PriorUNet


class VarFormer(CrossConditioned):
    """The VarFormer family; see the module docstring."""

    keep_scales = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.restorer = PriorUNet(cfg.varformer, cfg.vqvae)
        self.fusion = self.build_fusion()

    def stage_parameters(self, stage: Stage) -> list[nn.Parameter]:
        """Stage decoder: the U-Net restorer and the fusion head on the frozen prior; vqvae and var: as every
        cross-conditioned family."""
        if stage == "decoder":
            return parameters_of(self.restorer, self.fusion)
        return super().stage_parameters(stage)

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The condition path and the U-Net as the restorer."""
        return super().part_parameters() | {"restorer": list(self.restorer.parameters())}

    def continuous_latent(self, out: RestoreOutput) -> torch.Tensor:
        """f̂_K unchanged: VarFormer refines on the image grid (:meth:`decode`), not in the latent."""
        return out.latent

    def decode(self, out: RestoreOutput, latent: torch.Tensor, lq01: torch.Tensor,
               estimate01: torch.Tensor | None = None) -> torch.Tensor:
        """U-Net(condition input, per-scale residuals) → (B, C, S, S) in [-1, 1] units (``latent`` unused)."""
        if out.scales is None:
            raise ValueError("VarFormer's restorer needs each scale's residual (autoregress keeps them)")
        return self.restorer(self.condition_input(lq01, estimate01), out.scales)
