"""False-colour renderings of hyperspectral cubes, and the figures and Markdown of restoration reports.

Plain numpy cubes and dicts in, PNG files and strings out (matplotlib only, never a window), so it runs
without Ray or MLflow:

* :func:`false_colour_indices`, :func:`false_colour` — the bands nearest 640/550/460 nm as an RGB
  image (also what :mod:`hsivar.perceptual` scores);
* :func:`metrics_figure` — the per-family table of an evaluation (degraded input vs classical
  baseline vs HSI-VAR, PSNR and SSIM) as bar charts plus the table itself;
* :func:`panels_figure` — false-colour renderings degraded / restored / clean, one row per example;
* :func:`spectra_figure` — clean / degraded / restored spectra at a few pixels of each example;
* :func:`uncertainty_figure` — the per-pixel uncertainty (error bar σ) next to the absolute error;
* :func:`markdown_table` — a list of rows as a Markdown table.

Cubes are (C, H, W) float32 in the clean cube's units (the demo's are in [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hsivar.metrics import as_numpy

if TYPE_CHECKING:
    import torch

__all__ = ["Example", "false_colour", "false_colour_indices", "markdown_table", "metrics_figure", "panels_figure",
           "sample_pixels", "spectra_figure", "uncertainty_figure"]


def false_colour_indices(
    n_bands: int,
    wavelengths: Sequence[float] | np.ndarray | None = None,
    targets_nm: tuple[float, float, float] = (640.0, 550.0, 460.0),
) -> tuple[int, int, int]:
    """Band indices used as (R, G, B) by :func:`false_colour`.

    With ``wavelengths`` (nm, length C): the bands nearest to ``targets_nm`` (640/550/460 nm).
    Without: the bands at fractions 0.8, 0.5, 0.2 of the band axis, ``round(f·(C−1))`` — for a
    31-band 400–700 nm cube exactly 640/550/460 nm (indices 24, 15, 6); for C = 1 all three are
    band 0 (grey).
    """
    if n_bands < 1:
        raise ValueError("false colour needs at least one band")
    if wavelengths is not None:
        wl = np.asarray(wavelengths, dtype=np.float64)
        if wl.shape != (n_bands,):
            raise ValueError(f"got {wl.size} wavelengths for {n_bands} bands")
        return tuple(int(np.argmin(np.abs(wl - t))) for t in targets_nm)  # type: ignore[return-value]
    fr = [(t - 400.0) / 300.0 for t in targets_nm]
    return tuple(int(math.floor(f * (n_bands - 1) + 0.5)) for f in fr)  # type: ignore[return-value]


def false_colour(cube: np.ndarray | torch.Tensor,
                 wavelengths: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """False-colour RGB rendering of a cube: (C, H, W) → (3, H, W) float32 in [0, 1].

    The three bands of :func:`false_colour_indices` (nearest 640/550/460 nm), no stretch or gamma,
    clipped to [0, 1].
    """
    x = as_numpy(cube)
    if x.ndim != 3:
        raise ValueError(f"expected a cube (C, H, W), got shape {x.shape}")
    idx = list(false_colour_indices(x.shape[0], wavelengths))
    return np.clip(x[idx].astype(np.float32), 0.0, 1.0)


@dataclass
class Example:
    """One restored example of a task family.

    Attributes:
        task: family name; level: its protocol level (σ in 0–255, case, kernel size, scale, fraction).
        clean, degraded, restored: (C, H, W) float32 in the same units.
        std: (C, H, W) per-pixel std over samples (same units), or None for a single decoding.
        psnr_degraded, psnr_restored: PSNR (dB, data range 1) of the degraded input and the restoration.
    """

    task: str
    level: float
    clean: np.ndarray
    degraded: np.ndarray
    restored: np.ndarray
    std: np.ndarray | None = None
    psnr_degraded: float = float("nan")
    psnr_restored: float = float("nan")

    @property
    def label(self) -> str:
        """``"gaussian 50"``: the family and its level."""
        return f"{self.task} {self.level:g}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _rgb(cube: np.ndarray, gain: float, wavelengths: Sequence[float] | None) -> np.ndarray:
    """(C, H, W) → (H, W, 3) in [0, 1], brightened by ``gain``."""
    return np.clip(false_colour(cube, wavelengths) * gain, 0.0, 1.0).transpose(1, 2, 0)


def metrics_figure(summary: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Bar charts of PSNR (dB) and SSIM per task family, with the numbers as a table underneath.

    Args:
        summary: one row per family with keys ``task``, ``baseline`` (its name), and
            ``{degraded,baseline,model}_{psnr,ssim}`` (means over the family's levels).
        path: PNG file to write.
    Returns:
        ``path``.
    """
    plt = _pyplot()
    tasks = [str(r["task"]) for r in summary]
    methods = (("degraded", "degraded input", "#b0b0b0"), ("baseline", "classical baseline", "#e0a040"),
               ("model", "HSI-VAR", "#3070c0"))
    fig = plt.figure(figsize=(11, 6.8))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 2), hspace=0.35)
    x = np.arange(len(tasks))
    for col, (metric, unit) in enumerate((("psnr", "PSNR (dB)"), ("ssim", "SSIM"))):
        ax = fig.add_subplot(grid[0, col])
        for k, (key, label, colour) in enumerate(methods):
            vals = [float(r[f"{key}_{metric}"]) for r in summary]
            ax.bar(x + (k - 1) * 0.27, vals, width=0.27, label=label, color=colour)
        ax.set_xticks(x, tasks, rotation=30)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
        if col == 0:
            ax.legend(fontsize=8, loc="lower left")
    ax = fig.add_subplot(grid[1, :])
    ax.axis("off")
    cells = [[r["task"], f"{r['degraded_psnr']:.2f} / {r['degraded_ssim']:.3f}", str(r["baseline"]),
              f"{r['baseline_psnr']:.2f} / {r['baseline_ssim']:.3f}", f"{r['model_psnr']:.2f} / {r['model_ssim']:.3f}"]
             for r in summary]
    table = ax.table(cellText=cells, loc="center", cellLoc="center",
                     colLabels=["task", "degraded PSNR / SSIM", "baseline", "baseline PSNR / SSIM",
                                "HSI-VAR PSNR / SSIM"])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.4)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def panels_figure(examples: Sequence[Example], path: str | Path, wavelengths: Sequence[float] | None = None) -> Path:
    """False-colour panels (bands nearest 640/550/460 nm): degraded | restored | clean, a row per example.

    Each row is brightened by one gain (1 / the 99th percentile of its clean rendering), the same for
    its three panels, so they compare fairly. Titles give the PSNR of degraded and restored.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.5 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        gain = 1.0 / max(float(np.percentile(false_colour(ex.clean, wavelengths), 99)), 1e-6)
        for ax, cube, name in zip(row, (ex.degraded, ex.restored, ex.clean), ("degraded", "restored", "clean")):
            ax.imshow(_rgb(cube, gain, wavelengths), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            psnr = {"degraded": ex.psnr_degraded, "restored": ex.psnr_restored}.get(name)
            ax.set_title(f"{name}" + (f" {psnr:.2f} dB" if psnr is not None and np.isfinite(psnr) else ""),
                         fontsize=9)
        row[0].set_ylabel(ex.label, fontsize=10)
    return _save(fig, path)


def sample_pixels(shape: tuple[int, int, int], n: int = 3, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` distinct (row, col) pixels of a (C, H, W) cube, away from the border, reproducible from ``seed``."""
    _, H, W = shape
    rng = np.random.default_rng(seed)
    m = min(H, W) // 8
    rows = rng.integers(m, max(H - m, m + 1), size=4 * n)
    cols = rng.integers(m, max(W - m, m + 1), size=4 * n)
    out: list[tuple[int, int]] = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        if (r, c) not in out:
            out.append((r, c))
        if len(out) == n:
            break
    return out


