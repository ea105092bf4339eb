"""Tiles of a scene and their blending: coverage, padding, no seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsivar.tiling import TileBlender, blend_window, pad_to_tile, tile_grid, tile_starts


def cut_tiles(x: torch.Tensor, tile: int, overlap: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The tiles (n, C, tile, tile) of x (C, H, W) at the corners of :func:`tile_grid`, and the corners."""
    xp = pad_to_tile(x, tile)
    coords = tile_grid(x.shape[1], x.shape[2], tile, overlap)
    return torch.stack([xp[:, r:r + tile, c:c + tile] for r, c in coords]), coords


def test_tile_starts_cover_the_length_with_the_last_tile_flush() -> None:
    assert tile_starts(70, 32, 8) == [0, 24, 38]
    assert tile_starts(20, 32, 8) == [0] and tile_starts(32, 32, 8) == [0]
    for length, tile, overlap in [(100, 32, 8), (33, 32, 0), (257, 64, 16)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] == length - tile
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # overlap at least `overlap`


def test_window_is_positive_and_flat_inside() -> None:
    w = blend_window(32, 8)
    assert w.shape == (32, 32) and w.min() > 0
    assert torch.equal(w[8:24, 8:24], torch.ones(16, 16))
    assert torch.equal(blend_window(16, 0), torch.ones(16, 16))


@pytest.mark.parametrize("shape", [(3, 70, 45), (2, 20, 13), (1, 32, 33)])
def test_cut_then_blend_is_the_identity(shape: tuple[int, int, int]) -> None:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    tiles, coords = cut_tiles(x, 32, 8)
    assert tiles.shape == (len(coords), shape[0], 32, 32)
    assert coords == tile_grid(shape[1], shape[2], 32, 8)
    blender = TileBlender(*shape, 32, 8)
    blender.add(coords[:2], tiles[:2])  # batch by batch
    blender.add(coords[2:], tiles[2:])
    np.testing.assert_allclose(blender.result().numpy(), x.numpy(), atol=1e-6)


def test_per_tile_offsets_blend_without_seams() -> None:
    """Tiles offset by 0, 1, 2, …: a hard seam would jump by ≥ 1 between neighbouring pixels."""
    tiles, coords = cut_tiles(torch.zeros(1, 70, 45), 32, 8)
    blender = TileBlender(1, 70, 45, 32, 8)
    blender.add(coords, tiles + torch.arange(len(coords), dtype=torch.float32)[:, None, None, None])
    out = blender.result()[0]
    assert max(float(out.diff(dim=0).abs().max()), float(out.diff(dim=1).abs().max())) < 1.0


def test_small_sides_are_padded_by_reflection_or_replication() -> None:
    x = torch.arange(2 * 20 * 25, dtype=torch.float32).reshape(2, 20, 25)
    p = pad_to_tile(x, 32)
    assert p.shape == (2, 32, 32) and torch.equal(p[:, :20, :25], x)
    assert torch.equal(p[:, 20, :25], x[:, 18, :])  # reflect about the last row
    narrow = torch.arange(2 * 4, dtype=torch.float32).reshape(1, 2, 4)
    q = pad_to_tile(narrow, 32)  # too small to reflect: replicate the last row / column
    assert q.shape == (1, 32, 32) and torch.equal(q[0, 31, :4], narrow[0, 1])
    assert torch.equal(q[0, 0, 31:], narrow[0, 0, 3:])
    assert pad_to_tile(x, 16) is x  # sides ≥ the tile: untouched
