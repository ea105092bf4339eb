"""A PatchGAN discriminator and its hinge objective: the optional adversarial term of stage decoder.

RestoreVAR fine-tunes its decoder on continuous latents with a PatchGAN discriminator (its paper; the fine-tune
code is not released). The discriminator (pix2pix's PatchGAN: Isola et al., "Image-to-Image Translation with
Conditional Adversarial Networks", CVPR 2017) scores every overlapping patch of a cube as clean or restored: a
4×4 stride-2 convolution per ``layers`` (channels ``width``, doubling), group norm and leaky ReLU after all but the
first, then two 4×4 stride-1 convolutions down to one logit per patch. It sees every band, so it judges spectra
as well as texture.

The objective is the hinge loss (Lim & Ye, "Geometric GAN", 2017, as in VQGAN): the discriminator minimises
relu(1 − D(clean)) + relu(1 + D(restored)); the restorer adds λ·(−D(restored)). :func:`adversarial_terms` gives
both at once so that one backward pass and one optimizer train them: the discriminator sees the restoration
detached, and the restorer's term runs the discriminator with its parameters detached, so neither term reaches
the other's weights. It lives in training only (:mod:`hsivar.training`); a published model holds none of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hsivar.config import GANConfig, ModelConfig


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) cube in [−1, 1] → (B, 1, h, w) patch logits (h ≈ H / 2^layers − 2)."""

    def __init__(self, bands: int, cfg: GANConfig) -> None:
        """``bands`` input channels; ``cfg.width`` channels after the first layer, doubled per stride-2 layer."""
        super().__init__()
        ch = [cfg.width * 2**k for k in range(cfg.layers + 1)]
        layers: list[nn.Module] = [nn.Conv2d(bands, ch[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for k in range(1, cfg.layers):
            layers += [nn.Conv2d(ch[k - 1], ch[k], 4, stride=2, padding=1), _norm(ch[k]), nn.LeakyReLU(0.2)]
        last = ch[cfg.layers - 1]
        layers += [nn.Conv2d(last, ch[cfg.layers], 4, stride=1, padding=1), _norm(ch[cfg.layers]), nn.LeakyReLU(0.2),
                   nn.Conv2d(ch[cfg.layers], 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Cube (B, C, H, W) in [−1, 1] → patch logits (B, 1, h, w), float32."""
        return self.net(x_BCHW.to(self.net[0].weight.dtype)).float()


def _norm(channels: int) -> nn.GroupNorm:
    # group norm, not pix2pix's batch norm: no running statistics, so the restorer's pass through the
    # discriminator (with detached parameters) changes nothing in it
    return nn.GroupNorm(min(8, channels // 4) or 1, channels)


def build_discriminator(cfg: ModelConfig) -> PatchDiscriminator | None:
    """The discriminator stage decoder trains beside the model when ``cfg.loss.gan.weight`` > 0, else None."""
    gan = cfg.loss.gan
    return PatchDiscriminator(cfg.bands, gan) if gan.weight > 0 else None


def adversarial_terms(critic: PatchDiscriminator, restored_BCHW: torch.Tensor, clean_BCHW: torch.Tensor,
                      weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The hinge GAN terms of one batch, to add to the restorer's loss: → (λ·(−mean D(restored)) with the critic's
    parameters detached + relu(1 − D(clean)) + relu(1 + D(restored detached)) averaged over patches, logs).

    ``restored`` and ``clean``: (B, C, H, W) in [−1, 1]. The first term's gradient reaches only the restorer, the
    rest only the critic, so one backward pass and one optimizer train both.
    """
    real = critic(clean_BCHW)
    fake = critic(restored_BCHW.detach())
    d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    frozen = {k: v.detach() for k, v in critic.named_parameters()}
    g_loss = -functional_call(critic, frozen, (restored_BCHW,)).mean()
    logs = {"gan_d": float(d_loss.detach()), "gan_g": float(g_loss.detach()),
            "d_real": float(real.detach().mean()), "d_fake": float(fake.detach().mean())}
    return weight * g_loss + d_loss, logs
