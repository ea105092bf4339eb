"""The training stages of the model families as plain PyTorch: what each trains and its loss.

HSI-VAR (family ``hsivar``) runs three:

* Stage 1 ``vqvae``: E, quantiser, D (not SSA) — L1 + w·(1 − SSIM) reconstruction + VQ loss.
* Stage 2 ``var``: E_con (initialised from E), P, DAG, transformer, refiner — with the VQ-VAE
  frozen: ``CE + β1·L1(refiner) + β2·‖E_con(lq) − E(hq)‖² + w·CE(task classifier)``.
* Stage 3 ``decoder``: D + SSA (+ skips), post_quant_conv and the output fusion head on *restored*
  latents (true autoregressive greedy decoding, not teacher forcing) — ``L1 + γ·(1 − SSIM)``, SSIM
  per band. A fraction ``loss.stage3_auto`` of the tiles is restored with the task classifier's
  weights instead of the true task, as ``task="auto"`` restores them. The fusion head starts at zero
  and may get its own learning rate (:func:`param_groups`). The refiner Q is fine-tuned with them
  through the decoder: stage 2 fits it to the teacher-forced quantisation residual, but at inference
  it sees autoregressive tokens (exposure bias: Ranzato et al., "Sequence Level Training with Recurrent
  Neural Networks", ICLR 2016), so here it learns to correct those latents — RestoreVAR ("RestoreVAR:
  Visual Autoregressive Generation for All-in-One Image Restoration", arXiv:2505.18047) trains its
  latent refiner on AR outputs likewise.

RestoreVAR (family ``restorevar``) runs four: ``vqvae`` as above; ``var``: the transformer with its cross-attention
and the condition projections, the encoder frozen — plain token CE, no alignment loss, no task
(:func:`cross_stage2_loss`); ``refiner``: the latent refiner transformer alone, L1 to the clean continuous
latent quant_conv(E(hq)) on the transformer's own greedy outputs (:func:`refiner_stage_loss`); ``decoder``: the
decoder (and fusion head) fine-tuned on the refined continuous latents, as stage 3 above with the LRT frozen.

VarFormer (family ``varformer``) runs three: ``vqvae`` and ``var`` as RestoreVAR's; ``decoder``: its U-Net restorer
(and fusion head) on the frozen prior's greedy decodings, as stage 3 above (the U-Net replaces the VQ-VAE
decoder).

Every family's stage decoder can add a PatchGAN adversarial term (``loss.gan.weight`` > 0, off by default; RestoreVAR
fine-tunes its decoder with one): the discriminator of :mod:`hsivar.models.patchgan` trains in the same optimizer
step and is never published.

The task classifier (``dag``'s CNN on the degraded tile) trains in every stage of ``dag.classifier_stages``
(default all), with its own ``w·CE`` added to that stage's loss.

The Ray layer (``hsivar_platform.train``) calls :func:`stage_loss` inside its workers;
:func:`fit` is the same loop on one process (tests, the tiny demo).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hsivar.config import ModelConfig, Stage, VQVAEConfig
from hsivar.consistency import exact_entries
from hsivar.degrade.observation import Observation
from hsivar.degrade.record import DegradationRecord
from hsivar.estimate import first_estimate
from hsivar.losses import l1_ssim_loss
from hsivar.metrics import psnr_from_mse
from hsivar.models.base import RestorationModel, RestoreOutput, to_model_range
from hsivar.models.condition import alignment_loss
from hsivar.models.cross_condition import CrossConditioned
from hsivar.models.hsivar import HSIVAR
from hsivar.models.patchgan import PatchDiscriminator, adversarial_terms, build_discriminator
from hsivar.models.restorevar import RestoreVAR


@dataclass
class Batch:
    """One training batch: clean and degraded cubes in [0, 1], the true task weights and, for models with
    ``first_estimate``, the classical first estimate and the entries observed exactly."""

    hq: torch.Tensor  # (B, C, S, S)
    lq: torch.Tensor  # (B, C, S, S)
    task_weights: torch.Tensor  # (B, N), rows sum to 1 (one-hot for a single degradation)
    x0: torch.Tensor | None = None  # (B, C, S, S) first estimate in [0, 1] (hsivar.estimate)
    kept: torch.Tensor | None = None  # (B, C, S, S) bool, entries the restoration keeps as observed


@dataclass
class StepResult:
    """A stage's loss and the scalars worth logging."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


