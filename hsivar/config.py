"""Typed configuration of the HSI-VAR model, and the names of its training stages.

Every model object is built explicitly from these configs (no string registries). Configs are
frozen pydantic models, so they validate on construction, round-trip through JSON (the published
``config.json``) and YAML, and can be overridden field by field with ``model_copy(update=...)``.
The named presets (``tiny``, ``small``, ``paper``) are in :mod:`hsivar.presets`.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hsivar.tasks import DEFAULT_TASKS, TASKS
from hsivar.uncertainty import FEATURES

Stage = Literal["vqvae", "var", "refiner", "decoder"]
"""A training stage: ``vqvae`` (the tokenizer), ``var`` (the transformer; HSI-VAR's also trains its refiner),
``refiner`` (RestoreVAR's latent refiner transformer on autoregressive outputs), ``decoder`` (what turns restored
tokens into the image, with the fusion head: the VQ-VAE decoder and SSA, or VarFormer's U-Net restorer); see
:mod:`hsivar.training`. A model family runs its own list
(:attr:`ModelConfig.stages`)."""

STAGES: tuple[Stage, ...] = get_args(Stage)
"""Every training stage, in pipeline order."""

Family = Literal["hsivar", "restorevar", "varformer"]
"""A model family: ``hsivar`` (prefix condition, DAG, NAFNet latent refiner; :mod:`hsivar.models.hsivar`),
``restorevar`` (cross-attention to the degraded latent, latent refiner transformer, decoder fine-tuned on
continuous latents; :mod:`hsivar.models.restorevar`) or ``varformer`` (the frozen VQ-VAE and transformer as a
multi-scale prior for a U-Net restorer; :mod:`hsivar.models.varformer`)."""

FAMILIES: tuple[Family, ...] = get_args(Family)
"""The model families."""

FAMILY_STAGES: dict[Family, tuple[Stage, ...]] = {
    "hsivar": ("vqvae", "var", "decoder"),
    "restorevar": ("vqvae", "var", "refiner", "decoder"),
    "varformer": ("vqvae", "var", "decoder"),
}
"""The training stages each family runs, in pipeline order."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VQVAEConfig(_Frozen):
    """Multi-scale residual VQ-VAE (VAR's tokenizer with the band count as a parameter)."""

    bands: int = Field(31, ge=1, description="spectral bands C of the cube (in and out channels)")
    ch: int = Field(160, ge=1, description="base channel width of encoder/decoder")
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = Field(2, ge=1, description="res blocks per encoder level (decoder: +1)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups (VAR: 32)")
    z_channels: int = Field(32, ge=1, description="latent width Cvae")
    vocab_size: int = Field(4096, ge=2, description="codebook entries V")
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    beta: float = 0.25
    quant_resi: float = 0.5
    share_quant_resi: int = Field(4, ge=0)
    quant_conv_ks: int = 3
    ssa: bool = Field(True, description="spatial-spectral adaptation blocks in the decoder")
    ssa_heads: int = Field(1, ge=1)
    ssa_window: int = Field(8, ge=1, description="window side of SSA's spatial attention, pixels")
    decoder_skips: bool = Field(
        False, description="zero-initialised 1×1 skips from E_con's per-level features of the degraded "
                           "cube into the decoder's levels (VarFormer's mix-up skip; trained in stage 3)")

    @model_validator(mode="after")
    def _check(self) -> VQVAEConfig:
        if list(self.patch_nums) != sorted(set(self.patch_nums)) or self.patch_nums[0] < 1:
            raise ValueError(f"patch_nums must increase strictly from >= 1, got {self.patch_nums}")
        for c in {self.ch * m for m in self.ch_mult}:
            if c % self.norm_groups:
                raise ValueError(f"channel width {c} is not divisible by norm_groups={self.norm_groups}")
        return self

    @property
    def downsample(self) -> int:
        """Spatial downsampling factor of the encoder (pixels per latent cell)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent grid h = w, equal to the last scale's patch number."""
        return self.patch_nums[-1]

    @property
    def image_size(self) -> int:
        """Side H = W of the tile the model works on, in pixels."""
        return self.latent_size * self.downsample

    @property
    def tokens_per_scale(self) -> tuple[int, ...]:
        """Token count p_k² of each scale."""
        return tuple(p * p for p in self.patch_nums)


class TransformerConfig(_Frozen):
    """GPT-2-style next-scale transformer (pre-LN, no AdaLN, 2D RoPE, L2-normalised q/k)."""

    depth: int = Field(16, ge=1)
    width: int = Field(1024, ge=8)
    heads: int = Field(16, ge=1)
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float | None = Field(None, description="None: VAR's rule 0.1·depth/24")
    rope_theta: float = 1e4
    cond_drop_rate: float = Field(0.1, ge=0.0, le=1.0, description="task dropped to d_basic (CFG training)")
    aligned_condition: bool = Field(
        False, description="also add the prefix grid, area-pooled to p_k×p_k, to the tokens that predict "
                           "scale k (spatially aligned conditioning, no extra weights)")

    @model_validator(mode="after")
    def _check(self) -> TransformerConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} not divisible by heads {self.heads}")
        if (self.width // self.heads) % 4:
            raise ValueError(f"head dim {self.width // self.heads} must be a multiple of 4 for 2D RoPE")
        return self

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.width // self.heads

    @property
    def resolved_drop_path_rate(self) -> float:
        """Stochastic-depth rate of the last block (VAR: 0.1·depth/24)."""
        return 0.1 * self.depth / 24 if self.drop_path_rate is None else self.drop_path_rate


class RefinerConfig(_Frozen):
    """NAFNet refiner on the latent grid predicting the continuous quantisation residual."""

    width: int = Field(64, ge=4)
    blocks: int = Field(4, ge=1)


class LRTConfig(_Frozen):
    """RestoreVAR's latent refiner transformer: the greedy latent f̂_K (its tokens) cross-attending to the
    transformer's last-block hidden states of every scale, regressing the clean continuous latent (family
    ``restorevar``; RestoreVAR's released code: width 384, depth 12, 6 heads, MLP 768)."""

    width: int = Field(384, ge=8)
    depth: int = Field(12, ge=1)
    heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> LRTConfig:
        if self.width % self.heads:
            raise ValueError(f"lrt.width {self.width} not divisible by lrt.heads {self.heads}")
        return self


class VarFormerConfig(_Frozen):
    """VarFormer's U-Net restorer (family ``varformer``; :mod:`hsivar.models.prior_unet`): level widths
    ``width × vqvae.ch_mult``, one level per VQ-VAE level, the coarsest on the latent grid."""

    width: int = Field(32, ge=4, description="channels of the first level")
    blocks: int = Field(1, ge=1, description="NAF blocks per level, in the encoder and in the decoder")
    anchor_stride: int = Field(4, ge=1, description="AFT anchors: one per s×s pixels (VarFormer: 4)")
    groups: int = Field(8, ge=1, description="GroupNorm groups of AFT (at most the level width)")


class FusionConfig(_Frozen):
    """Output fusion head on the image grid: (degraded tile, decoded tile, task weights) → correction."""

    width: int = Field(0, ge=0, description="channels of the head; 0: no head (the decoder's output is final)")
    blocks: int = Field(2, ge=0, description="NAFNet blocks between the input conv and the output conv")
    gate_lr_scale: float = Field(10.0, gt=0, description="learning rate of the per-task input gate and unsharp "
                                 "amounts, in units of the head's (few parameters per task that must travel far "
                                 "in a short stage 3)")
    unsharp_sigmas: tuple[float, ...] = Field((), description="Gaussian widths (px) of per-task unsharp masks on "
                                              "the degraded tile, lq − G_σ ∗ lq, each with a learned amount per "
                                              "task: a linear deblurring / interpolation branch the small head "
                                              "does not learn in a short stage 3. Empty: none")
    trust: tuple[float, ...] | None = Field(
        None, description="per task (in dag.tasks order), the share τ in [0, 1] of the head's correction kept on "
        "top of the first estimate x0: y = x0 + τ·(F(...) − x0), τ = trust · task weights. Set after stage 3 by "
        "hsivar.calibrate on validation examples (per family, the most of the correction that keeps PSNR and SAM at "
        "least the first estimate's); null: 1 for every task")

    @model_validator(mode="after")
    def _check(self) -> FusionConfig:
        if any(not s > 0 for s in self.unsharp_sigmas):
            raise ValueError(f"fusion.unsharp_sigmas must be positive, got {self.unsharp_sigmas}")
        if self.trust is not None and any(not 0 <= t <= 1 for t in self.trust):
            raise ValueError(f"fusion.trust must lie in [0, 1], got {self.trust}")
        return self


class DAGConfig(_Frozen):
    """Degradation-aware guidance: task embeddings, basal embedding, learnable λ, task classifier."""

    tasks: tuple[str, ...] = Field(DEFAULT_TASKS, description="the degradation families the model is trained on and "
                                   "weighs, in the order of its task embeddings and classifier (any of hsivar.tasks."
                                   "TASKS; default MP-HSIR's six, e.g. add haze and lowlight)")
    classifier_hidden: int = Field(128, ge=4, description="channels of the task classifier's CNN (first conv: half)")
    classifier_stages: tuple[Stage, ...] = Field(
        STAGES, description="training stages that also train the task classifier (its CE, "
        "weight loss.task). It sees only the degraded tile, so it can learn alongside any stage")
    lambda_init: float = 1.0

    @model_validator(mode="after")
    def _known_tasks(self) -> DAGConfig:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"dag.tasks must list distinct families of {', '.join(TASKS)}; got {list(self.tasks)}")
        return self


class GANConfig(_Frozen):
    """The optional PatchGAN discriminator of stage decoder (:mod:`hsivar.models.patchgan`; RestoreVAR fine-tunes
    its decoder with one). It exists only while training: a published model holds none of it."""

    weight: float = Field(0.0, ge=0, description="λ: weight of the adversarial (hinge) term added to stage "
                          "decoder's reconstruction loss; 0 (default) trains without a discriminator")
    width: int = Field(32, ge=4, description="channels of the discriminator's first layer (doubled per stride)")
    layers: int = Field(2, ge=1, le=5, description="stride-2 convolutions: each patch logit sees about "
                        "6·2^layers px of the tile")
    lr_scale: float = Field(0.2, gt=0, description="the discriminator's learning rate as a multiple of the stage's "
                            "(0.2: 2e-4 at the tiny decoder stage's 1e-3, pix2pix's rate; at 1e-3 the critic never "
                            "told restored from clean tiles, docs/experiments.md)")


class LossConfig(_Frozen):
    """Weights of the three stages' losses (dimensionless; each stage's objective: :mod:`hsivar.training`)."""

    stage1_ssim: float = Field(0.2, description="weight of (1 − SSIM) in the VQ-VAE reconstruction loss")
    stage1_vq: float = 1.0
    refiner: float = Field(2.0, description="β1: L1 refiner loss in stage 2")
    align: float = Field(0.5, description="β2: ‖E_con(lq) − E(hq)‖² in stage 2")
    task: float = Field(0.1, description="task-classifier CE (for task='auto'), in the stages of dag.classifier_stages")
    stage3_ssim: float = Field(0.2, description="γ: weight of (1 − SSIM) in stage 3")
    stage3_auto: float = Field(
        0.5, ge=0, le=1, description="fraction of stage-3 tiles restored with the classifier's task weights (as "
        "task='auto' does) instead of the true task, so that the decoder and the fusion head learn what auto "
        "mode gives them")
    gan: GANConfig = Field(GANConfig(), description="an adversarial term in stage decoder (off by default)")


def unsharp_radius(sigma: float) -> int:
    """Radius in pixels of the truncated Gaussian of width ``sigma`` (px) used by the fusion head: ⌈3σ⌉."""
    return math.ceil(3 * sigma)


class UncertaintyConfig(_Frozen):
    """The calibrated per-pixel uncertainty (:mod:`hsivar.uncertainty`): per task, the non-negative coefficients of
    the error-variance features, fitted on validation examples after stage 3 (:func:`hsivar.calibrate.calibrate`)."""

    features: tuple[str, ...] = Field(FEATURES, description="the feature names, in coefficient order")
    coefficients: tuple[tuple[float, ...], ...] = Field(description="per task (dag.tasks order), one coefficient "
                                                        "per feature, [0, 1]² units")
    coverage: float = Field(0.95, gt=0, lt=1, description="share of validation entries within 2σ after fitting")

    @model_validator(mode="after")
    def _check(self) -> UncertaintyConfig:
        if self.features != FEATURES:
            raise ValueError(f"uncertainty.features {self.features} are not this version's {FEATURES}: "
                             "calibrate the model again (hsivar.calibrate)")
        if any(len(c) != len(FEATURES) or any(not v >= 0 for v in c) for c in self.coefficients):
            raise ValueError(f"uncertainty.coefficients must hold {len(FEATURES)} values ≥ 0 per task")
        return self


class ModelConfig(_Frozen):
    """The whole model of one family (HSI-VAR, RestoreVAR or VarFormer; ``family``)."""

    name: str = "custom"
    family: Family = Field("hsivar", description="the model family (hsivar.config.Family); the parts a family "
                           "does not use are ignored (refiner: hsivar; lrt: restorevar; varformer: varformer)")
    vqvae: VQVAEConfig = VQVAEConfig()
    transformer: TransformerConfig = TransformerConfig()
    refiner: RefinerConfig = RefinerConfig()
    lrt: LRTConfig = LRTConfig()
    varformer: VarFormerConfig = VarFormerConfig()
    fusion: FusionConfig = FusionConfig()
    dag: DAGConfig = DAGConfig()
    loss: LossConfig = LossConfig()
    wavelengths: tuple[float, ...] | None = Field(None, description="band centres in nm, when known")
    first_estimate: bool = Field(
        False, description="restore from the classical first estimate x0 (hsivar.estimate): the condition encoder "
        "sees x0 instead of the degraded tile, and the output fusion head starts from x0 and learns a "
        "correction; the task classifier still sees the degraded tile")
    uncertainty: UncertaintyConfig | None = Field(
        None, description="calibrated error bars (hsivar.uncertainty), set after stage 3; null: the std over "
        "samples, uncalibrated")
    sharp_width: float | None = Field(
        None, ge=0, description="px: the blur width the spectral estimate reads on the validation data's sharp cubes "
        "(hsivar.deblur.sharp_width: the sensor's own blur and the estimator's floor), set after stage 3; blind "
        "restoration takes it off the width it reads, in quadrature, where the data fit does not refine it; null: 0")
    fit_width_scale: float = Field(
        1.0, gt=0.5, lt=1.5, description="the ratio to the blur width the data fit reads (hsivar.deblur.refine_width) "
        "that deconvolves best on the validation cubes (hsivar.deblur.fit_width_scale), set after stage 3; blind "
        "restoration multiplies the refined width by it; 1: the width as read")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.wavelengths is not None and len(self.wavelengths) != self.vqvae.bands:
            raise ValueError(
                f"{len(self.wavelengths)} wavelengths given for a {self.vqvae.bands}-band model"
            )
        if any(unsharp_radius(s) >= self.vqvae.image_size for s in self.fusion.unsharp_sigmas):
            raise ValueError(f"fusion.unsharp_sigmas {self.fusion.unsharp_sigmas}: a kernel radius of 3σ must stay "
                             f"below the {self.vqvae.image_size}-pixel tile")
        if self.fusion.trust is not None and len(self.fusion.trust) != len(self.dag.tasks):
            raise ValueError(f"fusion.trust has {len(self.fusion.trust)} values for {len(self.dag.tasks)} tasks")
        if self.uncertainty is not None and len(self.uncertainty.coefficients) != len(self.dag.tasks):
            raise ValueError(f"uncertainty.coefficients has {len(self.uncertainty.coefficients)} rows for "
                             f"{len(self.dag.tasks)} tasks")
        return self

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The training stages of this model's family, in pipeline order."""
        return FAMILY_STAGES[self.family]

    @property
    def bands(self) -> int:
        """Spectral band count C."""
        return self.vqvae.bands

    @property
    def cube_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one model tile."""
        s = self.vqvae.image_size
        return (self.vqvae.bands, s, s)


def tokens_total(cfg: VQVAEConfig) -> int:
    """Total token count L = Σ p_k² over scales."""
    return int(sum(cfg.tokens_per_scale))

