"""NAFNet refiner on the latent grid: predicts the continuous quantisation residual.

Discrete tokens cap fidelity, so the last scale's hidden states z (B, p_K², C) and the word
embedding of the last scale's codes W(e[r_K]) go through LN → 1×1 to ``width`` → NAFNet blocks →
3×3 to Cvae, predicting f − f̂_K (trained with L1); the restored latent is f̂_K + Q(·). The output
conv starts at zero, so an untrained refiner leaves f̂_K unchanged. NAFBlock: LayerNorm2d → 1×1
(2c) → depthwise 3×3 → SimpleGate → simplified channel attention → 1×1, residual scaled by β; then
LayerNorm2d → 1×1 (2c) → SimpleGate → 1×1, residual scaled by γ; β = γ = 0 at initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from hsivar.config import RefinerConfig


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of (B, C, H, W) at every pixel."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NAFBlock(nn.Module):
    """NAFNet block; (B, c, H, W) → same."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.conv3 = nn.Conv2d(c, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    @staticmethod
    def _gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._gate(self.conv2(self.conv1(self.norm1(x))))
        y = x + self.beta * self.conv3(h * self.sca(h))
        return y + self.gamma * self.conv5(self._gate(self.conv4(self.norm2(y))))


class Refiner(nn.Module):
    """Q: (z (B, p_K², C), W(e[r_K]) (B, p_K², C)) → predicted residual (B, Cvae, p_K, p_K)."""

    def __init__(self, cfg: RefinerConfig, width: int, z_channels: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.intro = nn.Conv2d(width, cfg.width, 1)
        self.blocks = nn.Sequential(*[NAFBlock(cfg.width) for _ in range(cfg.blocks)])
        self.ending = nn.Conv2d(cfg.width, z_channels, 3, padding=1)
        nn.init.zeros_(self.ending.weight)
        nn.init.zeros_(self.ending.bias)

    def forward(self, z_BNC: torch.Tensor, w_BNC: torch.Tensor) -> torch.Tensor:
        x = self.norm(z_BNC + w_BNC).transpose(1, 2)
        x = x.reshape(x.shape[0], x.shape[1], self.grid, self.grid)
        return self.ending(self.blocks(self.intro(x))).float()