ESTIMATE_STAGES: tuple[Stage, ...] = ("var", "refiner", "decoder")
"""The stages whose loss reads the first estimate (the condition encoder's input, the fusion head's start);
stage 1 trains on the clean tiles, and its task classifier on the degraded ones."""


def needs_estimate(cfg: ModelConfig, stage: Stage) -> bool:
    """Whether training ``stage`` of a model configured by ``cfg`` needs each batch's first estimate and kept
    entries (:func:`example_estimate`): models with ``first_estimate``, in the stages of :data:`ESTIMATE_STAGES`."""
    return bool(cfg.first_estimate) and stage in ESTIMATE_STAGES


def example_estimate(lq01: np.ndarray, record: DegradationRecord | Observation) -> tuple[np.ndarray, np.ndarray]:
    """The first estimate a training example gets, as restoration would compute it for its degraded crop.

    Args:
        lq01: (C, S, S) degraded crop in [0, 1] units; record: its degradation record, or what is known of its
            observation (a validation example's :func:`hsivar.degrade.observation_of_level`).
    Returns:
        (x0 (C, S, S) float32, kept (C, S, S) bool): what the cube shows of its observation
        (:meth:`Observation.detect`, as ``task="auto"`` reads it) plus the record's blur width, haze and exposure
        (which the cube does not show: restoration takes them from the user or estimates them,
        :meth:`hsivar.restore.Restorer.observe`),
        the classical first estimate from it, and the entries a consistent restoration keeps.
    """
    obs = Observation.detect(lq01)
    # what the cube does not show: blur width, haze, exposure
    told = record if isinstance(record, Observation) else Observation.from_record(record)
    obs = obs.replaced(blur_sigma=told.blur_sigma if told.blur_sigma is not None else obs.blur_sigma,
                       blur_border=told.blur_border if told.blur_sigma is not None else obs.blur_border,
                       haze=told.haze or None, exposure=told.exposure)
    kept = exact_entries(obs)
    return first_estimate(lq01, obs), (np.zeros(lq01.shape, bool) if kept is None else kept)


def _psnr_log(pred01: torch.Tensor, target01: torch.Tensor) -> float:
    """Mean per-band PSNR in dB (data range 1) of (B, C, H, W) images clipped to [0, 1], for the step logs.

    The per-band MSE (B, C) stays on the device and goes through :func:`hsivar.metrics.psnr_from_mse`; only
    the mean (one float) reaches the host. The MSE is floored at 1e-12 (120 dB) so the log stays finite.
    """
    mse = (pred01.detach().clamp(0, 1) - target01.clamp(0, 1)).square().mean(dim=(-2, -1)).clamp_min(1e-12)
    return float(psnr_from_mse(mse).mean())


def trainable_parameters(model: RestorationModel, stage: Stage) -> list[torch.nn.Parameter]:
    """The parameters a stage optimises; everything else stays frozen (requires_grad off).

    Besides the stage's own modules, the task classifier in the stages of ``dag.classifier_stages``.

    Raises:
        ValueError: a stage the model's family does not run.
    """
    _check_stage(model, stage)
    params = model.stage_parameters(stage)
    if stage in model.cfg.dag.classifier_stages:
        known = set(map(id, params))
        params += [p for p in model.dag.classifier_parameters() if id(p) not in known]
    keep = set(map(id, params))
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return params


