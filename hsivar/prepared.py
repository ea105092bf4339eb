"""The cube side of the one restoration path: prepare a cube for the model, and finish its restoration.

:func:`prepare_cube` validates a cube (C, H, W) in any units, leaves nodata out, min–max normalises it to
[0, 1] (the model's range; ``value_range`` when the data's range is known) and pads sides shorter than a
tile. It reads the cube's :class:`~hsivar.degrade.observation.Observation` (detected, plus the nodata
voxels, the entries the source marks as not observed — a file's bad bands or mask — and whatever the caller
knows) and, for models that restore from it, computes the classical first
estimate (:func:`hsivar.estimate.first_estimate`). The model's S×S tiles of :mod:`hsivar.tiling` are cut
from both as the model asks for them. :func:`finish` maps the blended, consistent samples back to the
input's units, puts the exactly observed entries back bit for bit and nodata back as nodata. Everything
here runs on the CPU, without the model (:mod:`hsivar.restore` runs the model between the two).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hsivar.consistency import exact_entries, project
from hsivar.degrade.observation import Observation
from hsivar.estimate import first_estimate
from hsivar.tiling import TileBlender, pad_to_tile, tile_grid
from hsivar.uncertainty import features, std_from


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
        wavelengths: band centres in nm the first estimate interpolates over, or None (band index).
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
    wavelengths: tuple[float, ...] | None = None

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

    def reobserved(self, observation: Observation) -> PreparedCube:
        """This cube with a more complete observation of the same shape (e.g. an estimated blur width):
        the first estimate recomputed when there is one, the kept entries narrowed to those the new observation
        still calls exact (:func:`~hsivar.consistency.exact_entries`; a blur leaves none). Needs ``cube01``."""
        if tuple(observation.shape) != self.shape:
            raise RestoreInputError(f"the observation describes a cube of shape {tuple(observation.shape)}, "
                                    f"the cube has shape {self.shape}")
        C, H, W = self.shape
        estimate01 = self.estimate01
        if estimate01 is not None:
            x0 = first_estimate(self.cube01[:, :H, :W].numpy(), observation, self.wavelengths)
            estimate01 = pad_to_tile(torch.from_numpy(x0), self.tile)
        exact = exact_entries(observation)
        kept = None if exact is None or self.kept is None else self.kept & exact
        source = None if kept is None or self.source is None else np.where(kept, self.source, 0.0).astype(np.float32)
        return dataclasses.replace(self, observation=observation, estimate01=estimate01, kept=kept, source=source)

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


def _missing_mask(missing: np.ndarray | None, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The caller's (C, H, W) bool mask of unobserved entries, checked against the cube's ``shape``; None when empty.

    Raises:
        RestoreInputError: another shape, or not a mask.
    """
    if missing is None:
        return None
    arr = np.asarray(missing)
    if arr.shape != shape:
        raise RestoreInputError(f"the mask of unobserved entries has shape {arr.shape}; the cube has shape {shape} "
                                "(C, H, W)")
    if arr.dtype.kind not in "biuf":
        raise RestoreInputError(f"the mask of unobserved entries has dtype {arr.dtype}; expected bool")
    arr = arr.astype(bool, copy=False)
    return arr if arr.any() else None


