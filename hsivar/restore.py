"""Inference engine: a published model restores cubes (C, H, W) of any spatial size.

The model works on S×S tiles (S = ``cfg.vqvae.image_size``). A scene is cut into overlapping tiles
(stride S − overlap, the last tile flush with the border), tiles are restored in batches, and the
results are blended with a separable raised-cosine window normalised by the summed weights, so
there are no seams. Scenes smaller than a tile are reflect-padded. Values are min–max normalised per
cube to [0, 1] (the model's range) and mapped back to the input's units afterwards.

Greedy decoding is the default (restoration wants fidelity). With seeded top-k / top-p sampling,
``samples = N`` runs N decodings and returns their mean and per-pixel standard deviation (an
uncertainty map). On CUDA the transformer and convolutions run under bf16 autocast; the quantiser
stays fp32.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from hsivar.models.dag import TaskSpec
from hsivar.models.hsivar import HSIVAR, Guidance
from hsivar.models.var import Sampling
from hsivar.publish import load_published


class RestoreInputError(ValueError):
    """The cube cannot be restored by this model (wrong shape or band count, non-finite values)."""


@dataclass
class Restoration:
    """A restored cube, in the input's units."""

    cube: np.ndarray  # (C, H, W) float32
    std: np.ndarray | None  # (C, H, W) float32 per-pixel std over samples (samples > 1), else None
    task_weights: dict[str, float]  # mean task weights over tiles (the classifier's for "auto")
    tiles: int
    seconds: float


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of ``tile`` pixels overlapping by ≥ ``overlap``."""
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_window(tile: int, overlap: int) -> torch.Tensor:
    """Separable blending weights (tile, tile): raised-cosine ramps over ``overlap`` pixels per edge, 1 inside.

    The ramp never reaches 0 (its first value is sin²(π/(4·overlap))), so a pixel covered by one tile
    only keeps a positive weight; blending divides by the summed weights.
    """
    w = torch.ones(tile, dtype=torch.float64)
    if overlap > 0:
        ramp = torch.sin(math.pi / 2 * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
        w[:overlap] = ramp
        w[tile - overlap:] = torch.minimum(w[tile - overlap:], ramp.flip(0))
    return (w[:, None] * w[None, :]).float()


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of the tiles covering a (max(H, tile), max(W, tile)) image."""
    return [(r, c) for r in tile_starts(max(height, tile), tile, overlap)
            for c in tile_starts(max(width, tile), tile, overlap)]


def pad_to_tile(x: torch.Tensor, tile: int) -> torch.Tensor:
    """x (C, H, W) with sides smaller than ``tile`` padded at the bottom/right to ``tile`` (reflect;
    replicate where the side is too small to reflect); larger sides are left as they are."""
    C, H, W = x.shape
    pad_h, pad_w = max(tile - H, 0), max(tile - W, 0)
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < H and pad_w < W else "replicate"
    return F.pad(x[None], (0, pad_w, 0, pad_h), mode=mode)[0]


class TileBlender:
    """Accumulates tile outputs into a (C, height, width) cube, batch by batch.

    Every pixel of :meth:`result` is the :func:`blend_window`-weighted mean of the outputs of the tiles
    covering it; only the cube-sized sums are held, never all tiles at once.
    """

    def __init__(self, channels: int, height: int, width: int, tile: int, overlap: int,
                 device: str | torch.device = "cpu") -> None:
        self.height, self.width, self.tile = height, width, tile
        self.window = blend_window(tile, overlap).to(device)
        self.acc = torch.zeros(channels, max(height, tile), max(width, tile), device=device)
        self.weight = torch.zeros(self.acc.shape[1:], device=device)

    def add(self, coords: list[tuple[int, int]], outputs: torch.Tensor) -> None:
        """Add outputs (b, C, tile, tile) of the tiles starting at ``coords`` (b (row, col) pairs)."""
        S = self.tile
        for (r, c), out in zip(coords, outputs):
            self.acc[:, r:r + S, c:c + S] += out * self.window
            self.weight[r:r + S, c:c + S] += self.window

    def result(self) -> torch.Tensor:
        """The blended cube (C, height, width)."""
        return (self.acc / self.weight)[:, :self.height, :self.width]


