"""RestoreVAR (Rajagopalan et al., ICLR 2026) as a model family of the platform, for C-band cubes.

Parts: the cross-attention condition path and transformer it shares with VarFormer
(:class:`~hsivar.models.cross_condition.CrossConditioned`: ``vqvae``, ``cond_proj``, ``cond_embed``, ``sos``,
``global_embed``, ``global_gain``, ``dag``, ``var``), then ``lrt`` (the latent refiner transformer;
:mod:`hsivar.models.lrt`) and, when ``cfg.fusion.width > 0``, ``fusion``.

Restoration of one tile: condition tokens of E(lq) → greedy tokens scale by scale (KV cache; every block
cross-attends to the condition tokens) → f̂_K → LRT(f̂_K, every scale's hidden states) → D (fine-tuned on these
continuous latents in stage ``decoder``) → ŷ (and the fusion head, as in HSI-VAR). Stages: ``vqvae``, ``var``
(token cross-entropy only: no alignment loss), ``refiner`` (LRT, L1 to the clean latent on greedy outputs),
``decoder``; see :mod:`hsivar.training`.
"""

from __future__ import annotations

import torch
from torch import nn

from hsivar.config import ModelConfig, Stage
from hsivar.models.base import RestoreOutput, parameters_of
from hsivar.models.cross_condition import CrossConditioned
from hsivar.models.lrt import LatentRefinerTransformer


class RestoreVAR(CrossConditioned):
    """The RestoreVAR family; see the module docstring."""

    keep_hidden = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.lrt = LatentRefinerTransformer(cfg.lrt, cfg.transformer, cfg.vqvae)
        self.fusion = self.build_fusion()

    def stage_parameters(self, stage: Stage) -> list[nn.Parameter]:
        """Stage refiner: the LRT alone; stage decoder: the decoder, post_quant_conv and the fusion head, fine-tuned on
        the LRT's continuous latents (the LRT stays as stage refiner left it); vqvae and var: as every
        cross-conditioned family."""
        if stage == "refiner":
            return list(self.lrt.parameters())
        if stage == "decoder":
            return parameters_of(self.vqvae.decoder, self.vqvae.post_quant_conv, self.fusion)
        return super().stage_parameters(stage)

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The condition path and the LRT as the refiner."""
        return super().part_parameters() | {"refiner": list(self.lrt.parameters())}

    def continuous_latent(self, out: RestoreOutput) -> torch.Tensor:
        """LRT(f̂_K, every scale's hidden states); → (B, Cvae, h, w)."""
        if out.hidden is None:
            raise ValueError("RestoreVAR's refiner needs every scale's hidden states (autoregress keeps them)")
        return self.lrt(out.latent, out.hidden)
