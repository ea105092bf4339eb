"""RestoreVAR's latent refiner transformer (LRT): the greedy latent f̂_K → the clean continuous latent.

The h·w cells of f̂_K are tokens: LayerNorm → ``proj_in`` (no bias) → + a learned position embedding. The
transformer's normed hidden states of every scale (L tokens) are the condition: LayerNorm → ``proj_cond`` →
+ a learned position embedding of the L positions. ``depth`` layers of [self-attention → FFN (GELU) →
cross-attention to the condition], each pre-LN with a residual; then LayerNorm → ``proj_out`` (no bias) added
to f̂_K. ``proj_out`` starts at zero, so an untrained LRT returns f̂_K. It is trained (stage ``refiner``) with
L1 to quant_conv(E(hq)) on the transformer's own greedy outputs, everything else frozen.
"""

from __future__ import annotations

import torch
from torch import nn

from hsivar.config import LRTConfig, TransformerConfig, VQVAEConfig
from hsivar.models.cross_attention import CrossAttention
from hsivar.models.var import FFN


class LRTLayer(nn.Module):
    """x += self-attn(x); x += ffn(ln(x)); x += cross-attn(x, m) — each attention normalises its own inputs."""

    def __init__(self, cfg: LRTConfig) -> None:
        super().__init__()
        self.attn = CrossAttention(cfg.width, cfg.heads, gated=False)
        self.ln = nn.LayerNorm(cfg.width, eps=1e-6)
        self.ffn = FFN(cfg.width, cfg.mlp_ratio, 0.0)
        self.cross = CrossAttention(cfg.width, cfg.heads, gated=False)

    def forward(self, x_BNC: torch.Tensor, m_BLC: torch.Tensor) -> torch.Tensor:
        """x (B, h·w, width), m (B, L, width) → (B, h·w, width)."""
        x = x_BNC + self.attn(x_BNC, x_BNC)
        x = x + self.ffn(self.ln(x))
        return x + self.cross(x, m_BLC)


class LatentRefinerTransformer(nn.Module):
    """(f̂_K (B, Cvae, h, w), hidden states (B, L, C_transformer)) → refined latent (B, Cvae, h, w)."""

    def __init__(self, cfg: LRTConfig, transformer: TransformerConfig, vq: VQVAEConfig) -> None:
        super().__init__()
        n_cells, n_tokens, z = vq.latent_size**2, sum(vq.tokens_per_scale), vq.z_channels
        self.ln_in = nn.LayerNorm(z, eps=1e-6)
        self.proj_in = nn.Linear(z, cfg.width, bias=False)
        self.pos = nn.Parameter(torch.randn(1, n_cells, cfg.width) * 0.02)
        self.ln_cond = nn.LayerNorm(transformer.width, eps=1e-6)
        self.proj_cond = nn.Linear(transformer.width, cfg.width)
        self.pos_cond = nn.Parameter(torch.randn(1, n_tokens, cfg.width) * 0.02)
        self.layers = nn.ModuleList([LRTLayer(cfg) for _ in range(cfg.depth)])
        self.ln_out = nn.LayerNorm(cfg.width, eps=1e-6)
        self.proj_out = nn.Linear(cfg.width, z, bias=False)
        nn.init.zeros_(self.proj_out.weight)

    def forward(self, f_hat_BChw: torch.Tensor, hidden_BLC: torch.Tensor) -> torch.Tensor:
        """f̂_K (B, Cvae, h, w) and every scale's hidden states (B, L, C) → f̂_K + residual (B, Cvae, h, w),
        float32."""
        B, Cv, h, w = f_hat_BChw.shape
        tokens = f_hat_BChw.flatten(2).transpose(1, 2)  # (B, h·w, Cvae)
        x = self.proj_in(self.ln_in(tokens.to(self.ln_in.weight.dtype))) + self.pos
        m = self.proj_cond(self.ln_cond(hidden_BLC.to(self.ln_cond.weight.dtype))) + self.pos_cond
        for layer in self.layers:
            x = layer(x, m)
        residual = self.proj_out(self.ln_out(x)).float().transpose(1, 2).reshape(B, Cv, h, w)
        return f_hat_BChw.float() + residual
