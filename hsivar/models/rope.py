"""2D rotary position embeddings aligned across scales (VARSR / RestoreVAR's scheme).

A token at row i, column j of a p×p scale sits at position (i·G/p, j·G/p) on the finest grid of side
G = p_K, top-left aligned, so the same image location has the same position at every scale. The
head dimension is split in two halves of complex pairs: the first rotates with the row position,
the second with the column position, each with frequencies 1/θ^(4m/d), m = 0 … d/4 − 1.
"""

from __future__ import annotations

import torch


def grid_positions(side: int, grid: int) -> torch.Tensor:
    """(row, col) positions of a side×side token map on a grid of side ``grid``; → (side², 2) float64."""
    idx = torch.arange(side, dtype=torch.float64) * (grid / side)
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1)


def rope_angles(pos_N2: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Rotation angles per token and complex pair; positions (N, 2) → (N, head_dim/2) float32 radians."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 4, dtype=torch.float64)[: head_dim // 4] / head_dim)
    angles = torch.cat([torch.outer(pos_N2[:, 0], freqs), torch.outer(pos_N2[:, 1], freqs)], dim=1)
    return angles.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (B, H, N, d) by angles with cos/sin (N, d/2); → (B, H, N, d)."""
    x_pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = x_pairs.unbind(-1)
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
