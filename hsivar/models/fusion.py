"""Output fusion: the degraded tile's pixels join the decoded restoration on the image grid.

A token decoder cannot put out more detail than its tokenizer reconstructs; where the degraded input
is already close to the clean cube (mild blur, ×2 super-resolution) its pixels hold detail the
decoded tile lacks. VarFormer ("VarFormer: Adapting VAR's Generative Prior for Image Restoration",
arXiv:2412.21063) mixes its input into the output (``h·(1 − w) + w·input``); here a small NAFNet on
the image grid sees both tiles and the task weights and predicts a correction of the decoded tile::

    h = conv3×3([lq, ŷ]) + W_t·weights      (B, width, S, S), the task weights as a per-sample bias
    g = G·weights                            (B, C), a per-task, per-band gate
    a = A·weights                            (B, J), per-task amounts of J unsharp masks
    y = ŷ + g·(lq − ŷ) + Σ_j a_j·(lq − G_σj ∗ lq) + conv3×3(NAFBlocks(h))

With ``ModelConfig.first_estimate`` the classical first estimate x0 (:mod:`hsivar.estimate`) takes lq's
place in the gate and the unsharp masks, the input conv sees [lq, x0, ŷ], and the gate starts at 1: an
untrained head returns x0, and training learns where ŷ improves on it. The output is then shrunk towards
x0 per task, ``x0 + τ·(y − x0)`` with τ = trust·weights (``FusionConfig.trust``, fitted on validation
examples after stage 3 by :mod:`hsivar.calibrate`): where the learned correction does not help a family
on held-out data, that family gets x0. Both ends are clamped to [0, 1] before the shrink, so the output is
exactly the mix of the two outputs the calibration scored.

The gate is a full-rank path from the input, per band: the ``width``-channel bottleneck alone does not
pass a good input (×2 super-resolution) through unchanged. G and the output conv start at zero, so an
untrained head returns ŷ unchanged. It is trained in stage 3 with the decoder on autoregressive
restorations (``train.decoder.head_lr`` lets it learn faster than the pretrained decoder it corrects;
G, a handful of scalars per task, at ``gate_lr_scale`` times that).

The unsharp masks (``unsharp_sigmas``: Gaussian widths G_σj, truncated at 3σ, reflect padding
inside the tile, the same for every band; A starts at zero and learns at the gate's rate) are a
linear restoration branch: a small head trained in a short stage 3 does not learn to sharpen on its
own. With the gate at 1, ``lq + Σ a_j (lq − G_σj ∗ lq)`` is a band-pass gain curve on the input:
amounts > 0 undo part of a blur, amounts < 0 smooth pixel-replicated super-resolution input. The
amounts are linear in the output, so a few scalars per task converge in a short stage 3, where a
free per-task filter at that rate over-shoots (docs/experiments.md records the comparisons).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hsivar.config import FusionConfig, unsharp_radius
from hsivar.kernels import gaussian_kernel1d
from hsivar.models.refiner import NAFBlock

MATRIX_SIDE = 64
"""Largest tile side whose unsharp masks blur as matrix products: a single-channel 1-D convolution is slow on a
CPU (28 against 1.7 ms for 9 tiles of 31×32×32 and three widths, docs/experiments.md); a matrix costs O(side) per
pixel."""


def reflect_matrix(k1d: torch.Tensor, n: int) -> torch.Tensor:
    """The (n, n) matrix of correlating a length-n signal with ``k1d`` (k,), k = 2r + 1, under reflect padding (the
    mirror without repeating the edge, as ``F.pad(mode="reflect")``; needs r < n): row i holds k1d[m] at column
    reflect(i + m − r). On ``k1d``'s device and dtype."""
    r = k1d.numel() // 2
    idx = (torch.arange(n, device=k1d.device)[:, None] + torch.arange(-r, r + 1, device=k1d.device)[None]).abs()
    idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)  # (n, k) source column of each tap
    return torch.zeros(n, n, device=k1d.device, dtype=k1d.dtype).scatter_add_(1, idx, k1d[None].expand(n, -1))


