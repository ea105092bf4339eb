"""Next-scale prediction transformer of HSI-VAR (VAR's GPT-2-style model with HSI-VAR's changes).

Changes from VAR: no AdaLN (plain pre-LN blocks, a plain LayerNorm before the head), 2D rotary
position embeddings aligned across scales instead of absolute position tables, and a condition
prefix instead of a class token. Kept from VAR: L2-normalised q/k with a learned per-head
temperature (scale 1), per-level embedding, q/v biases without a k bias, tanh-GELU MLP, VAR's
initialisation.

Sequence layout (N_c = p_K² condition tokens, L = Σ p_k² token positions):

    [ condition prefix (N_c) | d (1): SOS, predicts scale 1 | scale 2 … K inputs (L − 1) ]

The mask is block-causal over levels: prefix = level −1, d and scale 1 = level 0, scale k = level
k − 1; a query sees every key of a level ≤ its own. Logits are read at the last L positions.
Inference runs one scale per step with a KV cache (keys cached already rotated); it equals the
masked full-sequence forward.

Cross-attention conditioning (``cross=True``, the RestoreVAR family): the condition tokens are not in the
sequence (N_c = 0 above); every block ends with a zero-gain cross-attention to them (RestoreVAR's block order:
self-attention → FFN → cross-attention), queries rotated at their own positions and keys at the condition
grid's (:mod:`hsivar.models.cross_attention`). The SOS token d is then the caller's start embedding.

Aligned conditioning (``TransformerConfig.aligned_condition``, on in the tiny and small presets):
the prefix grid P(c) (p_K × p_K tokens) is also area-pooled to p_k × p_k and added to the tokens
that predict scale k (the SOS gets its mean). Attention alone lets a small, briefly trained
transformer ignore the prefix and learn only the token marginals — every input then restores to
the same mean image; the added grid puts the condition at the matching place of every scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hsivar.config import TransformerConfig, VQVAEConfig
from hsivar.models.cross_attention import CrossAttention
from hsivar.models.quant import MultiScaleQuantizer
from hsivar.models.rope import apply_rope, grid_positions, rope_angles


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's residual branch with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class SelfAttention(nn.Module):
    """Multi-head attention with L2-normalised q/k, learned temperature, 2D RoPE and a KV cache."""

    def __init__(self, width: int, heads: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width), persistent=False)
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100)
        self.register_buffer("one_1H11", torch.ones(1, heads, 1, 1), persistent=False)  # k's temperature
        self.proj = nn.Linear(width, width)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)
        self.caching = False
        self.cached_k: torch.Tensor | None = None
        self.cached_v: torch.Tensor | None = None

    def kv_caching(self, enable: bool) -> None:
        """Turn the KV cache on or off; either way the cache is emptied."""
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x_BNC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, C); cos/sin (N, d/2) for these tokens; mask (N, N_keys) bool (True = attend) or None."""
        B, N, C = x_BNC.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = F.linear(x_BNC, self.mat_qkv.weight, bias).view(B, N, 3, self.heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        # q and k together, each op once for both: L2-normalised, q times its learned temperature (k times 1,
        # exactly), rotated; the same values as one at a time, in half the kernels
        temp_21H11 = torch.cat([self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp(), self.one_1H11])[:, None]
        qk = F.normalize(qkv[:2], dim=-1)  # under autocast bf16 on a CPU, fp32 on a GPU (its norm runs in fp32)
        q, k = apply_rope(qk.mul(temp_21H11), cos, sin).unbind(0)
        k, v = k.to(qk.dtype), qkv[2]  # k (and so the cache) in the dtype it has when rotated alone
        if self.caching:
            if self.cached_k is not None:
                k = torch.cat([self.cached_k, k], dim=2)
                v = torch.cat([self.cached_v, v], dim=2)
            self.cached_k, self.cached_v = k, v
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
            dropout_p=self.attn_drop if self.training else 0.0, scale=1.0,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class FFN(nn.Module):
    """fc1 (C → r·C) → GELU(tanh) → fc2 (→ C)."""

    def __init__(self, width: int, mlp_ratio: float, drop: float) -> None:
        super().__init__()
        hidden = round(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


Memory = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""What cross-attention reads: condition tokens (B, M, C) and their RoPE cos / sin (M, d/2)."""


class Block(nn.Module):
    """Pre-LN transformer block: x += attn(ln1(x)); x += ffn(ln2(x)) (no AdaLN); with ``cross``, then
    x += gain·cross(x, memory) (RestoreVAR's order; the gain starts at 0)."""

    def __init__(self, cfg: TransformerConfig, drop_path_rate: float, cross: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.attn = SelfAttention(cfg.width, cfg.heads, cfg.attn_drop_rate, cfg.drop_rate)
        self.ln2 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.ffn = FFN(cfg.width, cfg.mlp_ratio, cfg.drop_rate)
        self.cross = CrossAttention(cfg.width, cfg.heads) if cross else None
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, memory: Memory | None = None) -> torch.Tensor:
        """x (B, N, C); cos/sin (N, d/2); mask (N, N_keys) or None; memory: the cross-attention's (with ``cross``)."""
        x = x + drop_path(self.attn(self.ln1(x), cos, sin, mask), self.drop_path_rate, self.training)
        x = x + drop_path(self.ffn(self.ln2(x)), self.drop_path_rate, self.training)
        if self.cross is not None:
            if memory is None:
                raise ValueError("a cross-attention block needs the condition tokens (memory)")
            m, m_cos, m_sin = memory
            x = x + drop_path(self.cross(x, m, (cos, sin), (m_cos, m_sin)), self.drop_path_rate, self.training)
        return x


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen at inference: greedy (argmax) by default, else seeded top-k / top-p."""

    greedy: bool = True
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 0.0  # keep the smallest set with probability ≥ top_p (0: all)
    temperature: float = 1.0


def sample_tokens(logits_BlV: torch.Tensor, sampling: Sampling,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per position; logits (B, l, V) → indices (B, l) int64."""
    if sampling.greedy:
        return logits_BlV.argmax(dim=-1)
    logits = logits_BlV.float() / max(sampling.temperature, 1e-6)
    V = logits.shape[-1]
    if 0 < sampling.top_k < V:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if 0.0 < sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= 1 - sampling.top_p
        drop_sorted[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -torch.inf)
    probs = logits.softmax(dim=-1).flatten(0, -2)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


GREEDY = Sampling()
"""The default: argmax decoding."""


@dataclass
class Generation:
    """Result of autoregressive decoding."""

    idx: list[torch.Tensor]  # K tensors (B, p_k²) int64
    f_hat: torch.Tensor  # (B, Cvae, h, w) accumulated latent f̂_K
    hidden_last: torch.Tensor  # (B, p_K², C) normed hidden states at the last scale
    hidden: torch.Tensor | None = None  # (B, L, C) normed hidden states of every scale (keep_hidden), else None
    scales: torch.Tensor | None = None  # (B, K, Cvae, h, w) each scale's contribution to f̂_K (keep_scales), else None


def _graph_limits(graphs: int) -> AbstractContextManager:
    """Dynamo's limits on graphs kept per compiled function raised to at least ``graphs`` (a context; the limits'
    names changed in torch 2.7: ``recompile_limit`` was ``cache_size_limit``)."""
    config = torch._dynamo.config
    names = [("recompile_limit", "cache_size_limit"), ("accumulated_recompile_limit", "accumulated_cache_size_limit")]
    limits = {}
    for new, old in names:
        name = new if hasattr(config, new) else old
        limits[name] = max(int(getattr(config, name)), graphs)
    return config.patch(**limits)


class NextScaleTransformer(nn.Module):
    """Block-causal next-scale transformer; see the module docstring for the sequence layout."""

    def __init__(self, cfg: TransformerConfig, vq: VQVAEConfig, cross: bool = False) -> None:
        """The transformer for ``vq``'s scales; ``cross``: condition by cross-attention instead of a prefix."""
        super().__init__()
        self.cfg, self.patch_nums, self.cross = cfg, tuple(vq.patch_nums), cross
        K, C = len(self.patch_nums), cfg.width
        self.num_prefix = 0 if cross else vq.latent_size**2
        self.L = sum(p * p for p in self.patch_nums)
        self.vocab_size = vq.vocab_size
        self.word_embed = nn.Linear(vq.z_channels, C)
        self.lvl_embed = nn.Embedding(K + 1, C)  # levels 0…K−1: scales; K: the condition prefix
        dpr = [cfg.resolved_drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([Block(cfg, r, cross) for r in dpr])
        self.head_nm = nn.LayerNorm(C, eps=1e-6)
        self.head = nn.Linear(C, vq.vocab_size)

        # Geometry of the whole sequence (buffers, not weights: derived from the config).
        G = self.patch_nums[-1]
        pos = ([] if cross else [grid_positions(G, G)]) + [grid_positions(p, G) for p in self.patch_nums]
        angles = rope_angles(torch.cat(pos), cfg.head_dim, cfg.rope_theta)  # (N_c + L, d/2)
        levels = torch.cat([torch.full((self.num_prefix,), -1)]
                           + [torch.full((p * p,), k) for k, p in enumerate(self.patch_nums)])
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        mem_angles = rope_angles(grid_positions(G, G), cfg.head_dim, cfg.rope_theta)  # (G², d/2): the condition grid
        self.register_buffer("rope_mem_cos", mem_angles.cos(), persistent=False)
        self.register_buffer("rope_mem_sin", mem_angles.sin(), persistent=False)
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("mask", levels[:, None] >= levels[None, :], persistent=False)
        self.init_weights()
        self._compiled_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None
        self._compiled_batch_sizes = 0

    def compile_steps(self, enable: bool = True, *, mode: str | None = "auto", backend: str = "inductor",
                      batch_sizes: int = 16) -> None:
        """Decode (:meth:`generate` with the KV cache) through ``torch.compile``'d steps, or eagerly again.

        Each scale's step has static shapes (its p_k² tokens, the cached keys of the scales before it), so it
        compiles to one graph per scale and batch size; with ``mode="reduce-overhead"`` on a GPU each is a CUDA
        graph, which replaces the per-kernel launches that bound the 10-scale loop at small batches. The first
        decoding of each batch size pays the compilation. Outputs equal the eager steps' (tested with
        ``backend="eager"``, which traces without generating code).

        Args:
            mode: inductor's mode; ``"auto"``: ``"reduce-overhead"`` (CUDA graphs) when the parameters are on a
                GPU, else ``"default"``; None for other backends.
            batch_sizes: how many distinct batch sizes the caller decodes (classifier-free guidance doubles a
                batch: count both); dynamo keeps that many graphs per scale, beyond which it would fall back to
                eager steps without a word.
        """
        if mode == "auto":
            mode = "reduce-overhead" if next(self.parameters()).device.type == "cuda" else "default"
        self._compiled_step = torch.compile(self.step, mode=mode, backend=backend, dynamic=False) if enable else None
        self._compiled_batch_sizes = batch_sizes if enable else 0

    def init_weights(self) -> None:
        """VAR's initialisation: trunc-normal std √(1/3C); head ×0.02; residual projections /√(2·depth)."""
        std = math.sqrt(1 / self.cfg.width / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.head.weight.mul_(0.02)
            for b in self.blocks:
                b.attn.proj.weight.div_(math.sqrt(2 * self.cfg.depth))
                b.ffn.fc2.weight.div_(math.sqrt(2 * self.cfg.depth))

    def _lvl(self, level: int) -> torch.Tensor:
        return self.lvl_embed.weight[level]

    def memory(self, prefix_BNC: torch.Tensor | None) -> Memory | None:
        """The cross-attention's input: the condition tokens (B, N_c, C) plus the condition level, with their RoPE
        tables; None without ``cross``."""
        if not self.cross or prefix_BNC is None:
            return None
        return prefix_BNC + self._lvl(len(self.patch_nums)), self.rope_mem_cos, self.rope_mem_sin

    def scale_condition(self, prefix_BNC: torch.Tensor, k: int) -> torch.Tensor | float:
        """The prefix grid area-pooled to scale k, (B, N_c, C) → (B, p_k², C), added to the tokens
        that predict scale k; 0 when ``aligned_condition`` is off."""
        if not self.cfg.aligned_condition:
            return 0.0
        B, N, C = prefix_BNC.shape
        G, p = self.patch_nums[-1], self.patch_nums[k]
        grid_BCGG = prefix_BNC.transpose(1, 2).reshape(B, C, G, G)
        return F.adaptive_avg_pool2d(grid_BCGG, p).flatten(2).transpose(1, 2)

    def next_scale_tokens(self, prefix_BNC: torch.Tensor, x_BlCv: torch.Tensor, k: int) -> torch.Tensor:
        """Embedded inputs that predict scale k ≥ 1: W(x) + level k (+ aligned condition); (B, p_k², C)."""
        return (self.word_embed(x_BlCv.to(self.word_embed.weight.dtype)) + self._lvl(k)
                + self.scale_condition(prefix_BNC, k))

    def embed_sequence(self, prefix_BNC: torch.Tensor, d_BC: torch.Tensor,
                       x_BLCv: torch.Tensor | None) -> torch.Tensor:
        """Tokens of the full sequence; prefix (B,N_c,C), d (B,C), inputs (B,L−1,Cvae) → (B,N_c+L,C).

        Without inputs (generation) only the prefix and the SOS token d are embedded.
        """
        K = len(self.patch_nums)
        sos = (d_BC + self._lvl(0)).unsqueeze(1) + self.scale_condition(prefix_BNC, 0)
        parts = [sos] if self.cross else [prefix_BNC + self._lvl(K), sos]
        if x_BLCv is not None:
            start = 0
            for k, p in enumerate(self.patch_nums[1:], start=1):
                parts.append(self.next_scale_tokens(prefix_BNC, x_BLCv[:, start:start + p * p], k))
                start += p * p
        return torch.cat(parts, dim=1)

    def forward(self, prefix_BNC: torch.Tensor, d_BC: torch.Tensor,
                x_BLCv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced forward over the whole sequence.

        Args:
            prefix_BNC: (B, N_c, C) condition tokens (the prefix, or the cross-attention's memory).
            d_BC: (B, C) degradation embedding (the SOS token).
            x_BLCv: (B, L − 1, Cvae) teacher-forcing inputs of scales 2…K.
        Returns:
            logits (B, L, V) float32 and normed hidden states (B, L, C).
        """
        h, memory = self.embed_sequence(prefix_BNC, d_BC, x_BLCv), self.memory(prefix_BNC)
        for b in self.blocks:
            h = b(h, self.rope_cos, self.rope_sin, self.mask, memory)
        h = self.head_nm(h[:, self.num_prefix:])
        return self.head(h).float(), h

    def set_kv_caching(self, enable: bool) -> None:
        """Enable (and empty) or disable the KV cache of every block (and of its cross-attention's condition)."""
        for b in self.blocks:
            b.attn.kv_caching(enable)
            if b.cross is not None:
                b.cross.kv_caching(enable)

    def step(self, tokens_BnC: torch.Tensor, start: int, prefix_BNC: torch.Tensor | None = None) -> torch.Tensor:
        """Run one chunk of the sequence through the cached blocks.

        Args:
            tokens_BnC: (B, n, C) embedded tokens at sequence positions [start, start + n).
            start: position of the first token (0 for the prefix chunk).
            prefix_BNC: (B, N_c, C) the condition tokens, with ``cross`` (with the KV cache on, the cross-attention
                projects them at the first step only: they are the same at every scale).
        Returns:
            normed hidden states (B, n, C).
        """
        end = start + tokens_BnC.shape[1]
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        # Only the first chunk needs a mask (the prefix must not see d); later chunks see everything cached.
        mask = self.mask[start:end, :end] if start == 0 else None
        h, memory = tokens_BnC, self.memory(prefix_BNC)
        for b in self.blocks:
            h = b(h, cos, sin, mask, memory)
        return self.head_nm(h)

    def recompute(self, tokens_BnC: torch.Tensor, prefix_BNC: torch.Tensor | None = None) -> torch.Tensor:
        """The whole sequence so far through the masked blocks, no cache; (B, n, C) → normed hidden (B, n, C).
        ``prefix_BNC``: as in :meth:`step`."""
        n = tokens_BnC.shape[1]
        h, memory = tokens_BnC, self.memory(prefix_BNC)
        for b in self.blocks:
            h = b(h, self.rope_cos[:n], self.rope_sin[:n], self.mask[:n, :n], memory)
        return self.head_nm(h)

    @torch.no_grad()
    def generate(self, prefix_BNC: torch.Tensor, d_BC: torch.Tensor, quantizer: MultiScaleQuantizer,
                 sampling: Sampling = GREEDY, generator: torch.Generator | None = None,
                 d_uncond_BC: torch.Tensor | None = None, cfg_scale: float = 0.0,
                 kv_cache: bool = True, keep_hidden: bool = False, keep_scales: bool = False) -> Generation:
        """Autoregressive next-scale decoding, one scale per step.

        Args:
            prefix_BNC: (B, N_c, C) condition tokens; d_BC: (B, C) degradation embedding.
            quantizer: the VQ-VAE's quantiser (codebook and φ build each next scale's input).
            d_uncond_BC: with ``cfg_scale > 0``, classifier-free guidance: a second, unconditional
                pass with this embedding, logits (1 + t)·cond − t·uncond, t = cfg_scale·k/(K−1).
            kv_cache: feed only the new scale's tokens and attend to cached keys/values (default);
                False recomputes the whole sequence at every scale (same result, for benchmarks).
            keep_hidden: also return every scale's hidden states (``Generation.hidden``, RestoreVAR's refiner).
            keep_scales: also return each scale's upsampled residual, f̂_k − f̂_{k−1} (``Generation.scales``,
                VarFormer's prior).
        """
        B, K = prefix_BNC.shape[0], len(self.patch_nums)
        guided = d_uncond_BC is not None and cfg_scale > 0
        if guided:
            prefix_BNC = torch.cat([prefix_BNC, prefix_BNC])
            d_BC = torch.cat([d_BC, d_uncond_BC])
        G = self.patch_nums[-1]
        f_hat = prefix_BNC.new_zeros(B, quantizer.Cvae, G, G, dtype=torch.float32)
        tokens = self.embed_sequence(prefix_BNC, d_BC, None)
        seq, pos, idx_all, hidden, scales = tokens, 0, [], [], []
        memory = prefix_BNC if self.cross else None
        step = self._compiled_step if kv_cache and self._compiled_step is not None else self.step
        # one compiled graph per scale and batch size: dynamo may keep them all, during this call only
        graphs = _graph_limits(len(self.patch_nums) * self._compiled_batch_sizes) \
            if step is not self.step else nullcontext()
        self.set_kv_caching(kv_cache)
        try:
            with graphs:
                for si, pn in enumerate(self.patch_nums):
                    if kv_cache:
                        h = step(tokens, pos, memory)
                        pos += tokens.shape[1]
                    else:
                        h = self.recompute(seq, memory)
                    h = h[:, -pn * pn:]
                    if keep_hidden:
                        hidden.append(h[:B])
                    logits = self.head(h).float()
                    if guided:
                        t = cfg_scale * si / max(K - 1, 1)
                        logits = (1 + t) * logits[:B] - t * logits[B:]
                    idx = sample_tokens(logits, sampling, generator)
                    idx_all.append(idx)
                    before = f_hat
                    f_hat, nxt = quantizer.next_input(si, f_hat, idx)
                    if keep_scales:
                        scales.append(f_hat - before)
                    if nxt is None:
                        return Generation(idx_all, f_hat, h[:B], torch.cat(hidden, dim=1) if keep_hidden else None,
                                          torch.stack(scales, dim=1) if keep_scales else None)
                    if guided:
                        nxt = torch.cat([nxt, nxt])
                    tokens = self.next_scale_tokens(prefix_BNC, nxt, si + 1)
                    seq = torch.cat([seq, tokens], dim=1)
        finally:
            self.set_kv_caching(False)
        raise AssertionError("unreachable: the loop returns at the last scale")