def prepare_cube(cube: np.ndarray | torch.Tensor, bands: int, tile: int, overlap: int, nodata: float | None = None,
                 value_range: tuple[float, float] | None = None, *, observation: Observation | None = None,
                 missing: np.ndarray | None = None, consistency: bool = True, estimate: bool = False,
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
        missing: (C, H, W) bool, entries the source marks as not observed (a file's bad bands or mask,
            :attr:`hsivar.io.CubeMeta.missing`; a request's bad bands or mask). Their values are ignored
            (any value, NaN included): left out of the min–max range like nodata, counted as unobserved, and
            synthesised in the output (never in ``kept``).
        consistency: make the output consistent with the observation (keep exact entries, back-project);
            False: no observation is read.
        estimate: compute the classical first estimate (models with ``first_estimate``).
        wavelengths: band centres in nm, for interpolating missing bands (default: band index).
    Returns:
        :class:`PreparedCube`, on the CPU.
    Raises:
        RestoreInputError: not 3-D, wrong band count, empty, non-finite values (other than nodata and
            ``missing``), a bad overlap, value range, observation or ``missing`` shape;
            :class:`NothingToRestore` when every voxel is nodata or in ``missing``.
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
    given = _missing_mask(missing, (C, H, W))
    mask = _nodata_mask(x.numpy(), nodata)
    left_out = mask if given is None else (given if mask is None else mask | given)  # values that do not count
    bad = ~torch.isfinite(x)
    if left_out is not None:
        bad &= ~torch.from_numpy(left_out)
    n_bad = int(bad.sum())
    if n_bad:
        raise RestoreInputError(f"cube has {n_bad} non-finite values (NaN/Inf)")
    if value_range is not None and not float(value_range[1]) > float(value_range[0]):
        raise RestoreInputError(f"value_range must be (lo, hi) with hi > lo, got {tuple(value_range)}")
    valid = x if left_out is None else x[~torch.from_numpy(left_out)]
    if valid.numel() == 0:
        if given is None:
            raise NothingToRestore(f"every voxel equals the nodata value {nodata}; nothing to restore")
        raise NothingToRestore(f"the mask of unobserved entries (bad bands, masks) leaves no entry observed "
                               f"({int(given.sum())} of {given.size} unobserved"
                               f"{'' if mask is None else f', {int(mask.sum())} nodata'}); nothing to restore")
    lo, hi = (float(value_range[0]), float(value_range[1])) if value_range is not None else \
        (float(valid.min()), float(valid.max()))
    if left_out is not None:
        x = torch.where(torch.from_numpy(left_out), torch.tensor(lo, dtype=x.dtype), x)
    scale = (hi - lo) if hi > lo else 1.0
    x01 = ((x - lo) / scale).contiguous()
    prep = PreparedCube(pad_to_tile(x01, tile).contiguous(), tile_grid(H, W, tile, overlap), (C, H, W), tile,
                        overlap, lo, scale, mask, nodata if mask is not None else None,
                        wavelengths=tuple(float(v) for v in wavelengths) if wavelengths is not None else None)
    if not (consistency or estimate):
        return prep
    obs = Observation.detect(x01.numpy(), noise=True, known=left_out)
    if left_out is not None:
        obs.source["missing"] = "+".join(n for n, m in (("nodata", mask), ("mask", given)) if m is not None)
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


def uncertainty_features(prep: PreparedCube, restored01: np.ndarray) -> np.ndarray:
    """The error-variance features (:func:`hsivar.uncertainty.features`) of a restoration (C, H, W) in [0, 1] of
    ``prep``: its starting point is the first estimate (models with one) or the input itself, its noise σ the
    observation's. → (F, C, H, W) float32."""
    C, H, W = prep.shape
    start = prep.estimate01 if prep.estimate01 is not None else prep.cube01
    noise = prep.observation.noise_sigma if prep.observation is not None else None
    return features(restored01, start[:, :H, :W].numpy() if start.numel() else None, noise)


def calibrated_std(prep: PreparedCube, samples01: torch.Tensor, coefficients: np.ndarray) -> np.ndarray:
    """The calibrated error bar of a restoration of ``prep`` (:mod:`hsivar.uncertainty`): √(a·f + s²) for the
    samples (n, C, H, W) in [0, 1] — f from their mean, s² their unbiased variance (n > 1) — and the coefficients
    a (F,) mixed for the cube's task weights. Needs the whole ``prep`` (input, first estimate, observation).
    → (C, H, W) float32 in [0, 1] units."""
    x = samples01.float()
    var01 = x.var(0, unbiased=True).numpy() if x.shape[0] > 1 else None
    return std_from(uncertainty_features(prep, x.mean(0).numpy()), coefficients, var01)


def finish(prep: PreparedCube, samples01: torch.Tensor,
           std01: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Blended (and consistent) samples in [0, 1] → the restored cube and its uncertainty in the input's units.

    Args:
        samples01: (samples, C, H, W) blended restorations in [0, 1] units.
        std01: (C, H, W) the calibrated error bar in [0, 1] units (:func:`calibrated_std`), or None: the std over
            samples (an uncalibrated model).
    Returns:
        (mean (C, H, W) float32, std (C, H, W) float32 or None): ``std01`` in the input's units when given, else
        the std over samples (None for one sample). Entries the observation saw exactly (``prep.kept``) hold the
        input's value bit for bit and std 0; nodata voxels (``prep.mask``) hold ``prep.nodata`` in the mean and NaN
        in the std.
    """
    stack = samples01.float() * prep.scale + prep.lo
    mean = stack.mean(0).numpy().astype(np.float32)
    if std01 is not None:
        std = (np.asarray(std01, np.float32) * np.float32(prep.scale)).astype(np.float32)
    else:
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
