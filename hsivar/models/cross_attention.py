"""Cross-attention as in RestoreVAR's released code: queries from a token sequence, keys and values from a
condition sequence.

LayerNorm (affine) on the queries and on the keys/values, q and kv projections without bias, L2-normalised q/k
with a learned per-head temperature (the self-attention's scheme, scale 1), optional 2D RoPE (queries at their
own positions, keys at the condition grid's), and an output ``gain · proj(·)``. With ``gated=True`` the gain is a
parameter that starts at 0, so a block that gains the cross-attention starts as the block without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hsivar.models.rope import apply_rope


class CrossAttention(nn.Module):
    """x (B, N, C) attends to m (B, M, C) → (B, N, C); see the module docstring."""

    def __init__(self, width: int, heads: int, gated: bool = True) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.ln_q = nn.LayerNorm(width, eps=1e-6)
        self.ln_kv = nn.LayerNorm(width, eps=1e-6)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.kv_proj = nn.Linear(width, 2 * width, bias=False)
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100)
        self.proj = nn.Linear(width, width)
        self.gain = nn.Parameter(torch.zeros(1)) if gated else None
        self.caching = False
        self.cached_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # the condition's k, v (B, heads, M, d)

    def kv_caching(self, enable: bool) -> None:
        """Keep the condition's keys and values from the first call to the next ones (autoregressive decoding: the
        condition is the same at every scale, so they are computed once, not once per scale), or not; either way
        the kept ones are dropped."""
        self.caching, self.cached_kv = enable, None

    def forward(self, x_BNC: torch.Tensor, m_BMC: torch.Tensor,
                rope_q: tuple[torch.Tensor, torch.Tensor] | None = None,
                rope_k: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Queries x (B, N, C), keys/values from m (B, M, C); rope_q / rope_k: (cos, sin) of shape (N, d/2) /
        (M, d/2) or None (no rotation) → (B, N, C). With :meth:`kv_caching` on, m's keys and values are those of
        the first call since (m is not read again)."""
        B, N, C = x_BNC.shape
        q = self.q_proj(self.ln_q(x_BNC)).view(B, N, self.heads, self.head_dim).transpose(1, 2)
        q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
        if rope_q is not None:
            q = apply_rope(q, *rope_q)
        if self.cached_kv is not None:
            k, v = self.cached_kv
        else:
            kv = self.kv_proj(self.ln_kv(m_BMC)).view(B, m_BMC.shape[1], 2, self.heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, M, d)
            k = F.normalize(k, dim=-1)
            if rope_k is not None:
                k = apply_rope(k, *rope_k)
            if self.caching:
                self.cached_kv = k, v
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), scale=1.0)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))
        return out if self.gain is None else self.gain.to(out.dtype) * out
