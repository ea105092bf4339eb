"""What every model family shares: the VQ-VAE, the task classifier, the output fusion head, and the restoration
template that the Restorer, the batch job, Serve, calibration and evaluation call.

A family (:class:`hsivar.models.hsivar.HSIVAR`, :class:`hsivar.models.restorevar.RestoreVAR`,
:class:`hsivar.models.varformer.VarFormer`) builds its own condition path, transformer and continuous refinement,
and implements two methods:

* :meth:`RestorationModel.autoregress`: degraded tiles → greedy (or sampled) tokens and the latent f̂_K;
* :meth:`RestorationModel.continuous_latent`: that output → the continuous latent the decoder decodes;

and may replace :meth:`RestorationModel.decode` (default: the VQ-VAE decoder). :meth:`RestorationModel.restore`
chains them with the fusion head. Cubes enter and leave in
[0, 1] (B, C, H, W) with H = W = ``cfg.vqvae.image_size``; the VQ-VAE works in [-1, 1] internally, as VAR does.
The task classifier (``dag``) reads the degraded tile in every family: ``task="auto"``, the observation and the
fusion head's per-task weights need it, even where a family's transformer takes no task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.profiler import record_function

from hsivar.config import ModelConfig, Stage
from hsivar.models.dag import DegradationGuidance, TaskSpec
from hsivar.models.fusion import OutputFusion
from hsivar.models.var import GREEDY, Sampling
from hsivar.models.vqvae import VQVAE

Guidance = Literal["dag", "cfg"]


@dataclass
class RestoreOutput:
    """Restoration of a batch of tiles."""

    cube: torch.Tensor  # (B, C, H, W) float32 in [0, 1]
    task_weights: torch.Tensor  # (B, N) the task weights used (classifier softmax for "auto")
    idx: list[torch.Tensor]  # K tensors (B, p_k²) chosen tokens
    latent: torch.Tensor  # (B, Cvae, h, w) restored latent (f̂_K from autoregress, refined by restore)
    hidden_last: torch.Tensor  # (B, p_K², width) the transformer's normed hidden states at the last scale
    skips: list[torch.Tensor] | None  # encoder features of the condition input given to the decoder (decoder_skips)
    hidden: torch.Tensor | None = None  # (B, L, width) every scale's hidden states (families that refine on them)
    scales: torch.Tensor | None = None  # (B, K, Cvae, h, w) each scale's residual (families that use them as a prior)
    decoded: torch.Tensor | None = None  # (B, C, S, S) the decoder's output in [-1, 1], before the fusion head


def parameters_of(*modules: nn.Module | None) -> list[nn.Parameter]:
    """The parameters of ``modules`` in order, skipping the absent ones (None: a part the config switched off)."""
    return [p for m in modules if m is not None for p in m.parameters()]


def to_model_range(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [-1, 1] (the VQ-VAE's image range)."""
    return x01 * 2 - 1