def blend_tiles(x: torch.Tensor, tile: int, overlap: int, batch_size: int,
                fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of x in batches of ``batch_size`` and blend the results.

    Args:
        x: (C, H, W); sides smaller than ``tile`` are padded (:func:`pad_to_tile`).
        fn: maps a batch of tiles (b, C, tile, tile) to outputs of the same shape.
    Returns:
        (C, H, W): per pixel, the window-weighted mean of the outputs of every tile covering it.
    """
    C, H, W = x.shape
    xp = pad_to_tile(x, tile)
    coords = tile_grid(H, W, tile, overlap)
    blender = TileBlender(C, H, W, tile, overlap, x.device)
    for i in range(0, len(coords), batch_size):
        batch = coords[i:i + batch_size]
        blender.add(batch, fn(torch.stack([xp[:, r:r + tile, c:c + tile] for r, c in batch])))
    return blender.result()


class Restorer:
    """Restore whole cubes with a published HSI-VAR model."""

    def __init__(self, model: HSIVAR, device: str | torch.device = "cpu", bf16: bool | None = None) -> None:
        """Wrap ``model``; ``bf16`` defaults to True on CUDA and is ignored on CPU."""
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.bf16 = (self.device.type == "cuda") if bf16 is None else (bf16 and self.device.type == "cuda")

    @classmethod
    def from_published(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> Restorer:
        """Load a published model directory (safetensors + config.json; nothing is unpickled)."""
        model, _ = load_published(directory, device="cpu")
        return cls(model, device)

    @property
    def bands(self) -> int:
        """Band count C the model restores."""
        return self.cfg.vqvae.bands

    @property
    def tile(self) -> int:
        """Tile side S in pixels."""
        return self.cfg.vqvae.image_size

    def autocast(self) -> AbstractContextManager:
        """The context the model runs in: bf16 autocast on CUDA when ``bf16``, else a no-op."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def restore(self, cube: np.ndarray | torch.Tensor, task: TaskSpec = "auto", *, overlap: int | None = None,
                tile: int | None = None, batch_size: int = 8, samples: int = 1, seed: int = 0,
                sampling: Sampling | None = None, guidance: Guidance = "dag", cfg_scale: float = 1.5,
                value_range: tuple[float, float] | None = None, refine: bool = True) -> Restoration:
        """Restore one cube.

        Args:
            cube: (C, H, W) in any units; C must equal the model's band count.
            task: ``"auto"``, a task name, or a {task: weight} mixture.
            overlap: tile overlap in pixels (default S/4); tile: must be None or S (the model's tile).
            batch_size: tiles per forward pass.
            samples: decodings to average; > 1 switches the default sampling to seeded top-p 0.9.
            seed: seed of the first sample (sample i uses seed + i).
            value_range: (min, max) of the units to normalise with; default the cube's own min/max.
        Returns:
            :class:`Restoration` with the cube (C, H, W) float32 in the input's units.
        Raises:
            RestoreInputError: wrong rank or band count, empty or non-finite cube, bad options.
        """
        t0 = time.perf_counter()
        x = torch.as_tensor(np.asarray(cube) if not isinstance(cube, torch.Tensor) else cube).float()
        S = self.tile
        self._validate(x, tile, samples, batch_size)
        overlap = S // 4 if overlap is None else int(overlap)
        if not 0 <= overlap < S:
            raise RestoreInputError(f"overlap must be in [0, {S}), got {overlap}")
        if sampling is None:
            sampling = Sampling() if samples == 1 else Sampling(greedy=False, top_p=0.9)
        if samples > 1 and sampling.greedy:
            raise RestoreInputError("samples > 1 needs sampling (greedy decoding gives identical samples)")

        lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
        scale = (hi - lo) if hi > lo else 1.0
        x01 = ((x - lo) / scale).to(self.device)

        task_sums: list[torch.Tensor] = []  # per batch of tiles, summed task weights

        def restore_tiles(tiles: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            with self.autocast():
                out = self.model.restore(tiles, task, sampling, gen, guidance, cfg_scale, refine)
            task_sums.append(out.task_weights.sum(0))
            return out.cube.float()

        outs = []
        for s in range(samples):
            gen = torch.Generator(device=self.device).manual_seed(seed + s)
            outs.append(blend_tiles(x01, S, overlap, batch_size, partial(restore_tiles, gen=gen)) * scale + lo)
        n_tiles = len(tile_grid(x01.shape[-2], x01.shape[-1], S, overlap))

        stack = torch.stack(outs)
        mean = stack.mean(0)
        std = stack.std(0, unbiased=False) if samples > 1 else None
        weights = (torch.stack(task_sums).sum(0) / (n_tiles * samples)).tolist()
        return Restoration(
            cube=mean.cpu().numpy().astype(np.float32),
            std=None if std is None else std.cpu().numpy().astype(np.float32),
            task_weights=dict(zip(self.model.dag.tasks, weights)),
            tiles=n_tiles,
            seconds=time.perf_counter() - t0,
        )

    def _validate(self, x: torch.Tensor, tile: int | None, samples: int, batch_size: int) -> None:
        if x.ndim != 3:
            raise RestoreInputError(f"expected a cube (C, H, W), got an array of shape {tuple(x.shape)}")
        C, H, W = x.shape
        if C != self.bands:
            raise RestoreInputError(f"cube has {C} bands but the model restores {self.bands} bands")
        if H == 0 or W == 0:
            raise RestoreInputError(f"cube is empty (shape {tuple(x.shape)})")
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise RestoreInputError(f"cube has {bad} non-finite values (NaN/Inf)")
        if tile is not None and tile != self.tile:
            raise RestoreInputError(f"this model restores {self.tile}×{self.tile} tiles; tile={tile} is not possible")
        if samples < 1 or batch_size < 1:
            raise RestoreInputError(f"samples and batch_size must be ≥ 1 (got {samples}, {batch_size})")
