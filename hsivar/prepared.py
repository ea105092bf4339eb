"""The cube side of the one restoration path: prepare a cube for the model, and finish its restoration.

:func:`prepare_cube` validates a cube (C, H, W) in any units, leaves nodata out, min–max normalises it to
[0, 1] (the model's range; ``value_range`` when the data's range is known) and pads sides shorter than a
tile. It reads the cube's :class:`~hsivar.degrade.observation.Observation` (detected, plus the nodata
voxels and whatever the caller knows) and, for models that restore from it, computes the classical first
estimate (:func:`hsivar.estimate.first_estimate`). The model's S×S tiles of :mod:`hsivar.tiling` are cut
from both as the model asks for them. :func:`finish` maps the blended, consistent samples back to the
input's units, puts the exactly observed entries back bit for bit and nodata back as nodata. Everything
here runs on the CPU, without the model (:mod:`hsivar.restore` runs the model between the two).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hsivar.consistency import exact_entries, project
from hsivar.degrade.observation import Observation
from hsivar.estimate import first_estimate
from hsivar.tiling import TileBlender, pad_to_tile, tile_grid


class RestoreInputError(ValueError):
    """The cube cannot be restored by this model (wrong shape or band count, non-finite values, bad options)."""


class NothingToRestore(RestoreInputError):
    """Every voxel of the cube is nodata (the batch job marks it ``skipped``; Serve answers 422)."""


@dataclass
class PreparedCube:
    """A cube normalised to [0, 1], padded to at least one tile, with what is known of its observation and the
    corners of the tiles the model restores. Tiles are cut when asked for (:meth:`tiles`).

    Attributes:
        cube01: (C, H', W') float32 in [0, 1], H' = max(H, S), W' = max(W, S) (sides shorter than a tile
            padded); an empty tensor when only the description travels (:meth:`described`).
        coords: n top-left corners (row, col) in pixels, in :func:`hsivar.tiling.tile_grid` order.
        shape: (C, H, W) of the cube.
        tile, overlap: S and the overlap, pixels.
        lo, scale: the normalisation x01 = (x − lo) / scale, in the input's units.
        mask: (C, H, W) bool, voxels equal to ``nodata`` (written back as nodata), or None.
        nodata: the source's nodata value, when it occurs in the cube.
        observation: what is known of how the cube was observed, or None (no consistency step).
        estimate01: (C, H', W') float32, the classical first estimate in [0, 1] units, padded like ``cube01``,
            or None for models that restore from the degraded cube itself.
        kept: (C, H, W) bool, the entries the output keeps exactly as observed (consistency), or None.
        source: (C, H, W) float32, the input's values at ``kept`` (zeros elsewhere), or None.
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
    observation: Observation | None = None
    estimate01: torch.Tensor | None = None
    kept: np.ndarray | None = None
    source: np.ndarray | None = None

    @classmethod
    def described(cls, shape: tuple[int, int, int], tile: int, overlap: int, lo: float, scale: float,
                  mask: np.ndarray | None = None, nodata: float | None = None,
                  cube01: torch.Tensor | None = None, **parts: object) -> PreparedCube:
        """The prepared cube of a (C, H, W) ``shape`` from its parts (the tile corners recomputed), e.g. after
        they travelled separately; without ``cube01`` it cannot cut tiles. ``parts``: the other fields."""
        C, H, W = shape
        return cls(torch.empty(0) if cube01 is None else cube01, tile_grid(H, W, tile, overlap),
                   (C, H, W), tile, overlap, lo, scale, mask, nodata, **parts)  # type: ignore[arg-type]

    def tiles(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Tiles ``start``..``stop`` (default all) of the cube as (b, C, S, S) float32 in [0, 1]."""
        return self._cut(self.cube01, start, stop)

    def estimate_tiles(self, start: int = 0, stop: int | None = None) -> torch.Tensor | None:
        """The same tiles of the first estimate (b, C, S, S), or None without one."""
        return None if self.estimate01 is None else self._cut(self.estimate01, start, stop)

    def _cut(self, x: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        S = self.tile
        return torch.stack([x[:, r:r + S, c:c + S] for r, c in self.coords[start:stop]])

    def blender(self) -> TileBlender:
        """An empty :class:`~hsivar.tiling.TileBlender` for this cube's tiles (blending in [0, 1] units)."""
        return TileBlender(*self.shape, self.tile, self.overlap)

    def consistent(self, sample01: torch.Tensor) -> torch.Tensor:
        """One blended sample (C, H, W) in [0, 1] made consistent with the observation
        (:func:`hsivar.consistency.project`); unchanged without an observation."""
        if self.observation is None or self.cube01.numel() == 0:
            return sample01
        C, H, W = self.shape
        y01 = self.cube01[:, :H, :W].numpy()
        return torch.from_numpy(project(sample01.numpy(), y01, self.observation))


def _nodata_mask(cube: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """(C, H, W) bool where ``cube`` equals ``nodata`` (NaN matches NaN), or None when nothing does."""
    if nodata is None:
        return None
    mask = np.isnan(cube) if math.isnan(nodata) else cube == np.float32(nodata)
    return mask if mask.any() else None


def prepare_cube(cube: np.ndarray | torch.Tensor, bands: int, tile: int, overlap: int, nodata: float | None = None,
                 value_range: tuple[float, float] | None = None, *, observation: Observation | None = None,
                 consistency: bool = True, estimate: bool = False,
                 wavelengths: Sequence[float] | None = None) -> PreparedCube:
    """Validate, normalise and describe one cube for the model.

    Args:
        cube: (C, H, W) in any units; C must equal ``bands``.
        tile, overlap: the model's tile side S and the overlap in pixels (0 ≤ overlap < S).
        nodata: voxels equal to it (NaN allowed) are left out of the min–max range, count as unobserved,
            and are written back as nodata by :func:`finish`.
        value_range: (lo, hi) in the input's units mapped to [0, 1] — the clean data's range (e.g. (0, 1)
            for reflectance). Default: the cube's own min–max, which noise or outliers stretch: a noisy
            cube then comes out darker and shifted, so pass the range whenever it is known.
        observation: what the caller knows of the observation (a mask, bad bands, a blur, the degradation
            record's facts); merged over what the cube shows (:meth:`Observation.detect`).
        consistency: make the output consistent with the observation (keep exact entries, back-project);
            False: no observation is read.
        estimate: compute the classical first estimate (models with ``first_estimate``).
        wavelengths: band centres in nm, for interpolating missing bands (default: band index).
    Returns:
        :class:`PreparedCube`, on the CPU.
    Raises:
        RestoreInputError: not 3-D, wrong band count, empty, non-finite values (other than nodata), a bad
            overlap, value range or observation; :class:`NothingToRestore` when every voxel is nodata.
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
    if observation is not None and tuple(observation.shape) != (C, H, W):
        raise RestoreInputError(f"the observation describes a cube of shape {tuple(observation.shape)}, "
                                f"the cube has shape {(C, H, W)}")
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
    x01 = ((x - lo) / scale).contiguous()
    prep = PreparedCube(pad_to_tile(x01, tile).contiguous(), tile_grid(H, W, tile, overlap), (C, H, W), tile,
                        overlap, lo, scale, mask, nodata if mask is not None else None)
    if not (consistency or estimate):
        return prep
    obs = Observation.detect(x01.numpy(), noise=True)
    if mask is not None:
        obs = obs.with_missing(mask, "nodata")
    if observation is not None:
        if observation.has_missing and not observation.observed.any():
            raise RestoreInputError("the mask marks every entry of the cube as unobserved; nothing to restore from")
        obs = observation.merge(obs)
    prep.observation = obs
    if estimate:
        prep.estimate01 = pad_to_tile(torch.from_numpy(first_estimate(x01.numpy(), obs, wavelengths)), tile)
    kept = exact_entries(obs) if consistency else None
    if kept is not None:
        kept = kept & (mask is None or ~mask)
        prep.kept, prep.source = kept, np.where(kept, x.numpy(), 0.0).astype(np.float32)
    return prep


def finish(prep: PreparedCube, samples01: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Blended (and consistent) samples in [0, 1] → the restored cube and its uncertainty in the input's units.

    Args:
        samples01: (samples, C, H, W) blended restorations in [0, 1] units.
    Returns:
        (mean (C, H, W) float32, std (C, H, W) float32 over samples or None for one sample). Entries the
        observation saw exactly (``prep.kept``) hold the input's value bit for bit and std 0; nodata voxels
        (``prep.mask``) hold ``prep.nodata`` in the mean and NaN in the std.
    """
    stack = samples01.float() * prep.scale + prep.lo
    mean = stack.mean(0).numpy().astype(np.float32)
    std = stack.std(0, unbiased=False).numpy().astype(np.float32) if stack.shape[0] > 1 else None
    if prep.kept is not None and prep.source is not None:
        mean[prep.kept] = prep.source[prep.kept]
        if std is not None:
            std[prep.kept] = 0.0
    if prep.mask is not None:
        mean[prep.mask] = prep.nodata
        if std is not None:
            std[prep.mask] = np.nan
    return mean, std
