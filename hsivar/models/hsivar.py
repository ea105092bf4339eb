"""HSI-VAR: the whole restoration model, assembled from its typed config.

Parts: ``vqvae`` (E, quantiser, D with SSA), ``cond`` (E_con + P), ``dag`` (task
embeddings, λ, classifier), ``var`` (next-scale transformer), ``refiner`` (NAFNet on the
latent) and, when ``cfg.fusion.width > 0``, ``fusion`` (NAFNet on the image grid, see
:mod:`hsivar.models.fusion`). Cubes enter and leave in [0, 1] (B, C, H, W) with
H = W = ``cfg.vqvae.image_size``; the VQ-VAE works in [-1, 1] internally, as VAR does.

Restoration of one tile: c = E_con(lq) → prefix P(c), d from the task (or the classifier) →
autoregressive tokens scale by scale (KV cache) → f̂_K → f̂_K + Q(z, W(e[r_K])) → D → cube
(with ``decoder_skips``, D also receives E_con's per-level features of lq) → ŷ, and with a fusion
head the cube is ŷ corrected by F(lq, ŷ, task weights). With ``cfg.first_estimate`` the classical first
estimate x0 of the tile (:mod:`hsivar.estimate`) takes lq's place in E_con, and the fusion head starts
from x0; the task classifier always reads lq.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import record_function

from hsivar.config import ModelConfig, Stage
from hsivar.models.base import Guidance, RestorationModel, RestoreOutput, parameters_of, to_model_range
from hsivar.models.condition import ConditionEncoder
from hsivar.models.dag import TaskSpec
from hsivar.models.refiner import Refiner
from hsivar.models.var import GREEDY, NextScaleTransformer, Sampling
from hsivar.models.vqvae import VQVAE

__all__ = ["HSIVAR", "Guidance", "RestoreOutput", "to_model_range"]


class HSIVAR(RestorationModel):
    """The HSI-VAR model (family ``hsivar``); see the module docstring. Shared parts and :meth:`restore`:
    :class:`~hsivar.models.base.RestorationModel`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        width, vq = cfg.transformer.width, cfg.vqvae
        self.vqvae = VQVAE(vq)
        self.cond = ConditionEncoder(vq, width)
        self.dag = self.build_dag()
        self.var = NextScaleTransformer(cfg.transformer, vq)
        self.refiner = Refiner(cfg.refiner, width, vq.z_channels, vq.latent_size)
        self.fusion = self.build_fusion()

    def stage_parameters(self, stage: Stage) -> list[nn.Parameter]:
        """Stage var: E_con + P, the DAG, the transformer and the refiner; stage decoder: the decoder (SSA, skips),
        post_quant_conv, the refiner (fine-tuned on autoregressive latents) and the fusion head; vqvae: the base's."""
        if stage == "var":
            return parameters_of(self.cond, self.dag, self.var, self.refiner)
        if stage == "decoder":
            return parameters_of(self.vqvae.decoder, self.vqvae.post_quant_conv, self.refiner, self.fusion)
        return super().stage_parameters(stage)

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """E_con + P, the NAFNet refiner; no restorer."""
        return {"condition_encoder": list(self.cond.parameters()), "refiner": list(self.refiner.parameters()),
                "restorer": []}

    def init_condition_encoder(self) -> None:
        """Start of stage 2: E_con ← copy of the trained E (and quant_conv)."""
        self.cond.copy_from(self.vqvae.encoder, self.vqvae.quant_conv)

    def refine(self, hidden_last: torch.Tensor, idx_last: torch.Tensor) -> torch.Tensor:
        """Q(z, W(e[r_K])): hidden (B, p_K², C), last-scale indices (B, p_K²) → residual (B, Cvae, h, w)."""
        w = self.var.word_embed(self.vqvae.quantize.embedding(idx_last).to(self.var.word_embed.weight.dtype))
        return self.refiner(hidden_last, w)

    def continuous_latent(self, out: RestoreOutput) -> torch.Tensor:
        """f̂_K + Q(z, W(e[r_K])): the refiner's residual on the greedy latent; → (B, Cvae, h, w)."""
        return out.latent + self.refine(out.hidden_last, out.idx[-1])

    @torch.no_grad()
    def autoregress(self, lq01: torch.Tensor, task: TaskSpec = "auto", sampling: Sampling = GREEDY,
                    generator: torch.Generator | None = None, guidance: Guidance = "dag",
                    cfg_scale: float = 1.5, kv_cache: bool = True,
                    estimate01: torch.Tensor | None = None) -> RestoreOutput:
        """The token half of restoration (see :meth:`RestorationModel.autoregress`): E_con → prefix P(c), d from
        the task or the classifier → tokens scale by scale. Stage 3 trains the decoder on its latent
        (:func:`hsivar.training.stage3_loss`)."""
        self.check_input(lq01)
        # record_function: the parts a profiler reports (bench/inference.py --parts); a no-op otherwise
        with record_function("hsivar.condition"):
            c, feats = self.cond.encode_with_features(to_model_range(self.condition_input(lq01, estimate01)))
            prefix = self.cond.prefix(c)
        skips = feats if self.cfg.vqvae.decoder_skips else None
        with record_function("hsivar.guidance"):
            weights = self.dag.weights(task, lq01)
            d = self.dag.embed(weights)
        with record_function("hsivar.transformer"):
            gen = self.var.generate(
                prefix, d, self.vqvae.quantize, sampling, generator,
                d_uncond_BC=self.dag.null(d.shape[0]) if guidance == "cfg" else None,
                cfg_scale=cfg_scale if guidance == "cfg" else 0.0, kv_cache=kv_cache,
            )
        empty = lq01.new_zeros(lq01.shape[0], 0, 0, 0)
        return RestoreOutput(empty, weights, gen.idx, gen.f_hat, gen.hidden_last, skips)