def param_groups(model: RestorationModel, params: list[torch.nn.Parameter], lr: float,
                 head_lr: float | None = None, critic: PatchDiscriminator | None = None) -> list[dict]:
    """AdamW parameter groups of a stage's ``params``: the fusion head at ``head_lr`` (when given; its
    per-task input gate and unsharp amounts at ``cfg.fusion.gate_lr_scale`` times that), the rest at ``lr``; the
    stage's discriminator (:func:`stage_critic`), when given, last at ``lr × loss.gan.lr_scale``.

    The head starts at zero on top of a decoder trained for a whole stage; at the decoder's
    fine-tuning rate it barely moves in a short stage 3, so it may learn faster (tiny: 3×).
    """
    fusion = model.fusion
    critic_group = [] if critic is None else [{"params": list(critic.parameters()),
                                               "lr": lr * model.cfg.loss.gan.lr_scale}]
    if fusion is None or not head_lr:
        return [{"params": list(params), "lr": lr}, *critic_group]
    gate = {id(fusion.gate.weight)} | ({id(fusion.unsharp.weight)} if fusion.unsharp is not None else set())
    head = {id(p) for p in fusion.parameters()} - gate
    groups = [{"params": [p for p in params if id(p) not in head | gate], "lr": lr},
              {"params": [p for p in params if id(p) in head], "lr": head_lr},
              {"params": [p for p in params if id(p) in gate], "lr": head_lr * model.cfg.fusion.gate_lr_scale}]
    return [g for g in groups if g["params"]] + critic_group


