"""Multi-scale residual vector quantiser with one shared codebook (VAR's ``VectorQuantizer2``).

For each scale k with patch number p_k (coarse to fine) on a latent f of shape (B, Cvae, h, w),
h = w = p_K:

    z_k   = area_down(f_rest, p_k)          (the last scale uses f_rest itself)
    idx_k = argmin_v ‖z_k − e_v‖²           (squared L2, one codebook of V entries)
    h_k   = φ_k(bicubic_up(e[idx_k], h))    (φ applied after upsampling, also at the last scale)
    f̂    += h_k;   f_rest −= h_k

φ(h) = (1 − r)·h + r·conv3×3(h), r = 0.5; with ``share_quant_resi = 4`` four convs are shared and
scale k uses the one whose tick (float64 ``linspace(1/12, 11/12, 4)``) is nearest k/(K−1), which
for 10 scales gives [0,0,1,1,1,2,2,3,3,3]. The quantiser runs in fp32 with autocast disabled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hsivar.config import VQVAEConfig


class Phi(nn.Conv2d):
    """φ(h) = (1 − r)·h + r·conv3×3(h); (B, Cvae, h, w) → same."""

    def __init__(self, channels: int, resi_ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul(self.resi_ratio)


class PhiSelector(nn.Module):
    """K φ modules and VAR's rule mapping scale position k/(K_scales−1) ∈ [0,1] to one of them."""

    def __init__(self, channels: int, resi_ratio: float, count: int) -> None:
        super().__init__()
        make = (lambda: Phi(channels, resi_ratio)) if abs(resi_ratio) > 1e-6 else nn.Identity
        self.qresi_ls = nn.ModuleList([make() for _ in range(count)])
        K = count
        # VAR's ticks, in float64 so that exact ties (scale 2 of 10) break the same way.
        self.ticks = (np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4
                      else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K))

    def index(self, si: int, num_scales: int) -> int:
        """Which φ scale ``si`` of ``num_scales`` uses."""
        at = si / (num_scales - 1) if num_scales > 1 else 0.0
        return int(np.argmin(np.abs(self.ticks - at)).item())

    def forward(self, h_BChw: torch.Tensor, si: int, num_scales: int) -> torch.Tensor:
        return self.qresi_ls[self.index(si, num_scales)](h_BChw)


@dataclass
class QuantOutput:
    """Result of quantising a latent f (B, Cvae, h, w)."""

    f_hat: torch.Tensor  # (B, Cvae, h, w), straight-through: value f̂_K, gradient to f
    vq_loss: torch.Tensor  # scalar, (1/K) Σ_k [β‖sg(f̂_k) − f‖² + ‖f̂_k − sg(f)‖²]
    idx: list[torch.Tensor]  # K tensors (B, p_k²) int64
    codes_used: list[int]  # distinct codebook entries hit per scale in this batch


