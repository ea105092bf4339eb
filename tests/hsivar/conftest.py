"""Fixtures of the model library's tests: tiny configs and models (CPU, seconds), smooth test cubes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsivar.config import ModelConfig
from hsivar.degrade import DegradationRecord
from hsivar.models.hsivar import HSIVAR
from hsivar.models.norm import GroupNorm, autocast_policy_norms
from hsivar.models.rope import apply_rope
from hsivar.models.var import SelfAttention
from hsivar.models.vqvae import VQVAE
from hsivar.presets import preset
from hsivar.tasks import DEFAULT_TASKS
from hsivar.training import Batch

TINY_BANDS = 8


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    """The tiny preset with 8 bands: 32×32 tiles, a 16×16 latent with 8 scales, a 2-block transformer."""
    return preset("tiny", bands=TINY_BANDS)


@pytest.fixture
def tiny_model(tiny_cfg: ModelConfig) -> HSIVAR:
    """A randomly initialised tiny model in eval mode (seeded)."""
    torch.manual_seed(0)
    return HSIVAR(tiny_cfg).eval()


@pytest.fixture
def head_on_model(tiny_cfg: ModelConfig) -> HSIVAR:
    """The tiny model (as ``tiny_model``) with its output head switched on (seeded). An untrained head returns the
    classical first estimate x0 exactly (gate 1, last conv 0), so a fresh model's restorations depend neither on
    its weights nor on its decoder, task or tiling: a test comparing restorations needs this one. Half of every
    output is the decoder's, plus the head's."""
    torch.manual_seed(0)
    model = HSIVAR(tiny_cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.fusion.gate.weight.fill_(0.5)
        model.fusion.ending.weight.copy_(0.02 * torch.randn(model.fusion.ending.weight.shape, generator=g))
    return model


def _smooth_cubes(n: int, bands: int, size: int, seed: int) -> torch.Tensor:
    """Spatially and spectrally smooth cubes (n, bands, size, size) in [0, 1]: 3 endmembers mixed on a 4×4 field."""
    g = torch.Generator().manual_seed(seed)
    abundance = torch.rand(n, 3, 4, 4, generator=g)
    spectra = torch.rand(3, bands, generator=g)
    low = torch.einsum("bkhw,kc->bchw", abundance, spectra) / spectra.sum(0).max()
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def _noisy_batch(hq: torch.Tensor, sigma255: float, seed: int) -> Batch:
    """A training batch: ``hq`` plus seeded Gaussian noise of σ = sigma255/255, labelled gaussian, with each
    example's classical first estimate and kept entries as the training data pipeline computes them."""
    from hsivar.degrade import Observation
    from hsivar.training import example_estimate

    g = torch.Generator().manual_seed(seed)
    lq = hq + torch.randn(hq.shape, generator=g) * sigma255 / 255
    w = torch.zeros(hq.shape[0], len(DEFAULT_TASKS))
    w[:, DEFAULT_TASKS.index("gaussian")] = 1
    record = _gaussian_record(tuple(hq.shape[1:]), sigma255)
    pairs = [example_estimate(x.numpy(), record) for x in lq]
    x0 = torch.from_numpy(np.stack([p[0] for p in pairs]))
    kept = torch.from_numpy(np.stack([p[1] for p in pairs]))
    assert Observation.detect(lq[0].numpy()).noisy()
    return Batch(hq, lq, w, x0, kept)


def _gaussian_record(shape: tuple[int, ...], sigma255: float) -> DegradationRecord:
    from hsivar.tasks import task_weights

    return DegradationRecord("gaussian", sigma255, shape, task_weights(["gaussian"]), sigma=sigma255 / 255)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def smooth_cubes() -> Callable[[int, int, int, int], torch.Tensor]:
    """``smooth_cubes(n, bands, size, seed)`` → smooth cubes (n, bands, size, size) in [0, 1]."""
    return _smooth_cubes


@pytest.fixture(scope="session")
def switched_on() -> Callable[[torch.nn.Module], torch.nn.Module]:
    """``switched_on(model)`` → ``model`` with every all-zero parameter set to small random values (seeded) and its
    fusion gate at 0.5. An untrained model starts its gated paths at 0 (the fusion head's last conv, the refiner's,
    SSA's γ and σ, cross-attention gains, the latent refiner's and the prior's projections), and its fusion head
    returns the first estimate whatever the tokens: a test comparing restorations would compare x0 and skip those
    paths."""
    return _switched_on


