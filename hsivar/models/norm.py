"""Group normalisation that keeps a low-precision activation in its precision under autocast.

CUDA autocast lists ``group_norm`` among the ops it runs in fp32. In the VQ-VAE's encoder and decoder every
normalisation sits between two bf16 convolutions (norm → SiLU → conv), so under autocast each one casts its bf16
input up to an fp32 copy twice its size, normalises it in fp32, the SiLU after it runs in fp32 too, and the next
convolution casts the result back down: at 256² with 160 channels that is about 3.4× the memory traffic of the same
steps in bf16, and two cast kernels, for a value the convolution reads in bf16 anyway. The CUDA (and CPU) kernel
of ``group_norm`` accumulates its mean and variance in fp32 whatever its input's type, so here, when autocast is on
and the input is already in autocast's dtype, the norm runs on it directly (its affine weight and bias cast to that
dtype) and returns that dtype. Outside autocast, for an input in another dtype, or where a gradient flows through it
(the modules a training stage trains), it is :class:`torch.nn.GroupNorm`. Frozen modules that a training stage runs
without gradients under autocast (stage 2's target tokens, stage 3's greedy decoding) take the bf16 path, as the
restoration does.
Parameters and their names are nn.GroupNorm's, so checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` over (B, C, *) that, under autocast, keeps an input already in autocast's dtype
    in that dtype when no gradient flows through it (statistics still accumulate in fp32 inside the kernel);
    ``low_precision`` False restores autocast's own fp32 policy (a comparison, e.g. :func:`autocast_policy_norms`)."""

    low_precision: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *) → (B, C, *): the dtype of ``x`` under autocast when it is autocast's dtype, else nn.GroupNorm's."""
        kind = x.device.type
        if (self.low_precision and x.dtype != torch.float32 and torch.amp.is_autocast_available(kind)
                and torch.is_autocast_enabled(kind) and x.dtype == torch.get_autocast_dtype(kind)
                and not self._differentiated(x)):
            with torch.autocast(kind, enabled=False):
                weight = None if self.weight is None else self.weight.to(x.dtype)
                bias = None if self.bias is None else self.bias.to(x.dtype)
                return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        return super().forward(x)

    def _differentiated(self, x: torch.Tensor) -> bool:
        """Whether a gradient will flow through this call (training keeps autocast's fp32 policy)."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))


@contextmanager
def autocast_policy_norms(model: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`GroupNorm` of ``model`` follows autocast's fp32 policy (what nn.GroupNorm
    does): the reference a test or a benchmark compares the low-precision norms against."""
    norms = {m: m.low_precision for m in model.modules() if isinstance(m, GroupNorm)}
    for m in norms:
        m.low_precision = False
    try:
        yield
    finally:
        for m, before in norms.items():
            m.low_precision = before
