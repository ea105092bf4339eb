"""The optional PatchGAN term of stage decoder: patch logits, each hinge term reaching only its own weights, a stage
that trains with it, a published model without it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hsivar.config import GANConfig, ModelConfig
from hsivar.models.build import build_model
from hsivar.models.patchgan import PatchDiscriminator, adversarial_terms, build_discriminator
from hsivar.presets import preset
from hsivar.publish import load_published, save_published
from hsivar.training import param_groups, stage3_loss, stage_critic, trainable_parameters

BANDS = 8


def _with_gan(cfg: ModelConfig, weight: float) -> ModelConfig:
    return cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"gan": GANConfig(weight=weight)})})


def test_the_discriminator_scores_overlapping_patches() -> None:
    critic = PatchDiscriminator(BANDS, GANConfig(weight=0.1, width=8, layers=2))
    assert critic(torch.rand(3, BANDS, 32, 32) * 2 - 1).shape == (3, 1, 6, 6)
    assert build_discriminator(preset("tiny", bands=BANDS)) is None  # off by default
    assert stage_critic(build_model(_with_gan(preset("tiny", bands=BANDS), 0.1)), "var") is None  # decoder only


@pytest.mark.parametrize("family", ["restorevar", "hsivar"])
def test_each_hinge_term_reaches_only_its_own_weights(family: str, smooth_cubes: Callable,
                                                      noisy_batch: Callable) -> None:
    """The discriminator's gradient does not depend on λ (the restorer's term runs it with detached weights); the
    restorer's does (the adversarial term reaches it: a fresh model's decoder and fusion head)."""
    batch = noisy_batch(smooth_cubes(2, BANDS, 32, seed=1), 30, seed=2)
    torch.manual_seed(0)
    base = build_model(_with_gan(preset("tiny", bands=BANDS, family=family), 0.1))
    critic = stage_critic(base, "decoder")
    assert critic is not None
    grads = []
    for weight in (0.1, 5.0):
        model = build_model(_with_gan(base.cfg, weight))
        model.load_state_dict(base.state_dict())
        own = copy.deepcopy(critic)
        trainable_parameters(model, "decoder")
        model.train()
        res = stage3_loss(model, batch, torch.Generator().manual_seed(0), own)
        res.loss.backward()
        assert {"gan_d", "gan_g", "d_real", "d_fake"} <= set(res.logs)
        grads.append(([p.grad.clone() for p in own.parameters()],
                      [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (critic_a, model_a), (critic_b, model_b) = grads
    assert all(torch.allclose(a, b, rtol=1e-5, atol=0) for a, b in zip(critic_a, critic_b))
    diff = torch.cat([(a - b).flatten() for a, b in zip(model_a, model_b)]).norm()
    assert model_a and diff > 0.01 * torch.cat([a.flatten() for a in model_a]).norm()


def test_a_stage_with_the_gan_term_trains_and_publishes_the_model_alone(smooth_cubes: Callable, noisy_batch: Callable,
                                                                       train_stage: Callable, tmp_path: Path) -> None:
    """Stage decoder with λ > 0 trains the decoder (and its discriminator, in its own parameter group); the
    published model holds no discriminator weight and loads strictly."""
    torch.manual_seed(0)
    model = build_model(_with_gan(preset("tiny", bands=BANDS, family="restorevar"), 0.1))
    _, logs = train_stage(model, "decoder", noisy_batch(smooth_cubes(2, BANDS, 32, seed=1), 30, seed=2))
    assert all(k in logs[-1] for k in ("gan_d", "gan_g")) and logs[-1]["gan_d"] > 0
    critic = stage_critic(model, "decoder")
    groups = param_groups(model, trainable_parameters(model, "decoder"), 1e-3, None, critic)
    assert groups[-1]["params"] == list(critic.parameters()) and groups[-1]["lr"] == pytest.approx(2e-4)
    save_published(model, tmp_path, stage="decoder")
    loaded, _ = load_published(tmp_path)
    assert loaded.cfg.loss.gan.weight == pytest.approx(0.1)
    assert not any("critic" in k or "disc" in k for k in loaded.state_dict())


def test_the_discriminator_learns_to_tell_clean_from_restored(smooth_cubes: Callable) -> None:
    """Minimising the hinge terms moves the patch logits apart: D(clean) ends above 1 − margin, D(restored) — here
    the clean cubes with noise — below it; the restored cubes get the gradient that makes them look cleaner."""
    torch.manual_seed(0)
    critic = PatchDiscriminator(BANDS, GANConfig(weight=0.1, width=8, layers=2))
    opt = torch.optim.Adam(critic.parameters(), lr=2e-3)
    clean = smooth_cubes(4, BANDS, 32, seed=3) * 2 - 1
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(4))
    for _ in range(30):
        restored = noisy.clone().requires_grad_(True)
        loss, logs = adversarial_terms(critic, restored, clean, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["d_real"] > 0.5 and logs["d_fake"] < -0.5
    # the restorer's gradient points towards what the critic calls clean: a small step against it raises D
    with torch.no_grad():
        stepped = noisy - 50 * restored.grad
        assert critic(stepped).mean() > critic(noisy).mean()
