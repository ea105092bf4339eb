"""hsivar.render: false-colour band choice and rendering, Markdown tables."""

from __future__ import annotations

import numpy as np
import torch

from hsivar import render as R


def test_false_colour_band_choice() -> None:
    wl = np.arange(400, 701, 10.0)
    cube = np.broadcast_to(np.arange(31, dtype=np.float32)[:, None, None] / 40, (31, 5, 6))
    assert R.false_colour_indices(31, wl) == (24, 15, 6)  # 640, 550, 460 nm
    assert R.false_colour_indices(31) == (24, 15, 6)
    assert R.false_colour_indices(1) == (0, 0, 0)
    assert R.false_colour_indices(6, [443, 482, 561, 590, 655, 865]) == (4, 2, 0)
    rgb = R.false_colour(cube * 2, wl)
    assert rgb.shape == (3, 5, 6) and rgb.dtype == np.float32 and rgb.max() <= 1.0
    np.testing.assert_allclose(rgb[1], 2 * 15 / 40)
    np.testing.assert_array_equal(R.false_colour(torch.from_numpy(np.ascontiguousarray(cube)), wl),
                                  R.false_colour(cube, wl))


def test_markdown_table_formats_numbers_only() -> None:
    rows = [{"task": "gaussian", "psnr": 31.234}, {"task": "sr", "psnr": "n/a"}]
    table = R.markdown_table(rows, [("task", "task"), ("psnr", "PSNR (dB)")], {"psnr": ".2f"})
    assert table.splitlines() == ["| task | PSNR (dB) |", "|---|---:|", "| gaussian | 31.23 |", "| sr | n/a |"]
