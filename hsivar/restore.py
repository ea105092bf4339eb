"""The one restoration path: a published model restores cubes (C, H, W) of any spatial size.

Every entry point (:meth:`Restorer.restore`, the batch job, the Serve endpoint, the evaluation)
restores a cube through the same three steps, so a new option is added once:

1. :func:`prepare_cube` — validate (rank, band count, finite values), exclude nodata voxels, min–max
   normalise to [0, 1] (the model's range; ``value_range`` when the data's range is known), pad sides
   shorter than a tile; the overlapping S×S tiles of :mod:`hsivar.tiling` are cut from it as the model
   asks for them. CPU only, no model.
2. :meth:`Restorer.forward` — one forward pass of the model over a batch of tiles; the only place the
   model's ``restore`` is called. :meth:`Restorer.restore_prepared` runs it over a prepared cube's
   tiles in batches, ``samples`` times with generators seeded ``seed + i``, and blends each sample's
   tiles (:class:`~hsivar.tiling.TileBlender`); Serve batches single tiles of concurrent requests
   through :meth:`Restorer.forward` and blends them with :meth:`PreparedCube.blender`.
3. :func:`finish` — back to the input's units; the mean over samples is the restored cube, their
   per-pixel standard deviation the uncertainty; nodata voxels are written back as nodata.

Greedy decoding is the default (restoration wants fidelity). With seeded top-k / top-p sampling,
``samples = N`` decodes N times. On CUDA the model runs under bf16 autocast; the quantiser stays fp32.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from hsivar.models.dag import TaskSpec
from hsivar.models.hsivar import HSIVAR, Guidance
from hsivar.models.var import GREEDY, Sampling
from hsivar.publish import load_published
from hsivar.tiling import TileBlender, pad_to_tile, tile_grid


class RestoreInputError(ValueError):
    """The cube cannot be restored by this model (wrong shape or band count, non-finite values, bad options)."""


class NothingToRestore(RestoreInputError):
    """Every voxel of the cube is nodata (the batch job marks it ``skipped``; Serve answers 422)."""


def resolve_overlap(model_tile: int, tile: int | None, overlap: int | None) -> int:
    """The tile overlap in pixels for a model with ``model_tile``-pixel tiles (default S/4).

    Raises:
        RestoreInputError: ``tile`` given and not the model's tile, or ``overlap`` outside [0, S).
    """
    if tile is not None and tile != model_tile:
        raise RestoreInputError(f"this model restores {model_tile}×{model_tile} tiles; tile={tile} is not possible")
    overlap = model_tile // 4 if overlap is None else int(overlap)
    if not 0 <= overlap < model_tile:
        raise RestoreInputError(f"overlap must be in [0, {model_tile}), got {overlap}")
    return overlap


def parse_value_range(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` (input units) → (lo, hi); None or "" → None.

    Raises:
        ValueError: not two numbers, or HI ≤ LO (the message quotes the text).
    """
    if text is None or not text.strip():
        return None
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:  # not two numbers
        raise ValueError(f"value_range must be LO,HI with HI > LO, got {text!r}") from None
    if not hi > lo:
        raise ValueError(f"value_range must be LO,HI with HI > LO, got {text!r}")
    return lo, hi


def decoding(samples: int, batch_size: int = 1, sampling: Sampling | None = None) -> Sampling:
    """The decoding of a restoration: greedy for one sample, seeded top-p 0.9 for several (or ``sampling``).

    Raises:
        RestoreInputError: ``samples`` or ``batch_size`` < 1, or greedy decoding with ``samples > 1``.
    """
    if samples < 1 or batch_size < 1:
        raise RestoreInputError(f"samples and batch_size must be ≥ 1 (got {samples}, {batch_size})")
    if sampling is None:
        sampling = GREEDY if samples == 1 else Sampling(greedy=False, top_p=0.9)
    if samples > 1 and sampling.greedy:
        raise RestoreInputError("samples > 1 needs sampling (greedy decoding gives identical samples)")
    return sampling


# ------------------------------------------------------------------------------------------ 1. prepare


