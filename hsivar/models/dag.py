"""Degradation-aware guidance (DAG): the task embedding that opens the sequence.

Six task embeddings d_i, one basal embedding d_basic and learnable λ_i give
``d = Σ_i w_i·(d_i + λ_i·d_basic)`` for task weights w (one-hot for a known task, a convex mixture
for combined degradations, or the softmax of a light classifier on the condition latent for
``task="auto"``). d is the SOS token, so the whole restoration is one forward pass per scale.

Classic classifier-free guidance is kept as an inference option for comparison: training drops the
task to d_basic alone with probability ``cond_drop_rate``, and CFG runs a second, unconditional pass
with d_basic, doubling the batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hsivar.config import DAGConfig

TaskSpec = str | Mapping[str, float] | torch.Tensor
"""A task name, ``"auto"``, a {task: weight} mixture, or task weights (B, N)."""


class DegradationGuidance(nn.Module):
    """Task embeddings, d_basic, λ and the task classifier; builds d (B, width)."""

    def __init__(self, cfg: DAGConfig, width: int, z_channels: int) -> None:
        super().__init__()
        self.tasks = tuple(cfg.tasks)
        n = len(self.tasks)
        std = (1 / width / 3) ** 0.5
        self.task_embed = nn.Parameter(torch.randn(n, width) * std)
        self.basic = nn.Parameter(torch.randn(width) * std)
        self.lambdas = nn.Parameter(torch.full((n,), float(cfg.lambda_init)))
        self.classifier = nn.Sequential(
            nn.Linear(2 * z_channels, cfg.classifier_hidden), nn.GELU(), nn.Linear(cfg.classifier_hidden, n)
        )

    def classify(self, c_BChw: torch.Tensor) -> torch.Tensor:
        """Task logits from the condition latent's per-channel mean and std; (B,Cvae,h,w) → (B, N)."""
        c = c_BChw.float().flatten(2)
        return self.classifier(torch.cat([c.mean(-1), c.std(-1, unbiased=False)], dim=1))

    def embed(self, weights_BN: torch.Tensor) -> torch.Tensor:
        """d = Σ_i w_i (d_i + λ_i d_basic); weights (B, N) → (B, width)."""
        table = self.task_embed + self.lambdas[:, None] * self.basic
        return weights_BN.to(table.dtype) @ table

    def null(self, batch: int) -> torch.Tensor:
        """The unconditional embedding d_basic for ``batch`` samples; → (B, width)."""
        return self.basic.expand(batch, -1)

    def weights(self, task: TaskSpec, c_BChw: torch.Tensor) -> torch.Tensor:
        """Task weights (B, N) for a task spec; ``"auto"`` uses the classifier on c (B, Cvae, h, w).

        Raises:
            ValueError: unknown task name, negative or all-zero mixture weights, wrong tensor shape.
        """
        B, n = c_BChw.shape[0], len(self.tasks)
        if isinstance(task, torch.Tensor):
            if task.shape != (B, n):
                raise ValueError(f"task weights must have shape ({B}, {n}), got {tuple(task.shape)}")
            return task.to(c_BChw.device, torch.float32)
        if isinstance(task, str):
            if task == "auto":
                return F.softmax(self.classify(c_BChw), dim=-1)
            task = {task: 1.0}
        w = torch.zeros(n, device=c_BChw.device)
        for name, value in task.items():
            if name not in self.tasks:
                raise ValueError(f"unknown task {name!r}; expected 'auto' or one of {', '.join(self.tasks)}")
            if value < 0:
                raise ValueError(f"task weight for {name!r} is negative ({value})")
            w[self.tasks.index(name)] = float(value)
        if w.sum() <= 0:
            raise ValueError("task mixture weights sum to zero")
        return (w / w.sum()).expand(B, n)
