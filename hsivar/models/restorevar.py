"""RestoreVAR (Rajagopalan et al., ICLR 2026) as a model family of the platform, for C-band cubes.

Parts: ``vqvae`` (shared with HSI-VAR's design: E, quantiser, D with SSA), ``cond_proj`` and ``cond_embed``
(the degraded cube's continuous latent → condition tokens), ``sos`` with the zero-gain global embedding
(``global_embed``, ``global_gain``), ``var`` (the next-scale transformer with a zero-gain cross-attention to the
condition tokens in every block; :mod:`hsivar.models.var`), ``lrt`` (the latent refiner transformer;
:mod:`hsivar.models.lrt`), ``dag`` (only its task classifier is used: ``task="auto"``, the observation and the
fusion head read it; the transformer takes no task) and, when ``cfg.fusion.width > 0``, ``fusion``.

Restoration of one tile: z = E(lq) — the frozen VQ-VAE encoder's output before quant_conv, as RestoreVAR's
``img_to_fs`` gives it — → tokens cond_embed(cond_proj(z)) (+ a level embedding inside the transformer); start
token sos + g·global_embed(mean over cells of cond_proj(z)), g = 0 at initialisation → greedy tokens scale by
scale (KV cache; every block cross-attends to the condition tokens) → f̂_K → LRT(f̂_K, every scale's hidden
states) → D (fine-tuned on these continuous latents in stage ``decoder``) → ŷ (and the fusion head, as in
HSI-VAR). With ``cfg.first_estimate`` the first estimate x0 takes lq's place in E. Stages: ``vqvae``, ``var``
(token cross-entropy only: no alignment loss), ``refiner`` (LRT, L1 to the clean latent on greedy outputs),
``decoder``; see :mod:`hsivar.training`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.profiler import record_function

from hsivar.config import ModelConfig
from hsivar.models.base import Guidance, RestorationModel, RestoreOutput, to_model_range
from hsivar.models.dag import TaskSpec
from hsivar.models.lrt import LatentRefinerTransformer
from hsivar.models.var import GREEDY, NextScaleTransformer, Sampling
from hsivar.models.vqvae import VQVAE


class RestoreVAR(RestorationModel):
    """The RestoreVAR family; see the module docstring. Shared parts and :meth:`restore`:
    :class:`~hsivar.models.base.RestorationModel`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        width, vq = cfg.transformer.width, cfg.vqvae
        z = vq.z_channels
        self.vqvae = VQVAE(vq)
        self.cond_proj = nn.Linear(z, z)
        self.cond_embed = nn.Linear(z, width)
        std = math.sqrt(1 / width / 3)
        self.sos = nn.Parameter(torch.randn(width) * std)
        self.global_embed = nn.Linear(z, width)
        self.global_gain = nn.Parameter(torch.zeros(1))
        self.dag = self.build_dag()
        self.var = NextScaleTransformer(cfg.transformer, vq, cross=True)
        self.lrt = LatentRefinerTransformer(cfg.lrt, cfg.transformer, vq)
        self.fusion = self.build_fusion()

    def condition_parameters(self) -> list[nn.Parameter]:
        """The condition path's own weights (projections, start token, global embedding): trained in stage var."""
        parts = (self.cond_proj, self.cond_embed, self.global_embed)
        return [p for m in parts for p in m.parameters()] + [self.sos, self.global_gain]

    def condition(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """The condition of tiles x (B, C, S, S) in [0, 1] (the degraded tile or its first estimate) → (condition
        tokens (B, h·w, width), start token (B, width), the encoder's per-level features for the decoder's skips
        or None). The encoder is the VQ-VAE's own and stays frozen: it runs without gradients."""
        with torch.no_grad():
            z, feats = self.vqvae.encoder.forward_features(to_model_range(x01))
        z_BNC = self.cond_proj(z.flatten(2).transpose(1, 2).to(self.cond_proj.weight.dtype))
        sos = self.sos + self.global_gain * self.global_embed(z_BNC.mean(dim=1))
        return self.cond_embed(z_BNC), sos, feats if self.cfg.vqvae.decoder_skips else None

    def continuous_latent(self, out: RestoreOutput) -> torch.Tensor:
        """LRT(f̂_K, every scale's hidden states); → (B, Cvae, h, w)."""
        if out.hidden is None:
            raise ValueError("RestoreVAR's refiner needs every scale's hidden states (autoregress keeps them)")
        return self.lrt(out.latent, out.hidden)

    @torch.no_grad()
    def autoregress(self, lq01: torch.Tensor, task: TaskSpec = "auto", sampling: Sampling = GREEDY,
                    generator: torch.Generator | None = None, guidance: Guidance = "dag",
                    cfg_scale: float = 1.5, kv_cache: bool = True,
                    estimate01: torch.Tensor | None = None) -> RestoreOutput:
        """The token half of restoration (see :meth:`RestorationModel.autoregress`); ``task`` only sets the task
        weights the fusion head reads. Raises ValueError for ``guidance="cfg"``: RestoreVAR has no unconditional
        embedding to guide against."""
        self.check_input(lq01)
        if guidance != "dag":
            raise ValueError(f"the restorevar family decodes without classifier-free guidance (got {guidance!r})")
        with record_function("hsivar.condition"):
            memory, sos, skips = self.condition(self.condition_input(lq01, estimate01))
        with record_function("hsivar.guidance"):
            weights = self.dag.weights(task, lq01)
        with record_function("hsivar.transformer"):
            gen = self.var.generate(memory, sos, self.vqvae.quantize, sampling, generator, kv_cache=kv_cache,
                                    keep_hidden=True)
        empty = lq01.new_zeros(lq01.shape[0], 0, 0, 0)
        return RestoreOutput(empty, weights, gen.idx, gen.f_hat, gen.hidden_last, skips, gen.hidden)