@dataclass
class PreparedCube:
    """A cube normalised to [0, 1], padded to at least one tile, with the corners of the tiles the model
    restores. Tiles are cut when asked for (:meth:`tiles`), so a prepared scene holds one copy of it.

    Attributes:
        cube01: (C, H', W') float32 in [0, 1], H' = max(H, S), W' = max(W, S) (sides shorter than a tile
            padded); an empty tensor when only the description travels (:meth:`described`).
        coords: n top-left corners (row, col) in pixels, in :func:`hsivar.tiling.tile_grid` order.
        shape: (C, H, W) of the cube.
        tile, overlap: S and the overlap, pixels.
        lo, scale: the normalisation x01 = (x − lo) / scale, in the input's units.
        mask: (C, H, W) bool, voxels equal to ``nodata`` (written back as nodata), or None.
        nodata: the source's nodata value, when it occurs in the cube.
    """

    cube01: torch.Tensor
    coords: list[tuple[int, int]]
    shape: tuple[int, int, int]
    tile: int
    overlap: int
    lo: float
    scale: float
    mask: np.ndarray | None = None
    nodata: float | None = None

    @classmethod
    def described(cls, shape: tuple[int, int, int], tile: int, overlap: int, lo: float, scale: float,
                  mask: np.ndarray | None = None, nodata: float | None = None,
                  cube01: torch.Tensor | None = None) -> PreparedCube:
        """The prepared cube of a (C, H, W) ``shape`` from its normalisation and mask (the tile corners
        recomputed), e.g. after its parts travelled separately; without ``cube01`` it cannot cut tiles."""
        C, H, W = shape
        return cls(torch.empty(0) if cube01 is None else cube01, tile_grid(H, W, tile, overlap),
                   (C, H, W), tile, overlap, lo, scale, mask, nodata)

    def tiles(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Tiles ``start``..``stop`` (default all) as (b, C, S, S) float32 in [0, 1]."""
        S = self.tile
        return torch.stack([self.cube01[:, r:r + S, c:c + S] for r, c in self.coords[start:stop]])

    def blender(self) -> TileBlender:
        """An empty :class:`~hsivar.tiling.TileBlender` for this cube's tiles (blending in [0, 1] units)."""
        return TileBlender(*self.shape, self.tile, self.overlap)


def _nodata_mask(cube: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """(C, H, W) bool where ``cube`` equals ``nodata`` (NaN matches NaN), or None when nothing does."""
    if nodata is None:
        return None
    mask = np.isnan(cube) if math.isnan(nodata) else cube == np.float32(nodata)
    return mask if mask.any() else None


def prepare_cube(cube: np.ndarray | torch.Tensor, bands: int, tile: int, overlap: int,
                 nodata: float | None = None, value_range: tuple[float, float] | None = None) -> PreparedCube:
    """Validate, normalise and tile one cube.

    Args:
        cube: (C, H, W) in any units; C must equal ``bands``.
        tile, overlap: the model's tile side S and the overlap in pixels (0 ≤ overlap < S).
        nodata: voxels equal to it (NaN allowed) are left out of the min–max range, restored as the
            range minimum and written back as nodata by :func:`finish`.
        value_range: (lo, hi) in the input's units mapped to [0, 1] — the clean data's range (e.g. (0, 1)
            for reflectance). Default: the cube's own min–max, which noise or outliers stretch: a noisy
            cube then comes out darker and shifted, so pass the range whenever it is known.
    Returns:
        :class:`PreparedCube` with the tiles on the CPU.
    Raises:
        RestoreInputError: not 3-D, wrong band count, empty, non-finite values (other than nodata), a bad
            overlap or value range; :class:`NothingToRestore` when every voxel is nodata.
    """
    x = torch.as_tensor(np.asarray(cube) if not isinstance(cube, torch.Tensor) else cube).float().cpu()
    if x.ndim != 3:
        raise RestoreInputError(f"expected a cube (C, H, W), got an array of shape {tuple(x.shape)}")
    C, H, W = x.shape
    if C != bands:
        raise RestoreInputError(f"cube has {C} bands but the model restores {bands} bands")
    if H == 0 or W == 0:
        raise RestoreInputError(f"cube is empty (shape {tuple(x.shape)})")
    if not 0 <= overlap < tile:
        raise RestoreInputError(f"overlap must be in [0, {tile}), got {overlap}")
    mask = _nodata_mask(x.numpy(), nodata)
    bad = ~torch.isfinite(x)
    if mask is not None:
        bad &= ~torch.from_numpy(mask)
    n_bad = int(bad.sum())
    if n_bad:
        raise RestoreInputError(f"cube has {n_bad} non-finite values (NaN/Inf)")
    if value_range is not None and not float(value_range[1]) > float(value_range[0]):
        raise RestoreInputError(f"value_range must be (lo, hi) with hi > lo, got {tuple(value_range)}")
    valid = x if mask is None else x[~torch.from_numpy(mask)]
    if valid.numel() == 0:
        raise NothingToRestore(f"every voxel equals the nodata value {nodata}; nothing to restore")
    lo, hi = (float(value_range[0]), float(value_range[1])) if value_range is not None else \
        (float(valid.min()), float(valid.max()))
    if mask is not None:
        x = torch.where(torch.from_numpy(mask), torch.tensor(lo, dtype=x.dtype), x)
    scale = (hi - lo) if hi > lo else 1.0
    cube01 = pad_to_tile((x - lo) / scale, tile).contiguous()
    return PreparedCube(cube01, tile_grid(H, W, tile, overlap), (C, H, W), tile, overlap, lo, scale, mask,
                        nodata if mask is not None else None)


# ------------------------------------------------------------------------------------------ 3. finish


def finish(prep: PreparedCube, samples01: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Blended samples in [0, 1] → the restored cube and its uncertainty in the input's units.

    Args:
        samples01: (samples, C, H, W) blended restorations in [0, 1] units.
    Returns:
        (mean (C, H, W) float32, std (C, H, W) float32 over samples or None for one sample); nodata
        voxels (``prep.mask``) hold ``prep.nodata`` in the mean and NaN in the std.
    """
    stack = samples01.float() * prep.scale + prep.lo
    mean = stack.mean(0).numpy().astype(np.float32)
    std = stack.std(0, unbiased=False).numpy().astype(np.float32) if stack.shape[0] > 1 else None
    if prep.mask is not None:
        mean[prep.mask] = prep.nodata
        if std is not None:
            std[prep.mask] = np.nan
    return mean, std


# ------------------------------------------------------------------------------------------ 2. the model


@dataclass
class Restoration:
    """A restored cube, in the input's units."""

    cube: np.ndarray  # (C, H, W) float32
    std: np.ndarray | None  # (C, H, W) float32 per-pixel std over samples (samples > 1), else None
    task_weights: dict[str, float]  # mean task weights over tiles and samples (the classifier's for "auto")
    tiles: int
    seconds: float


@dataclass
class RestoredSamples:
    """What :meth:`Restorer.restore_prepared` returns: per-sample blended cubes and the task weights used."""

    samples01: torch.Tensor  # (samples, C, H, W) float32 on the CPU, [0, 1] units
    task_weights: list[float]  # (N,) mean over tiles and samples, in the model's task order


class Restorer:
    """Restore whole cubes with a published HSI-VAR model (see the module docstring)."""

    def __init__(self, model: HSIVAR, device: str | torch.device = "cpu", bf16: bool | None = None) -> None:
        """Wrap ``model`` on ``device``; ``bf16`` defaults to True on CUDA and is ignored on CPU."""
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

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task families of the model's task weights, in order."""
        return tuple(self.model.dag.tasks)

    def autocast(self) -> AbstractContextManager:
        """The context the model runs in: bf16 autocast on CUDA when ``bf16``, else a no-op."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    @torch.inference_mode()
    def forward(self, tiles01: torch.Tensor, task: TaskSpec = "auto", sampling: Sampling = GREEDY,
                generator: torch.Generator | None = None, *, guidance: Guidance = "dag", cfg_scale: float = 1.5,
                refine: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass over a batch of tiles.

        Args:
            tiles01: (b, C, S, S) in [0, 1] (any device; moved to the model's).
            task: ``"auto"``, a task name, a {task: weight} mixture or weights (b, N).
            sampling, generator: the decoding and its random source (seeded sampling).
            guidance, cfg_scale, refine: as :meth:`hsivar.models.hsivar.HSIVAR.restore`.
        Returns:
            (restored tiles (b, C, S, S) float32 on the CPU in [0, 1], task weights used (b, N) float32 on the CPU).
        """
        with self.autocast():
            out = self.model.restore(tiles01.to(self.device), task, sampling, generator, guidance, cfg_scale, refine)
        return out.cube.float().cpu(), out.task_weights.float().cpu()

    def restore_prepared(self, prep: PreparedCube, task: TaskSpec = "auto", *, samples: int = 1, seed: int = 0,
                         batch_size: int = 8, sampling: Sampling | None = None, guidance: Guidance = "dag",
                         cfg_scale: float = 1.5, refine: bool = True) -> RestoredSamples:
        """Restore a prepared cube's tiles in batches of ``batch_size`` and blend them, once per sample.

        Sample i decodes the tiles in order with one generator seeded ``seed + i``.

        Raises:
            RestoreInputError: bad ``samples`` / ``batch_size``, or greedy decoding with ``samples > 1``.
        """
        sampling = decoding(samples, batch_size, sampling)
        n = len(prep.coords)
        blended, weight_sum = [], torch.zeros(len(self.tasks), dtype=torch.float64)
        for s in range(samples):
            gen = torch.Generator(device=self.device).manual_seed(seed + s)
            blender = prep.blender()
            for i in range(0, n, batch_size):
                out, weights = self.forward(prep.tiles(i, i + batch_size), task, sampling, gen, guidance=guidance,
                                            cfg_scale=cfg_scale, refine=refine)
                blender.add(prep.coords[i:i + batch_size], out)
                weight_sum += weights.double().sum(0)
            blended.append(blender.result())
        return RestoredSamples(torch.stack(blended), (weight_sum / (n * samples)).tolist())

    def restore(self, cube: np.ndarray | torch.Tensor, task: TaskSpec = "auto", *, overlap: int | None = None,
                tile: int | None = None, batch_size: int = 8, samples: int = 1, seed: int = 0,
                sampling: Sampling | None = None, value_range: tuple[float, float] | None = None,
                nodata: float | None = None, guidance: Guidance = "dag", cfg_scale: float = 1.5,
                refine: bool = True) -> Restoration:
        """Restore one cube: :func:`prepare_cube` → :meth:`restore_prepared` → :func:`finish`.

        Args:
            cube: (C, H, W) in any units; C must equal the model's band count.
            task: ``"auto"``, a task name, or a {task: weight} mixture.
            overlap: tile overlap in pixels (default S/4); tile: must be None or S (the model's tile).
            batch_size: tiles per forward pass.
            samples: decodings to average; > 1 switches the default sampling to seeded top-p 0.9.
            seed: seed of the first sample (sample i uses seed + i).
            value_range: (min, max) of the units to normalise with; default the cube's own min/max.
            nodata: a value marking voxels that hold no data (kept as nodata in the output).
        Returns:
            :class:`Restoration` with the cube (C, H, W) float32 in the input's units.
        Raises:
            RestoreInputError: wrong rank or band count, empty or non-finite cube, bad options.
        """
        t0 = time.perf_counter()
        overlap = resolve_overlap(self.tile, tile, overlap)
        decoding(samples, batch_size, sampling)  # option errors before any work
        prep = prepare_cube(cube, self.bands, self.tile, overlap, nodata=nodata, value_range=value_range)
        out = self.restore_prepared(prep, task, samples=samples, seed=seed, batch_size=batch_size,
                                    sampling=sampling, guidance=guidance, cfg_scale=cfg_scale, refine=refine)
        mean, std = finish(prep, out.samples01)
        return Restoration(cube=mean, std=std, task_weights=dict(zip(self.tasks, out.task_weights)),
                           tiles=len(prep.coords), seconds=time.perf_counter() - t0)
