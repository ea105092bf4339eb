"""The condition path and transformer shared by the RestoreVAR and VarFormer families: the degraded cube's
continuous latent, read by cross-attention in every block of the next-scale transformer.

Parts (built in this order, then the family's own, then the fusion head): ``vqvae``; ``cond_proj`` and
``cond_embed`` (the latent → condition tokens); ``sos`` with the zero-gain global embedding (``global_embed``,
``global_gain``); ``dag`` (only its task classifier is used: ``task="auto"``, the observation and the fusion head
read it; the transformer takes no task); ``var`` (:class:`~hsivar.models.var.NextScaleTransformer` with
``cross=True``: a zero-gain cross-attention to the condition tokens after the FFN of every block).

Condition of one tile: z = E(x) — the frozen VQ-VAE encoder's output before quant_conv, as RestoreVAR's
``img_to_fs`` gives it; x is the degraded tile, or its first estimate with ``cfg.first_estimate`` — → tokens
cond_embed(cond_proj(z)) (+ a level embedding inside the transformer); start token
sos + g·global_embed(mean over cells of cond_proj(z)), g = 0 at initialisation. The transformer is trained on
teacher-forced token cross-entropy alone (:func:`hsivar.training.cross_stage2_loss`): no alignment loss, no task.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.profiler import record_function

from hsivar.config import ModelConfig, Stage
from hsivar.models.base import Guidance, RestorationModel, RestoreOutput, to_model_range
from hsivar.models.dag import TaskSpec
from hsivar.models.var import GREEDY, NextScaleTransformer, Sampling
from hsivar.models.vqvae import VQVAE


class CrossConditioned(RestorationModel):
    """The shared parts (see the module docstring); a family adds its refinement and decoder, then the fusion head
    (``self.fusion = self.build_fusion()``)."""

    token_path_reads_task = False  # the task weights reach only the fusion head
    keep_hidden = False
    """Whether :meth:`autoregress` keeps every scale's hidden states (``RestoreOutput.hidden``)."""
    keep_scales = False
    """Whether :meth:`autoregress` keeps each scale's residual (``RestoreOutput.scales``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        width, vq = cfg.transformer.width, cfg.vqvae
        z = vq.z_channels
        self.vqvae = VQVAE(vq)
        self.cond_proj = nn.Linear(z, z)
        self.cond_embed = nn.Linear(z, width)
        self.sos = nn.Parameter(torch.randn(width) * math.sqrt(1 / width / 3))
        self.global_embed = nn.Linear(z, width)
        self.global_gain = nn.Parameter(torch.zeros(1))
        self.dag = self.build_dag()
        self.var = NextScaleTransformer(cfg.transformer, vq, cross=True)

    def condition_parameters(self) -> list[nn.Parameter]:
        """The condition path's own weights (projections, start token, global embedding): trained in stage var."""
        parts = (self.cond_proj, self.cond_embed, self.global_embed)
        return [p for m in parts for p in m.parameters()] + [self.sos, self.global_gain]

    def stage_parameters(self, stage: Stage) -> list[nn.Parameter]:
        """Stage var: the transformer and the condition path (the VQ-VAE encoder it reads stays frozen); the other
        stages: the family's."""
        if stage == "var":
            return list(self.var.parameters()) + self.condition_parameters()
        return super().stage_parameters(stage)

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The condition projections and start token; no refiner or restorer (a family adds its own)."""
        return {"condition_encoder": self.condition_parameters(), "refiner": [], "restorer": []}

    def condition(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """The condition of tiles x (B, C, S, S) in [0, 1] (the degraded tile or its first estimate) → (condition
        tokens (B, h·w, width), start token (B, width), the encoder's per-level features for the decoder's skips
        or None). The encoder is the VQ-VAE's own and stays frozen: it runs without gradients."""
        with torch.no_grad():
            z, feats = self.vqvae.encoder.forward_features(to_model_range(x01))
        z_BNC = self.cond_proj(z.flatten(2).transpose(1, 2).to(self.cond_proj.weight.dtype))
        sos = self.sos + self.global_gain * self.global_embed(z_BNC.mean(dim=1))
        return self.cond_embed(z_BNC), sos, feats if self.cfg.vqvae.decoder_skips else None

    @torch.no_grad()
    def autoregress(self, lq01: torch.Tensor, task: TaskSpec = "auto", sampling: Sampling = GREEDY,
                    generator: torch.Generator | None = None, guidance: Guidance = "dag",
                    cfg_scale: float = 1.5, kv_cache: bool = True,
                    estimate01: torch.Tensor | None = None) -> RestoreOutput:
        """The token half of restoration (see :meth:`RestorationModel.autoregress`); ``task`` only sets the task
        weights the fusion head reads. Raises ValueError for ``guidance="cfg"``: these families have no
        unconditional embedding to guide against."""
        self.check_input(lq01)
        if guidance != "dag":
            raise ValueError(f"the {self.cfg.family} family decodes without classifier-free guidance "
                             f"(got {guidance!r})")
        with record_function("hsivar.condition"):
            memory, sos, skips = self.condition(self.condition_input(lq01, estimate01))
        with record_function("hsivar.guidance"):
            weights = self.dag.weights(task, lq01)
        with record_function("hsivar.transformer"):
            gen = self.var.generate(memory, sos, self.vqvae.quantize, sampling, generator, kv_cache=kv_cache,
                                    keep_hidden=self.keep_hidden, keep_scales=self.keep_scales)
        empty = lq01.new_zeros(lq01.shape[0], 0, 0, 0)
        return RestoreOutput(empty, weights, gen.idx, gen.f_hat, gen.hidden_last, skips, gen.hidden, gen.scales)