def task_loss(model: RestorationModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The task classifier on the degraded tiles: → (``loss.task`` · CE against the true weights, logits (B, N),
    logs)."""
    logits = model.dag.classify(batch.lq)
    ce = -(batch.task_weights * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    acc = (logits.argmax(-1) == batch.task_weights.argmax(-1)).float().mean()
    return model.cfg.loss.task * ce, logits, {"task_ce": float(ce.detach()), "task_acc": float(acc)}


def _task_term(model: RestorationModel, stage: Stage, batch: Batch,
               logs: dict[str, float]) -> tuple[torch.Tensor | float, torch.Tensor | None]:
    """The task classifier's loss (:func:`task_loss`) when ``stage`` trains it (``dag.classifier_stages``), its
    logs added to ``logs``; → (the term to add to the stage's loss, 0.0 otherwise; the logits (B, N) or None)."""
    if stage not in model.cfg.dag.classifier_stages:
        return 0.0, None
    term, logits, task_logs = task_loss(model, batch)
    logs.update(task_logs)
    return term, logits


def _check_stage(model: RestorationModel, stage: str) -> None:
    """Raise ValueError unless ``stage`` is one the model's family runs (``ModelConfig.stages``)."""
    if stage not in model.cfg.stages:
        raise ValueError(f"unknown stage {stage!r} for a {model.cfg.family} model; expected one of "
                         f"{', '.join(model.cfg.stages)}")


def stage1_loss(model: RestorationModel, batch: Batch, generator: torch.Generator | None = None) -> StepResult:
    """VQ-VAE reconstruction of the clean cubes: L1 + w·(1 − SSIM) + w_vq·VQ loss (+ w·task CE)."""
    out = model.vqvae(to_model_range(batch.hq))
    rec01 = (out.reconstruction.float() + 1) / 2
    rec_loss, logs = l1_ssim_loss(rec01, batch.hq, model.cfg.loss.stage1_ssim)
    loss = rec_loss + model.cfg.loss.stage1_vq * out.quant.vq_loss
    logs.update(vq=float(out.quant.vq_loss.detach()), psnr=_psnr_log(rec01, batch.hq))
    for k, n in enumerate(out.quant.codes_used):
        logs[f"codes_used_s{k}"] = float(n)
    return StepResult(loss + _task_term(model, "vqvae", batch, logs)[0], logs)


def stage2_loss(model: RestorationModel, batch: Batch, generator: torch.Generator | None = None) -> StepResult:
    """Teacher-forced next-scale CE + β1·refiner L1 + β2·alignment + w·task-classifier CE (HSI-VAR; RestoreVAR and
    VarFormer: :func:`cross_stage2_loss`)."""
    if isinstance(model, CrossConditioned):
        return cross_stage2_loss(model, batch, generator)
    assert isinstance(model, HSIVAR)
    lc, vq = model.cfg.loss, model.vqvae
    with torch.no_grad():
        f = vq.encode(to_model_range(batch.hq)).float()
        idx, fhats = vq.quantize.f_to_idx(f)
        x_in = vq.quantize.idx_to_var_input(idx)
        residual = f - fhats[-1]
    c = model.cond.encode(to_model_range(model.condition_input(batch.lq, batch.x0)))
    align = alignment_loss(c, f)
    d = model.dag.embed(batch.task_weights)
    drop = torch.rand(d.shape[0], generator=generator).to(d.device) < model.cfg.transformer.cond_drop_rate
    d = torch.where(drop[:, None], model.dag.null(d.shape[0]), d)
    logits, hidden = model.var(model.cond.prefix(c), d, x_in)
    target = torch.cat(idx, dim=1)
    ce = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    n_last = idx[-1].shape[1]
    refined = model.refine(hidden[:, -n_last:], idx[-1])
    ref = F.l1_loss(refined, residual)
    loss = ce + lc.refiner * ref + lc.align * align
    logs = {"ce": float(ce.detach()), "refiner_l1": float(ref.detach()), "align": float(align.detach())} \
        | _accuracy_logs(logits, target, vq.cfg)
    return StepResult(loss + _task_term(model, "var", batch, logs)[0], logs)


def _accuracy_logs(logits: torch.Tensor, target: torch.Tensor, vq_cfg: VQVAEConfig) -> dict[str, float]:
    """Teacher-forced token accuracy, overall (``acc``) and per scale (``acc_s{k}``); logits (B, L, V), target
    (B, L)."""
    with torch.no_grad():
        hit = (logits.argmax(-1) == target).float()
        logs, start = {"acc": float(hit.mean())}, 0
        for k, p in enumerate(vq_cfg.patch_nums):
            logs[f"acc_s{k}"] = float(hit[:, start:start + p * p].mean())
            start += p * p
    return logs


def cross_stage2_loss(model: CrossConditioned, batch: Batch, generator: torch.Generator | None = None) -> StepResult:
    """RestoreVAR's (and VarFormer's) stage var: teacher-forced next-scale CE with the transformer cross-attending
    to the degraded cube's latent (the first estimate's with ``first_estimate``), + w·task-classifier CE."""
    vq = model.vqvae
    with torch.no_grad():
        idx, _ = vq.quantize.f_to_idx(vq.encode(to_model_range(batch.hq)).float())
        x_in = vq.quantize.idx_to_var_input(idx)
    memory, sos, _ = model.condition(model.condition_input(batch.lq, batch.x0))
    logits, _ = model.var(memory, sos, x_in)
    target = torch.cat(idx, dim=1)
    ce = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    logs = {"ce": float(ce.detach()), "global_gain": float(model.global_gain.detach())} \
        | _accuracy_logs(logits, target, vq.cfg)
    return StepResult(ce + _task_term(model, "var", batch, logs)[0], logs)


def _greedy(model: RestorationModel, batch: Batch, weights: torch.Tensor | None = None) -> RestoreOutput:
    """The model's greedy tokens for the batch's degraded tiles, in eval mode (no dropout or drop-path), no grad;
    ``weights``: the task weights (B, N) to restore with (default: the true ones)."""
    was_training = model.training
    model.eval()
    out = model.autoregress(batch.lq, task=batch.task_weights if weights is None else weights, estimate01=batch.x0)
    model.train(was_training)
    return out


def refiner_stage_loss(model: RestoreVAR, batch: Batch, generator: torch.Generator | None = None) -> StepResult:
    """RestoreVAR's stage refiner: L1 between LRT(greedy f̂_K, hidden states) and the clean continuous latent
    quant_conv(E(hq)) (+ w·task-classifier CE). Logs ``l1_greedy``, the greedy latent's own L1, for comparison."""
    logs: dict[str, float] = {}
    task_term, _ = _task_term(model, "refiner", batch, logs)
    out = _greedy(model, batch)
    with torch.no_grad():
        f = model.vqvae.encode(to_model_range(batch.hq)).float()
    l1 = F.l1_loss(model.continuous_latent(out), f)
    logs.update(l1=float(l1.detach()), l1_greedy=float(F.l1_loss(out.latent, f)))
    return StepResult(l1 + task_term, logs)


def stage3_task_weights(model: RestorationModel, batch: Batch, generator: torch.Generator | None = None,
                        logits: torch.Tensor | None = None) -> torch.Tensor:
    """The task weights (B, N) stage 3 restores with: per tile, with probability ``loss.stage3_auto`` the
    classifier's softmax (what ``task="auto"`` uses; from ``logits`` (B, N) when given), otherwise the
    true weights."""
    frac = model.cfg.loss.stage3_auto
    if frac <= 0:
        return batch.task_weights
    with torch.no_grad():
        auto = F.softmax((model.dag.classify(batch.lq) if logits is None else logits).float(), dim=-1)
    pick = torch.rand(auto.shape[0], generator=generator).to(auto.device) < frac
    return torch.where(pick[:, None], auto, batch.task_weights.to(auto.dtype))


def stage3_loss(model: RestorationModel, batch: Batch, generator: torch.Generator | None = None,
                critic: PatchDiscriminator | None = None) -> StepResult:
    """Decoder + SSA + refiner + fusion head on restored latents (greedy AR with
    :func:`stage3_task_weights`): L1 + γ·(1 − SSIM) (+ w·task CE) (+ with a ``critic``, the hinge GAN terms of
    :func:`hsivar.models.patchgan.adversarial_terms` at weight ``loss.gan.weight``).

    The loss is taken on the output made consistent with the observation as restoration makes it: the entries
    observed exactly (``batch.kept``) are the input's, so the head learns only what was not observed.
    """
    logs: dict[str, float] = {}
    task_term, logits = _task_term(model, "decoder", batch, logs)
    weights = stage3_task_weights(model, batch, generator, logits)
    out = _greedy(model, batch, weights)  # tokens only, nothing decoded
    latent = model.continuous_latent(out)  # HSI-VAR: f̂_K (AR) + Q(z, W(e[r_K])); RestoreVAR: LRT(f̂_K, hidden)
    rec01 = model.output(batch.lq, model.decode(out, latent, batch.lq, batch.x0), out.task_weights, batch.x0)
    if batch.kept is not None:
        rec01 = torch.where(batch.kept, batch.lq.to(rec01.dtype), rec01)
    loss, rec_logs = l1_ssim_loss(rec01, batch.hq, model.cfg.loss.stage3_ssim)
    logs.update(rec_logs, psnr=_psnr_log(rec01, batch.hq))
    if critic is not None:
        gan, gan_logs = adversarial_terms(critic, to_model_range(rec01), to_model_range(batch.hq),
                                          model.cfg.loss.gan.weight)
        loss = loss + gan
        logs.update(gan_logs)
    return StepResult(loss + task_term, logs)


def stage_loss(model: RestorationModel, stage: Stage, batch: Batch, generator: torch.Generator | None = None,
               critic: PatchDiscriminator | None = None) -> StepResult:
    """Dispatch to the loss of ``stage`` (``critic``: stage decoder's discriminator, :func:`stage_critic`);
    ValueError for a stage the model's family does not run."""
    _check_stage(model, stage)
    if stage == "vqvae":
        return stage1_loss(model, batch, generator)
    if stage == "var":
        return stage2_loss(model, batch, generator)
    if stage == "refiner":
        assert isinstance(model, RestoreVAR)
        return refiner_stage_loss(model, batch, generator)
    return stage3_loss(model, batch, generator, critic)


@torch.no_grad()
def held_out_logs(model: RestorationModel, stage: Stage, batch: Batch, seed: int = 0) -> dict[str, float]:
    """The loss of ``stage`` and its logs (token CE and accuracy per scale, the refiner's L1, the task classifier's
    accuracy, ...) on a held-out ``batch``: eval mode (no dropout), no gradient, the stage's random choices drawn
    from a generator seeded with ``seed`` (the same draws at every validation). → logs with ``loss``."""
    was = model.training
    model.eval()
    try:
        res = stage_loss(model, stage, batch, torch.Generator().manual_seed(seed))
    finally:
        model.train(was)
    return {**res.logs, "loss": float(res.loss)}


@torch.no_grad()
def token_path_image(model: RestorationModel, batch: Batch) -> torch.Tensor:
    """What the token path alone reconstructs from ``batch``'s degraded tiles: the greedy tokens with the true task
    weights, the family's continuous latent, the stage-1 VQ-VAE decoder (no fusion with the first estimate, no
    consistency) → (B, C, S, S) in [0, 1]. Before stage decoder the restoration's output is the first estimate (the
    fusion head starts at zero, and VarFormer's U-Net is not trained yet): this is the progress the stages before it
    make."""
    out = _greedy(model, batch)
    was = model.training
    model.eval()
    try:
        rec = model.vqvae.decode(model.continuous_latent(out), out.skips)
    finally:
        model.train(was)
    return ((rec.float().clamp(-1, 1) + 1) / 2)


def stage_critic(model: RestorationModel, stage: Stage) -> PatchDiscriminator | None:
    """The discriminator a stage trains beside the model: stage decoder's PatchGAN when ``loss.gan.weight`` > 0
    (:mod:`hsivar.models.patchgan`), else None. Its parameters go into the stage's optimizer (:func:`param_groups`),
    and into checkpoints, never into the published model."""
    critic = build_discriminator(model.cfg) if stage == "decoder" else None
    return None if critic is None else critic.to(next(model.parameters()).device)


def prepare_stage(model: RestorationModel, stage: Stage) -> list[torch.nn.Parameter]:
    """Set up a stage: freeze the rest, copy E into E_con at the start of HSI-VAR's stage 2; → trainable params."""
    if stage == "var" and isinstance(model, HSIVAR):
        model.init_condition_encoder()
    return trainable_parameters(model, stage)


def fit(model: RestorationModel, stage: Stage, batches: Iterable[Batch], steps: int, lr: float = 1e-3,
        grad_clip: float = 2.0, weight_decay: float = 0.0, seed: int = 0,
        init_stage: bool = True, head_lr: float | None = None) -> Iterator[StepResult]:
    """Train ``stage`` for ``steps`` steps on one process with AdamW; yields each step's result.

    ``batches`` is cycled if it is shorter than ``steps``. Set ``init_stage=False`` to continue a
    stage without re-copying E into E_con. ``head_lr``: learning rate of the fusion head (stage 3). Stage decoder
    with ``loss.gan.weight`` > 0 trains a fresh discriminator beside the model (:func:`stage_critic`).
    """
    params = prepare_stage(model, stage) if init_stage else trainable_parameters(model, stage)
    critic = stage_critic(model, stage)
    opt = torch.optim.AdamW(param_groups(model, params, lr, head_lr, critic), lr=lr, betas=(0.9, 0.95),
                            weight_decay=weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model.train()
    batch_list = list(batches)
    for step in range(steps):
        result = stage_loss(model, stage, batch_list[step % len(batch_list)], gen, critic)
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        result.logs["loss"] = float(result.loss.detach())
        yield result
    model.eval()