def spectra_figure(examples: Sequence[Example], path: str | Path, pixels: Sequence[tuple[int, int]],
                   wavelengths: Sequence[float] | None = None) -> Path:
    """Spectra clean / degraded / restored at ``pixels`` (row, col): a row per example, a column per pixel.

    The x axis is ``wavelengths`` (nm) when given, else the band index; values in the cubes' units.
    """
    plt = _pyplot()
    C = examples[0].clean.shape[0]
    x = np.asarray(wavelengths, dtype=float) if wavelengths is not None else np.arange(C)
    fig, axes = plt.subplots(len(examples), len(pixels), figsize=(3.2 * len(pixels), 2.2 * len(examples)),
                             squeeze=False, sharex=True)
    for row, ex in zip(axes, examples):
        for ax, (r, c) in zip(row, pixels):
            ax.plot(x, ex.clean[:, r, c], color="black", lw=1.6, label="clean")
            ax.plot(x, ex.degraded[:, r, c], color="#d04040", lw=0.9, ls="--", label="degraded")
            ax.plot(x, ex.restored[:, r, c], color="#3070c0", lw=1.2, label="restored")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.set_title(f"{ex.label}, pixel ({r}, {c})", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("wavelength (nm)" if wavelengths is not None else "band", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def uncertainty_figure(examples: Sequence[Example], path: str | Path) -> Path:
    """Per example: mean over bands of |restored − clean| (top) and of the uncertainty σ (bottom).

    Each map has its own colour scale (an uncalibrated std over samples is much smaller than the error; where
    they are large together is what matters). Under each column: the correlation of the two maps and the share
    of entries with σ > 0 (those synthesised, not kept as observed) whose error lies within 2σ. Examples without
    ``std`` are left out. Raises ValueError when none has one.
    """
    plt = _pyplot()
    shown = [ex for ex in examples if ex.std is not None]
    if not shown:
        raise ValueError("uncertainty_figure: no example has an uncertainty (std)")
    fig, axes = plt.subplots(2, len(shown), figsize=(2.4 * len(shown), 5.0), squeeze=False)
    for k, ex in enumerate(shown):
        full_err, full_std = np.abs(ex.restored - ex.clean), np.asarray(ex.std, np.float64)
        synth = np.isfinite(full_std) & (full_std > 0)
        within = float(np.mean(full_err[synth] <= 2 * full_std[synth])) if synth.any() else float("nan")
        err, std = full_err.mean(0), np.nan_to_num(full_std).mean(0)
        for ax, img, name in ((axes[0, k], err, "|error|"), (axes[1, k], std, "uncertainty σ")):
            vmax = max(float(np.percentile(img, 99)), 1e-9)
            im = ax.imshow(img, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{ex.label}\n{name}" if name == "|error|" else name, fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
        corr = np.corrcoef(err.ravel(), std.ravel())[0, 1] if err.std() > 0 and std.std() > 0 else float("nan")
        axes[1, k].set_xlabel(f"corr(|err|, σ) = {corr:.2f}\n|err| ≤ 2σ: {within:.0%}", fontsize=8)
    fig.suptitle("per-pixel mean over bands: absolute error (top) and uncertainty (bottom)", fontsize=10)
    return _save(fig, path)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
                   formats: Mapping[str, str] | None = None) -> str:
    """``rows`` as a Markdown table.

    Args:
        columns: (key, header) pairs in order.
        formats: key → format spec (e.g. ``".2f"``) for numbers; other values are printed with ``str``.
    """
    formats = formats or {}
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---:" if k in formats else "---" for k, _ in columns) + "|"]
    for r in rows:
        cells = []
        for key, _ in columns:
            v = r.get(key, "")
            cells.append(format(v, formats[key]) if key in formats and isinstance(v, (int, float)) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
