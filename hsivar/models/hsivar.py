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

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.profiler import record_function

from hsivar.config import ModelConfig
from hsivar.models.condition import ConditionEncoder
from hsivar.models.dag import DegradationGuidance, TaskSpec
from hsivar.models.fusion import OutputFusion
from hsivar.models.refiner import Refiner
from hsivar.models.var import GREEDY, NextScaleTransformer, Sampling
from hsivar.models.vqvae import VQVAE

Guidance = Literal["dag", "cfg"]


@dataclass
class RestoreOutput:
    """Restoration of a batch of tiles."""

    cube: torch.Tensor  # (B, C, H, W) float32 in [0, 1]
    task_weights: torch.Tensor  # (B, N) the task weights used (classifier softmax for "auto")
    idx: list[torch.Tensor]  # K tensors (B, p_k²) chosen tokens
    latent: torch.Tensor  # (B, Cvae, h, w) restored latent f̂_K + Q(·) (f̂_K with refine=False)
    hidden_last: torch.Tensor  # (B, p_K², width) the transformer's normed hidden states at the last scale
    skips: list[torch.Tensor] | None  # E_con's per-level features given to the decoder (decoder_skips)


def to_model_range(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [-1, 1] (the VQ-VAE's image range)."""
    return x01 * 2 - 1


class HSIVAR(nn.Module):
    """The HSI-VAR model; see the module docstring."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width, vq = cfg.transformer.width, cfg.vqvae
        self.vqvae = VQVAE(vq)
        self.cond = ConditionEncoder(vq, width)
        self.dag = DegradationGuidance(cfg.dag, width, vq.bands)
        self.var = NextScaleTransformer(cfg.transformer, vq)
        self.refiner = Refiner(cfg.refiner, width, vq.z_channels, vq.latent_size)
        self.fusion = (OutputFusion(cfg.fusion, vq.bands, len(self.dag.tasks), cfg.first_estimate)
                       if cfg.fusion.width else None)

    def set_trust(self, trust: tuple[float, ...]) -> None:
        """Set the fusion head's per-task trust τ (N,) in [0, 1] in the weights' buffer and in ``cfg`` (so a
        published config records it; see ``FusionConfig.trust``)."""
        if self.fusion is None or not self.cfg.first_estimate:
            raise ValueError("trust needs a fusion head on the first estimate (fusion.width > 0, first_estimate)")
        fusion_cfg = self.cfg.fusion.model_copy(update={"trust": tuple(float(t) for t in trust)})
        self.cfg = type(self.cfg).model_validate({**self.cfg.model_dump(), "fusion": fusion_cfg.model_dump()})
        self.fusion.set_trust(torch.tensor(self.cfg.fusion.trust))

    def set_uncertainty(self, coefficients: tuple[tuple[float, ...], ...] | None, coverage: float = 0.95) -> None:
        """Set the calibrated uncertainty's coefficients (N tasks, F features) in ``cfg`` (so a published config
        records them; see :mod:`hsivar.uncertainty`); None removes the calibration."""
        unc = None if coefficients is None else {"coefficients": [[float(v) for v in c] for c in coefficients],
                                                 "coverage": coverage}
        self.cfg = type(self.cfg).model_validate({**self.cfg.model_dump(), "uncertainty": unc})

    def init_condition_encoder(self) -> None:
        """Start of stage 2: E_con ← copy of the trained E (and quant_conv)."""
        self.cond.copy_from(self.vqvae.encoder, self.vqvae.quant_conv)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (B, C, S, S) with the model's band count and tile side S."""
        C, S = self.cfg.vqvae.bands, self.cfg.vqvae.image_size
        if x.ndim != 4 or x.shape[1] != C or x.shape[2] != S or x.shape[3] != S:
            raise ValueError(f"expected tiles (B, {C}, {S}, {S}), got {tuple(x.shape)}")

    def refine(self, hidden_last: torch.Tensor, idx_last: torch.Tensor) -> torch.Tensor:
        """Q(z, W(e[r_K])): hidden (B, p_K², C), last-scale indices (B, p_K²) → residual (B, Cvae, h, w)."""
        w = self.var.word_embed(self.vqvae.quantize.embedding(idx_last).to(self.var.word_embed.weight.dtype))
        return self.refiner(hidden_last, w)

    def condition_input(self, lq01: torch.Tensor, estimate01: torch.Tensor | None) -> torch.Tensor:
        """What E_con encodes (B, C, S, S) in [0, 1]: the first estimate x0 for models with ``first_estimate``
        (the degraded tile when none is given), else the degraded tile."""
        return estimate01 if self.cfg.first_estimate and estimate01 is not None else lq01

    def output(self, lq01: torch.Tensor, decoded: torch.Tensor, task_weights: torch.Tensor,
               estimate01: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's output (B, C, S, S) in [-1, 1] → the restored tiles in [0, 1] units (not clamped).

        With a fusion head: F(lq, ŷ, task weights (B, N), x0) (see :class:`OutputFusion`); without:
        ŷ = (decoded + 1) / 2.
        """
        y01 = (decoded.float() + 1) / 2
        if self.fusion is None:
            return y01
        x0 = self.condition_input(lq01, estimate01).float()
        return self.fusion(lq01.float(), y01, task_weights.float(), x0)

    @torch.no_grad()
    def autoregress(self, lq01: torch.Tensor, task: TaskSpec = "auto", sampling: Sampling = GREEDY,
                    generator: torch.Generator | None = None, guidance: Guidance = "dag",
                    cfg_scale: float = 1.5, kv_cache: bool = True,
                    estimate01: torch.Tensor | None = None) -> RestoreOutput:
        """The token half of restoration: degraded tiles lq (B, C, S, S) in [0, 1] → latent f̂_K, no decoding.

        Returns a :class:`RestoreOutput` whose ``cube`` is empty (B, 0, 0, 0) and whose ``latent`` is f̂_K
        (float32) without the refiner's residual. Stage 3 trains the decoder on this
        (:func:`hsivar.training.stage3_loss`); :meth:`restore` decodes it. Arguments as in :meth:`restore`.
        """
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

    @torch.no_grad()
    def restore(self, lq01: torch.Tensor, task: TaskSpec = "auto", sampling: Sampling = GREEDY,
                generator: torch.Generator | None = None, guidance: Guidance = "dag",
                cfg_scale: float = 1.5, refine: bool = True, kv_cache: bool = True,
                estimate01: torch.Tensor | None = None) -> RestoreOutput:
        """Restore degraded tiles lq (B, C, S, S) in [0, 1].

        Args:
            task: a task name, ``"auto"`` (classifier), a {task: weight} mixture or weights (B, N).
            sampling: greedy by default; seeded top-k/top-p with ``generator``.
            guidance: ``"dag"`` (one pass per scale) or ``"cfg"`` (an extra unconditional pass with
                d_basic, logits (1 + t)·cond − t·uncond, t ramping to ``cfg_scale``).
            refine: add the refiner's continuous residual to f̂_K before decoding.
            kv_cache: False recomputes the whole sequence at every scale (same result; benchmarks).
            estimate01: (B, C, S, S) the tiles' classical first estimate x0 (used with ``first_estimate``).
        """
        out = self.autoregress(lq01, task, sampling, generator, guidance, cfg_scale, kv_cache, estimate01)
        latent = out.latent
        if refine:
            with record_function("hsivar.refiner"):
                latent = latent + self.refine(out.hidden_last, out.idx[-1])
        with record_function("hsivar.decoder"):
            decoded = self.vqvae.decode(latent, out.skips)
        with record_function("hsivar.fusion"):
            cube = self.output(lq01, decoded, out.task_weights, estimate01).clamp(0, 1)
        return RestoreOutput(cube, out.task_weights, out.idx, latent, out.hidden_last, out.skips)