class MultiScaleQuantizer(nn.Module):
    """Shared-codebook residual quantiser over ``patch_nums``; see the module docstring."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.patch_nums = tuple(cfg.patch_nums)
        self.vocab_size, self.Cvae, self.beta = cfg.vocab_size, cfg.z_channels, cfg.beta
        count = cfg.share_quant_resi or len(self.patch_nums)
        self.quant_resi = PhiSelector(cfg.z_channels, cfg.quant_resi, count)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        # VAR's eini(-1): entries ~ U(-1/V, 1/V). nn.Embedding's N(0, 1) entries (norm ≈ √Cvae) sit far from
        # a fresh encoder's small latents, so one or two are nearest to every residual, the rest never get a
        # gradient and the codebook collapses; near-zero entries are picked by direction and usage spreads.
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)
        # VAR's name: EMA of codebook hits per scale, for usage monitoring only (no EMA codebook).
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), cfg.vocab_size))
        self.register_buffer("hit_updates", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def _phi(self, h: torch.Tensor, si: int) -> torch.Tensor:
        return self.quant_resi(h, si, self.num_scales)

    def _nearest(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry per cell; (B, Cvae, p, p) → (B, p²) int64."""
        B, C = z_BChw.shape[:2]
        z_NC = z_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        e_VC = self.embedding.weight.detach()
        d_NV = z_NC.square().sum(dim=1, keepdim=True) + e_VC.square().sum(dim=1)
        d_NV.addmm_(z_NC, e_VC.T, alpha=-2, beta=1)
        return d_NV.argmin(dim=1).view(B, -1)

    def _lookup_up(self, idx_Bl: torch.Tensor, si: int, size: int) -> torch.Tensor:
        """Codebook vectors of scale ``si`` upsampled (bicubic) to size×size; → (B, Cvae, size, size)."""
        pn = self.patch_nums[si]
        h = self.embedding(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.Cvae, pn, pn)
        return h if pn == size else F.interpolate(h, size=(size, size), mode="bicubic")

    def _scales(self, f_rest: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (si, idx (B,p²), h (B,Cvae,h,w)) per scale, consuming the fp32 residual ``f_rest``."""
        H = f_rest.shape[-1]
        for si, pn in enumerate(self.patch_nums):
            last = si == self.num_scales - 1
            idx = self._nearest(f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area"))
            h = self._phi(self._lookup_up(idx, si, H), si)
            f_rest = f_rest - h
            yield si, idx, h

    def forward(self, f_BChw: torch.Tensor) -> QuantOutput:
        """Quantise latent f (B, Cvae, h, w) over all scales; see :class:`QuantOutput`."""
        in_dtype = f_BChw.dtype
        with torch.autocast(device_type="cuda" if f_BChw.is_cuda else "cpu", enabled=False):
            f = f_BChw.float()
            f_no_grad = f.detach()
            f_hat = torch.zeros_like(f_no_grad)
            loss = f.new_zeros(())
            idx_all, used = [], []
            for si, idx, h in self._scales(f_no_grad.clone()):
                f_hat = f_hat + h
                loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
                idx_all.append(idx)
                used.append(self._record_hits(idx, si))
            loss = loss / self.num_scales
            f_hat = (f_hat.detach() - f_no_grad) + f  # straight-through estimator
        return QuantOutput(f_hat.to(in_dtype), loss, idx_all, used)

    def _record_hits(self, idx: torch.Tensor, si: int) -> int:
        hit_V = idx.flatten().bincount(minlength=self.vocab_size).float()
        if self.training:
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(hit_V)
            ema = self.ema_vocab_hit_SV[si]
            n = int(self.hit_updates.item()) // self.num_scales
            if n == 0:
                ema.copy_(hit_V)
            else:
                m = 0.9 if n < 100 else 0.99
                ema.mul_(m).add_(hit_V, alpha=1 - m)
            self.hit_updates += 1
        return int((hit_V > 0).sum().item())

    def usage_per_scale(self, tokens_per_step: int) -> list[float]:
        """Percent of the codebook in use per scale (VAR's rule: EMA hits ≥ 0.08·N/V).

        Args:
            tokens_per_step: last-scale tokens per step over all workers (B·h·w·world).
        """
        margin = tokens_per_step / self.vocab_size * 0.08
        return [float((row >= margin).float().mean().item() * 100) for row in self.ema_vocab_hit_SV]

    @torch.no_grad()
    def f_to_idx(self, f_BChw: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Token indices and cumulative f̂ per scale; f (B,Cvae,h,w) → ([(B,p_k²)], [(B,Cvae,h,w)])."""
        with torch.autocast(device_type="cuda" if f_BChw.is_cuda else "cpu", enabled=False):
            f_rest = f_BChw.float().clone()
            f_hat = torch.zeros_like(f_rest)
            idx_all, fhats = [], []
            for _, idx, h in self._scales(f_rest):
                f_hat = f_hat + h
                idx_all.append(idx)
                fhats.append(f_hat)
        return idx_all, fhats

    def idx_to_var_input(self, idx: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input: after each scale k < K, area_down(f̂_k, p_{k+1}) as tokens.

        Args:
            idx: K tensors (B, p_k²) of ground-truth indices.
        Returns:
            (B, L − p_1², Cvae) float32 (scale 1 has no input: the SOS token takes its place).
        """
        B, H = idx[0].shape[0], self.patch_nums[-1]
        f_hat = torch.zeros(B, self.Cvae, H, H, device=idx[0].device)
        out = []
        for si in range(self.num_scales - 1):
            f_hat = f_hat + self._phi(self._lookup_up(idx[si], si, H), si)
            pn_next = self.patch_nums[si + 1]
            out.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").flatten(2).transpose(1, 2))
        return torch.cat(out, dim=1)

    def next_input(self, si: int, f_hat: torch.Tensor,
                   idx_Bl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Autoregressive step: add scale ``si``'s tokens to f̂ and build the next scale's input.

        Args:
            si: index of the scale just predicted.
            f_hat: (B, Cvae, h, w) accumulated so far.
            idx_Bl: (B, p_si²) predicted indices.
        Returns:
            (f̂ updated, next token map (B, p_{si+1}², Cvae) or None after the last scale).
        """
        H = f_hat.shape[-1]
        f_hat = f_hat + self._phi(self._lookup_up(idx_Bl, si, H), si)
        if si == self.num_scales - 1:
            return f_hat, None
        pn = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area").flatten(2).transpose(1, 2)

    def idx_to_fhat(self, idx: list[torch.Tensor]) -> torch.Tensor:
        """f̂_K from the indices of all scales; [(B, p_k²)] → (B, Cvae, h, w)."""
        B, H = idx[0].shape[0], self.patch_nums[-1]
        f_hat = torch.zeros(B, self.Cvae, H, H, device=idx[0].device, dtype=self.embedding.weight.dtype)
        for si in range(self.num_scales):
            f_hat, _ = self.next_input(si, f_hat, idx[si])
        return f_hat