def _switched_on(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
        model.fusion.gate.weight.fill_(0.5)
    return model


@pytest.fixture(scope="session")
def noisy_batch() -> Callable[[torch.Tensor, float, int], Batch]:
    """``noisy_batch(hq, sigma255, seed)`` → a seeded gaussian-noise training :class:`~hsivar.training.Batch`."""
    return _noisy_batch


def _train_stage(model: torch.nn.Module, stage: str, batch: Batch, steps: int = 2) -> tuple[set[int], list[dict]]:
    """Train ``stage`` of ``model`` for ``steps`` steps on ``batch`` and check what every stage must do: a finite
    loss, gradients reaching its parameters, every other weight unchanged; → (ids of its parameters, step logs)."""
    from hsivar.training import fit, trainable_parameters

    params = trainable_parameters(model, stage)  # type: ignore[arg-type]
    ids = set(map(id, params))
    frozen = [p for p in model.parameters() if id(p) not in ids]
    before = [p.detach().clone() for p in frozen]
    results = list(fit(model, stage, [batch], steps=steps, lr=1e-3))  # type: ignore[arg-type]
    assert all(torch.isfinite(r.loss) for r in results)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen))
    return ids, [r.logs for r in results]


@pytest.fixture(scope="session")
def train_stage() -> Callable[..., tuple[set[int], list[dict]]]:
    """``train_stage(model, stage, batch, steps=2)`` → (ids of the stage's parameters, step logs), after checking the
    stage trains them and nothing else (see :func:`_train_stage`)."""
    return _train_stage


def _attention_one_at_a_time(a: SelfAttention, x: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The self-attention with q and k each normalised, scaled and rotated on its own (the reference); → output, k."""
    B, N, C = x.shape
    bias = torch.cat([a.q_bias, a.zero_k_bias, a.v_bias])
    q, k, v = F.linear(x, a.mat_qkv.weight, bias).view(B, N, 3, a.heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q = apply_rope(F.normalize(q, dim=-1).mul(a.scale_mul_1H11.clamp_max(a.max_scale_mul).exp()), cos, sin)
    k = apply_rope(F.normalize(k, dim=-1), cos, sin)
    out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), scale=1.0)
    return a.proj(out.transpose(1, 2).reshape(B, N, C)), k


def _attention_both_ways(a: SelfAttention, x: torch.Tensor, angles: torch.Tensor,
                         bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``a`` on x (B, N, C) with RoPE angles (N, d/2), on x's device, under bf16 autocast or not: → (its output, its
    cached keys, the one-at-a-time reference's output, the reference's keys)."""
    cos, sin = angles.cos(), angles.sin()
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        a.kv_caching(True)
        out = a(x, cos, sin, None)
        k = a.cached_k
        a.kv_caching(False)
        ref, ref_k = _attention_one_at_a_time(a, x, cos, sin)
    return out, k, ref, ref_k


@pytest.fixture
def attention_both_ways() -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(attention, x, angles, bf16)`` → (output, cached keys) of the module, which normalises, scales and rotates q
    and k as one tensor, and of the reference doing each on its own; they must be equal bit for bit."""
    return _attention_both_ways


def _vqvae_norms_both_ways(device: str) -> list[tuple[float, float]]:
    """The tiny VQ-VAE's encoder and decoder (8 bands; SSA switched on, the norms' affine parameters off their start)
    on ``device`` under bf16 autocast, with the low-precision group norms and with autocast's own policy for them:
    → [(relative max |Δ| against fp32 with the low-precision norms, the same with autocast's policy)] for the
    encoder's features, then the decoder's image."""
    torch.manual_seed(0)
    model_cfg = preset("tiny", bands=8)
    vae = VQVAE(model_cfg.vqvae).to(device).eval()
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            for gate in ("gamma", "sigma"):  # zero-initialised gates on, so SSA's norms take part
                if isinstance(getattr(m, gate, None), torch.nn.Parameter):
                    getattr(m, gate).fill_(0.5)
    x = torch.rand(2, *model_cfg.cube_shape, device=device) * 2 - 1

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        f = vae.encoder(x)
        return f.float(), vae.decoder(f).float()

    with torch.no_grad():
        f32, y32 = run()
        with torch.autocast(device, dtype=torch.bfloat16):
            f_low, y_low = run()
            with autocast_policy_norms(vae):
                f_pol, y_pol = run()
    assert not torch.equal(y_low, y_pol), "the two policies computed the same"

    def err(a: torch.Tensor, ref: torch.Tensor) -> float:
        return float((a - ref).abs().max() / ref.abs().max())

    out = [(err(f_low, f32), err(f_pol, f32)), (err(y_low, y32), err(y_pol, y32))]
    print(f"relative max |Δ| against fp32 on {device} (low-precision norms, autocast's): {out}")
    return out


@pytest.fixture
def vqvae_norms_both_ways() -> Callable[[str], list[tuple[float, float]]]:
    """``(device)`` → the tiny VQ-VAE's relative error against fp32 under bf16 autocast with the low-precision
    group norms and with autocast's own policy (encoder features, decoded image)."""
    return _vqvae_norms_both_ways
