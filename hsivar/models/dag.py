"""Degradation-aware guidance (DAG): the task embedding that opens the sequence.

Six task embeddings d_i, one basal embedding d_basic and learnable λ_i give
``d = Σ_i w_i·(d_i + λ_i·d_basic)`` for task weights w (one-hot for a known task, a convex mixture
for combined degradations, or the softmax of a light classifier for ``task="auto"``). d is the SOS
token, so the whole restoration is one forward pass per scale.

Classic classifier-free guidance is kept as an inference option for comparison: training drops the
task to d_basic alone with probability ``cond_drop_rate``, and CFG runs a second, unconditional pass
with d_basic, doubling the batch.

The classifier is a three-layer CNN on the degraded tile itself (B, C, H, W), pooled to per-channel
mean and standard deviation (B, 2k). The degradations differ in local statistics (noise energy,
zeroed voxels or bands, blockiness, missing high frequencies), which the tile keeps and the condition
latent c does not: E_con is trained to make c look clean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hsivar.config import DAGConfig


@dataclass(frozen=True)
class AutoAmong:
    """``task="auto"`` among some families only: the classifier's softmax over ``tasks``, the others weigh 0.
    The restoration path uses it once the cube's own observation rules families out
    (:meth:`hsivar.degrade.observation.Observation.plausible_tasks`)."""

    tasks: tuple[str, ...]


TaskSpec = str | Mapping[str, float] | torch.Tensor | AutoAmong
"""A task name, ``"auto"``, ``"auto"`` among some families (:class:`AutoAmong`), a {task: weight} mixture, or task
weights (B, N)."""


class DegradationGuidance(nn.Module):
    """Task embeddings, d_basic, λ and the task classifier; builds d (B, width)."""

    def __init__(self, cfg: DAGConfig, width: int, bands: int) -> None:
        super().__init__()
        self.tasks = tuple(cfg.tasks)
        n = len(self.tasks)
        std = (1 / width / 3) ** 0.5
        self.task_embed = nn.Parameter(torch.randn(n, width) * std)
        self.basic = nn.Parameter(torch.randn(width) * std)
        self.lambdas = nn.Parameter(torch.full((n,), float(cfg.lambda_init)))
        k = cfg.classifier_hidden
        self.features = nn.Sequential(
            nn.Conv2d(bands, k // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(k // 2, k, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(k, k, 3, stride=2, padding=1), nn.GELU(),
        )
        self.head = nn.Sequential(nn.LayerNorm(2 * k), nn.Linear(2 * k, k), nn.GELU(), nn.Linear(k, n))

    def classify(self, lq01_BCHW: torch.Tensor) -> torch.Tensor:
        """Task logits of degraded tiles (B, C, H, W) in the data's [0, 1] units; → (B, N).

        The CNN's features are pooled to their mean and std per channel (B, 2k). In [0, 1] a removed voxel or
        band is exactly 0, as the protocol writes it, so the CNN reads the tiles in those units rather than in
        the model's [-1, 1] range.
        """
        h = self.features(lq01_BCHW.to(self.head[1].weight.dtype)).float().flatten(2)
        return self.head(torch.cat([h.mean(-1), h.std(-1, unbiased=False)], dim=1))

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The task classifier's parameters (its CNN and head; not the embeddings or λ)."""
        return [*self.features.parameters(), *self.head.parameters()]

    def embed(self, weights_BN: torch.Tensor) -> torch.Tensor:
        """d = Σ_i w_i (d_i + λ_i d_basic); weights (B, N) → (B, width)."""
        table = self.task_embed + self.lambdas[:, None] * self.basic
        return weights_BN.to(table.dtype) @ table

    def null(self, batch: int) -> torch.Tensor:
        """The unconditional embedding d_basic for ``batch`` samples; → (B, width)."""
        return self.basic.expand(batch, -1)

    def weights(self, task: TaskSpec, lq01_BCHW: torch.Tensor, logits_BN: torch.Tensor | None = None) -> torch.Tensor:
        """Task weights (B, N) for a task spec; ``"auto"`` classifies the degraded tiles lq (B, C, H, W) in [0, 1]
        (:class:`AutoAmong`: among its families only), or uses ``logits_BN``, the classifier's logits of these tiles
        when the caller already has them (:meth:`classify`).

        Raises:
            ValueError: unknown task name, negative or all-zero mixture weights, wrong tensor shape.
        """
        B, n = lq01_BCHW.shape[0], len(self.tasks)
        if isinstance(task, torch.Tensor):
            if task.shape != (B, n):
                raise ValueError(f"task weights must have shape ({B}, {n}), got {tuple(task.shape)}")
            return task.to(lq01_BCHW.device, torch.float32)
        if isinstance(task, AutoAmong):
            unknown = [t for t in task.tasks if t not in self.tasks]
            if unknown or not task.tasks:
                raise ValueError(f"auto among {list(task.tasks)}: expected some of {', '.join(self.tasks)}")
            allowed = torch.tensor([t in task.tasks for t in self.tasks], device=lq01_BCHW.device)
            logits = self.classify(lq01_BCHW) if logits_BN is None else logits_BN
            logits = logits.float().masked_fill(~allowed, float("-inf"))
            return F.softmax(logits, dim=-1)
        if isinstance(task, str):
            if task == "auto":
                return F.softmax(self.classify(lq01_BCHW) if logits_BN is None else logits_BN, dim=-1)
            task = {task: 1.0}
        w = torch.zeros(n, device=lq01_BCHW.device)
        for name, value in task.items():
            if name not in self.tasks:
                raise ValueError(f"unknown task {name!r}; expected 'auto' or one of {', '.join(self.tasks)}")
            if value < 0:
                raise ValueError(f"task weight for {name!r} is negative ({value})")
            w[self.tasks.index(name)] = float(value)
        if w.sum() <= 0:
            raise ValueError("task mixture weights sum to zero")
        return (w / w.sum()).expand(B, n)