class OutputFusion(nn.Module):
    """(lq, ŷ, task weights (B, N), base) → restored (B, C, S, S), all in [0, 1] units.

    ``from_estimate`` (``ModelConfig.first_estimate``): the gate's base is the classical first estimate x0
    instead of lq, the gate starts at 1 (so an untrained head returns x0) and the input conv also sees x0.
    """

    def __init__(self, cfg: FusionConfig, bands: int, tasks: int, from_estimate: bool = False) -> None:
        """A head for ``bands``-band tiles and ``tasks`` task weights (see the class docstring)."""
        super().__init__()
        self.from_estimate = from_estimate
        self.intro = nn.Conv2d((3 if from_estimate else 2) * bands, cfg.width, 3, padding=1)
        self.task = nn.Linear(tasks, cfg.width)
        self.blocks = nn.Sequential(*[NAFBlock(cfg.width) for _ in range(cfg.blocks)])
        self.ending = nn.Conv2d(cfg.width, bands, 3, padding=1)
        self.gate = nn.Linear(tasks, bands, bias=False)
        self.sigmas = tuple(cfg.unsharp_sigmas)
        self.unsharp = nn.Linear(tasks, len(self.sigmas), bias=False) if self.sigmas else None  # A: (J, N)
        for j, sigma in enumerate(self.sigmas):  # fixed kernels, built once; not part of the weights
            g = torch.as_tensor(gaussian_kernel1d(2 * unsharp_radius(sigma) + 1, sigma))  # on the default device
            self.register_buffer(f"gauss{j}", g, persistent=False)
        for p in (self.ending.weight, self.ending.bias, self.gate.weight):
            nn.init.zeros_(p)
        if from_estimate:  # task weights sum to 1, so a gate of ones starts every task at g = 1: y = x0
            nn.init.ones_(self.gate.weight)
        if self.unsharp is not None:
            nn.init.zeros_(self.unsharp.weight)
        trust = torch.ones(tasks) if cfg.trust is None else torch.tensor(cfg.trust, dtype=torch.float32)
        self.register_buffer("trust", trust, persistent=False)  # from the config, not the weights

    def set_trust(self, trust: torch.Tensor) -> None:
        """Set τ per task (N,) in [0, 1] (:func:`hsivar.calibrate.calibrate`)."""
        self.trust.copy_(trust.to(self.trust))

    def details(self, lq_BCHW: torch.Tensor) -> torch.Tensor:
        """lq − G_σ ∗ lq for every σ of ``unsharp_sigmas`` (reflect padding); → (B, J, C, H, W) float32.

        In float32 with autocast off: a detail is a difference of two close values, which bf16 loses. Sides up to
        :data:`MATRIX_SIDE` blur as two matrix products ``R_H · x · R_Wᵀ`` (:func:`reflect_matrix`), larger ones
        as two 1-D convolutions: the same sums in another order.
        """
        B, C, H, W = lq_BCHW.shape
        out = []
        with torch.autocast("cuda" if lq_BCHW.is_cuda else "cpu", enabled=False):  # "meta" has none
            x = lq_BCHW.float()
            for j in range(len(self.sigmas)):
                g = getattr(self, f"gauss{j}").float()
                if max(H, W) <= MATRIX_SIDE:
                    r_h = reflect_matrix(g, H)
                    blurred = r_h @ x @ (r_h if W == H else reflect_matrix(g, W)).T
                else:
                    r, x1 = g.numel() // 2, x.reshape(B * C, 1, H, W)
                    blurred = F.conv2d(F.pad(x1, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
                    blurred = F.conv2d(F.pad(blurred, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1))
                    blurred = blurred.reshape(B, C, H, W)
                out.append(x - blurred)
        return torch.stack(out, dim=1)

    def forward(self, lq_BCHW: torch.Tensor, y_BCHW: torch.Tensor, weights_BN: torch.Tensor,
                base_BCHW: torch.Tensor | None = None) -> torch.Tensor:
        """The restored tiles: lq, ŷ, ``base`` (x0; default lq) (B, C, S, S) and task weights (B, N) → (B, C, S, S)."""
        base = lq_BCHW if base_BCHW is None else base_BCHW
        inputs = [lq_BCHW, base, y_BCHW] if self.from_estimate else [lq_BCHW, y_BCHW]
        x = torch.cat(inputs, dim=1).to(self.intro.weight.dtype)
        w = weights_BN.to(self.task.weight.dtype)
        h = self.intro(x) + self.task(w)[:, :, None, None]
        g = self.gate(w).to(y_BCHW.dtype)[:, :, None, None]
        y = y_BCHW + g * (base - y_BCHW) + self.ending(self.blocks(h)).to(y_BCHW.dtype)
        if self.unsharp is not None:
            a_BJ = self.unsharp(w).float()
            y = y + torch.einsum("bj,bjchw->bchw", a_BJ, self.details(base)).to(y_BCHW.dtype)
        if not self.from_estimate:
            return y
        tau = (weights_BN.float() @ self.trust.float()).to(y.dtype)[:, None, None, None]  # (B, 1, 1, 1)
        # The shrink runs between cubes in [0, 1]: mixing an unclamped y (below 0 in dark regions) and clamping
        # afterwards zeroes bands of dark spectra that the calibration, which scores the clamped ends τ = 0 and 1,
        # never saw. y is clamped in the forward value only (straight through: the gradient passes as unclamped).
        y = y + (y.clamp(0, 1) - y).detach()
        base01 = base.clamp(0, 1)
        return base01 + tau * (y - base01)