class RestorationModel(nn.Module):
    """The parts and the restoration template every family shares; see the module docstring."""

    vqvae: VQVAE
    dag: DegradationGuidance
    fusion: OutputFusion | None

    token_path_reads_task: bool = True
    """Whether the token path (condition, transformer, refinement, decoder) reads the task weights. When it does
    not, only the fusion head does, and tiles restored under one task can be fused again under another
    (:meth:`fuse`) without decoding again; when it does, only under the same weights (:mod:`hsivar.memo`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        """Keep ``cfg``; the family's constructor builds the parts (the shared ones with :meth:`build_dag` and
        :meth:`build_fusion`, at the point of its choosing: parameters are initialised in construction order)."""
        super().__init__()
        self.cfg = cfg

    def build_dag(self) -> DegradationGuidance:
        """The task classifier (with HSI-VAR's task embeddings), built from ``cfg``."""
        return DegradationGuidance(self.cfg.dag, self.cfg.transformer.width, self.cfg.vqvae.bands)

    def build_fusion(self) -> OutputFusion | None:
        """The output fusion head built from ``cfg`` (None when ``fusion.width`` is 0)."""
        cfg = self.cfg
        return (OutputFusion(cfg.fusion, cfg.vqvae.bands, len(cfg.dag.tasks), cfg.first_estimate)
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

    def set_sharp_width(self, width: float | None) -> None:
        """Set what the spectral blur-width estimate reads on sharp cubes of the model's data (px; ``cfg.sharp_width``,
        so a published config records it; :func:`hsivar.deblur.sharp_width`); None removes it."""
        self.cfg = type(self.cfg).model_validate({**self.cfg.model_dump(), "sharp_width": width})

    def set_fit_width_scale(self, scale: float | None) -> None:
        """Set the ratio to the data fit's blur width that deconvolves best on the model's data
        (``cfg.fit_width_scale``, so a published config records it; :func:`hsivar.deblur.fit_width_scale`); None: 1,
        the width as read."""
        self.cfg = type(self.cfg).model_validate({**self.cfg.model_dump(), "fit_width_scale": scale or 1.0})

    def stage_parameters(self, stage: Stage) -> list[nn.Parameter]:
        """The parameters stage ``stage`` trains, besides the task classifier (:func:`hsivar.training.
        trainable_parameters` adds it). Stage vqvae, shared by every family: the VQ-VAE without the decoder's
        stage-decoder additions (SSA, skips), which stay at their zero init. A family adds its own stages.

        Raises:
            ValueError: a stage the family does not run.
        """
        if stage != "vqvae":
            raise ValueError(f"unknown stage {stage!r} for a {self.cfg.family} model; expected one of "
                             f"{', '.join(self.cfg.stages)}")
        dec = self.vqvae.decoder
        later = set(map(id, parameters_of(dec.ssa, dec.skips)))
        return [p for p in self.vqvae.parameters() if id(p) not in later]

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The family's own parts for ``hsivar info``: ``condition_encoder`` (what reads the degraded tile for the
        transformer), ``refiner`` (a continuous refiner of the latent), ``restorer`` (a network in place of the VQ-VAE
        decoder) — an empty list for a part the family lacks."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its parts")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (B, C, S, S) with the model's band count and tile side S."""
        C, S = self.cfg.vqvae.bands, self.cfg.vqvae.image_size
        if x.ndim != 4 or x.shape[1] != C or x.shape[2] != S or x.shape[3] != S:
            raise ValueError(f"expected tiles (B, {C}, {S}, {S}), got {tuple(x.shape)}")

    def condition_input(self, lq01: torch.Tensor, estimate01: torch.Tensor | None) -> torch.Tensor:
        """What the condition path encodes (B, C, S, S) in [0, 1]: the first estimate x0 for models with
        ``first_estimate`` (the degraded tile when none is given), else the degraded tile."""
        return estimate01 if self.cfg.first_estimate and estimate01 is not None else lq01

    def output(self, lq01: torch.Tensor, decoded: torch.Tensor, task_weights: torch.Tensor,
               estimate01: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's output (B, C, S, S) in [-1, 1] → the restored tiles in [0, 1] units (not clamped, but for
        a fusion head on the first estimate, whose shrink towards x0 mixes two cubes in [0, 1]).

        With a fusion head: F(lq, ŷ, task weights (B, N), x0) (see :class:`OutputFusion`); without:
        ŷ = (decoded + 1) / 2.
        """
        y01 = (decoded.float() + 1) / 2
        if self.fusion is None:
            return y01
        x0 = self.condition_input(lq01, estimate01).float()
        return self.fusion(lq01.float(), y01, task_weights.float(), x0)

    def autoregress(self, lq01: torch.Tensor, task: TaskSpec = "auto", sampling: Sampling = GREEDY,
                    generator: torch.Generator | None = None, guidance: Guidance = "dag",
                    cfg_scale: float = 1.5, kv_cache: bool = True,
                    estimate01: torch.Tensor | None = None) -> RestoreOutput:
        """The token half of restoration: degraded tiles lq (B, C, S, S) in [0, 1] → a :class:`RestoreOutput` whose
        ``cube`` is empty (B, 0, 0, 0) and whose ``latent`` is f̂_K (float32), nothing decoded. Arguments as in
        :meth:`restore`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement autoregress")

    def continuous_latent(self, out: RestoreOutput) -> torch.Tensor:
        """The latent the decoder decodes (B, Cvae, h, w) from :meth:`autoregress`'s output: f̂_K refined by the
        family's continuous path. Differentiable in that path's weights (its stage trains it)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement continuous_latent")

    def decode(self, out: RestoreOutput, latent: torch.Tensor, lq01: torch.Tensor,
               estimate01: torch.Tensor | None = None) -> torch.Tensor:
        """The restored tiles (B, C, S, S) in [-1, 1] units (not clamped) from :meth:`autoregress`'s output and the
        continuous ``latent`` (B, Cvae, h, w): the VQ-VAE decoder (with the condition encoder's skips when
        ``decoder_skips``). ``lq01``, ``estimate01``: the tiles and their first estimate, for families whose
        decoder reads them."""
        return self.vqvae.decode(latent, out.skips)

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
                d_basic, logits (1 + t)·cond − t·uncond, t ramping to ``cfg_scale``; family ``hsivar`` only).
            refine: apply the family's continuous refinement of f̂_K before decoding.
            kv_cache: False recomputes the whole sequence at every scale (same result; benchmarks).
            estimate01: (B, C, S, S) the tiles' classical first estimate x0 (used with ``first_estimate``).
        """
        out = self.autoregress(lq01, task, sampling, generator, guidance, cfg_scale, kv_cache, estimate01)
        latent = out.latent
        if refine:
            with record_function("hsivar.refiner"):
                latent = self.continuous_latent(out)
        with record_function("hsivar.decoder"):
            decoded = self.decode(out, latent, lq01, estimate01)
        with record_function("hsivar.fusion"):
            cube = self.output(lq01, decoded, out.task_weights, estimate01).clamp(0, 1)
        return RestoreOutput(cube, out.task_weights, out.idx, latent, out.hidden_last, out.skips, out.hidden,
                             out.scales, decoded)

    @torch.no_grad()
    def fuse(self, lq01: torch.Tensor, decoded: torch.Tensor, task: TaskSpec = "auto",
             estimate01: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The restored tiles from tiles already decoded (``RestoreOutput.decoded`` of :meth:`restore` on the same
        lq and x0) under ``task``: its task weights, then the fusion head — what :meth:`restore` returns. In a family
        whose token path reads the task (:attr:`token_path_reads_task`), ``task`` must be the weights (B, N) the
        tiles were decoded under; otherwise any task spec.

        Args:
            lq01, estimate01: (B, C, S, S) the tiles and their first estimate, in [0, 1].
            decoded: (B, C, S, S) in [-1, 1].
        Returns:
            (restored tiles (B, C, S, S) in [0, 1], task weights (B, N)).
        Raises:
            ValueError: a family whose token path reads the task, given a task spec other than weights.
        """
        if self.token_path_reads_task and not isinstance(task, torch.Tensor):
            raise ValueError(f"the {self.cfg.family} family's token path reads the task: fuse tiles with the weights "
                             f"(B, N) they were decoded under, not {task!r}")
        weights = self.dag.weights(task, lq01)
        return self.output(lq01, decoded, weights, estimate01).clamp(0, 1), weights
