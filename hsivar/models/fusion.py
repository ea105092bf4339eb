"""Output fusion: the degraded tile's pixels join the decoded restoration on the image grid.

A token decoder cannot put out more detail than its tokenizer reconstructs; where the degraded input
is already close to the clean cube (mild blur, ×2 super-resolution) its pixels hold detail the
decoded tile lacks. VarFormer mixes its input into the output (``h·(1 − w) + w·input``, REFERENCE
§5); here a small NAFNet on the image grid sees both tiles and the task weights and predicts a
correction of the decoded tile::

    h = conv3×3([lq, ŷ]) + W_t·weights      (B, width, S, S), the task weights as a per-sample bias
    g = G·weights                            (B, C), a per-task, per-band gate
    y = ŷ + g·(lq − ŷ) + conv3×3(NAFBlocks(h))

The gate is a full-rank path from the input: through the ``width``-channel bottleneck alone the head
did not reproduce a ×2 super-resolution input (29.7 against 30.0 dB with the task given). G and the
output conv start at zero, so an untrained head returns ŷ unchanged. It is trained in stage 3 with
the decoder on autoregressive restorations (``train.decoder.head_lr`` lets it learn faster than the
pretrained decoder it corrects; G, a handful of scalars per task, at ``gate_lr_scale`` times that).
"""

from __future__ import annotations

import torch
from torch import nn

from hsivar.config import FusionConfig
from hsivar.models.refiner import NAFBlock


class OutputFusion(nn.Module):
    """(lq (B, C, S, S), ŷ (B, C, S, S), task weights (B, N)) → restored (B, C, S, S), all in [0, 1] units."""

    def __init__(self, cfg: FusionConfig, bands: int, tasks: int) -> None:
        super().__init__()
        self.intro = nn.Conv2d(2 * bands, cfg.width, 3, padding=1)
        self.task = nn.Linear(tasks, cfg.width)
        self.blocks = nn.Sequential(*[NAFBlock(cfg.width) for _ in range(cfg.blocks)])
        self.ending = nn.Conv2d(cfg.width, bands, 3, padding=1)
        self.gate = nn.Linear(tasks, bands, bias=False)
        for p in (self.ending.weight, self.ending.bias, self.gate.weight):
            nn.init.zeros_(p)

    def forward(self, lq_BCHW: torch.Tensor, y_BCHW: torch.Tensor, weights_BN: torch.Tensor) -> torch.Tensor:
        x = torch.cat([lq_BCHW, y_BCHW], dim=1).to(self.intro.weight.dtype)
        w = weights_BN.to(self.task.weight.dtype)
        h = self.intro(x) + self.task(w)[:, :, None, None]
        g = self.gate(w).to(y_BCHW.dtype)[:, :, None, None]
        return y_BCHW + g * (lq_BCHW - y_BCHW) + self.ending(self.blocks(h)).to(y_BCHW.dtype)
