"""Tiles of a scene and their seamless blending.

The model restores square S×S tiles. A scene (C, H, W) is covered by overlapping tiles (stride
S − overlap, the last tile flush with the border, see :func:`tile_starts`); sides shorter than S are
padded (:func:`pad_to_tile`). Restored tiles are blended back with a separable raised-cosine window
normalised by the summed weights (:class:`TileBlender`), so there are no seams and a pixel covered by
one tile only keeps that tile's value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets (pixels) covering [0, length) with tiles of ``tile`` pixels overlapping by ≥ ``overlap``.

    A length shorter than one tile gets the single start 0 (the side is padded to the tile).
    """
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners (row, col) in pixels of the tiles covering a (max(H, tile), max(W, tile)) image,
    row by row: the order in which tiles are restored, batched and seeded."""
    return [(r, c) for r in tile_starts(max(height, tile), tile, overlap)
            for c in tile_starts(max(width, tile), tile, overlap)]


def blend_window(tile: int, overlap: int) -> torch.Tensor:
    """Separable blending weights (tile, tile) float32: raised-cosine ramps over ``overlap`` pixels per edge, 1 inside.

    The ramp never reaches 0 (its first value is sin²(π/(4·overlap))), so a pixel covered by one tile
    only keeps a positive weight; blending divides by the summed weights.
    """
    w = torch.ones(tile, dtype=torch.float64)
    if overlap > 0:
        ramp = torch.sin(math.pi / 2 * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
        w[:overlap] = ramp
        w[tile - overlap:] = torch.minimum(w[tile - overlap:], ramp.flip(0))
    return (w[:, None] * w[None, :]).float()


def pad_to_tile(x: torch.Tensor, tile: int) -> torch.Tensor:
    """x (C, H, W) with sides smaller than ``tile`` padded at the bottom/right to ``tile`` pixels (reflect;
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
        """A blender for a (channels, height, width) cube restored in ``tile``-pixel tiles overlapping by
        ``overlap`` pixels."""
        self.height, self.width, self.tile = height, width, tile
        self.window = blend_window(tile, overlap).to(device)
        self.acc = torch.zeros(channels, max(height, tile), max(width, tile), device=device)
        self.weight = torch.zeros(self.acc.shape[1:], device=device)

    def add(self, coords: list[tuple[int, int]], outputs: torch.Tensor) -> None:
        """Add outputs (b, C, tile, tile) of the tiles starting at ``coords`` (b (row, col) pairs, pixels)."""
        S = self.tile
        for (r, c), out in zip(coords, outputs):
            self.acc[:, r:r + S, c:c + S] += out * self.window
            self.weight[r:r + S, c:c + S] += self.window

    def result(self) -> torch.Tensor:
        """The blended cube (C, height, width) float32."""
        return (self.acc / self.weight)[:, :self.height, :self.width]
