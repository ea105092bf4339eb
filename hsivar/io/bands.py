"""Band operations on (C, H, W) cubes and their :class:`CubeMeta`: subsets, resampling to new band
centres (nm) and fitting a cube to a model's band count."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from hsivar.io.layout import check_bands, subset_meta
from hsivar.io.meta import CubeError, CubeMeta

__all__ = ["match_bands", "resample_bands", "select_bands", "spacing_fwhm"]


def spacing_fwhm(wavelengths: Sequence[float] | np.ndarray, single: float = 10.0) -> np.ndarray:
    """A plausible FWHM per band for a sensor whose bands sample the spectrum contiguously: the mean spacing to
    the band's spectral neighbours, at least 1 nm (``single`` for a lone band); wavelengths in any order.

    Args:
        wavelengths: (C,) band centres in nm.
        single: the FWHM of a one-band sensor, nm.

    Returns:
        (C,) float64 FWHM in nm, in the order of ``wavelengths`` (the demo products' writers use it).
    """
    wl = np.asarray(wavelengths, dtype=np.float64).reshape(-1)
    if wl.size < 2:
        return np.full(wl.shape, float(single))
    order = np.argsort(wl)
    fwhm = np.empty_like(wl)
    fwhm[order] = np.maximum(np.abs(np.gradient(wl[order])), 1.0)
    return fwhm


def select_bands(cube: np.ndarray, meta: CubeMeta, indices: Sequence[int]) -> tuple[np.ndarray, CubeMeta]:
    """Keep bands ``indices`` (0-based, any order) of a (C, H, W) cube.

    Returns:
        ``(cube[indices], meta)`` with ``meta.bands``, ``wavelengths`` and ``band_names`` subset to match.

    Raises:
        CubeError: no indices, or an index outside ``[0, C)``.
    """
    src = meta.extras.get("source", "cube")
    picked = check_bands(indices, cube.shape[0], src)
    meta = dataclasses.replace(meta, bands=cube.shape[0])
    return cube[picked], subset_meta(meta, picked)


def resample_bands(
    cube: np.ndarray, meta: CubeMeta, target_wavelengths: Sequence[float]
) -> tuple[np.ndarray, CubeMeta]:
    """Resample a (C, H, W) cube to new band centres by linear interpolation along wavelength.

    Args:
        cube: (C, H, W) array whose bands are centred at ``meta.wavelengths`` (nm, length C).
        meta: metadata with the source wavelengths.
        target_wavelengths: new band centres in nm (length C'), any order.

    Returns:
        ``(resampled, meta)``: float32 (C', H, W) and meta with ``bands=C'``, ``wavelengths`` the targets
        and no band names. A target within half a band spacing outside the source range takes the edge
        band's value.

    Raises:
        CubeError: source wavelengths unknown or of the wrong length, repeated source wavelengths,
            no targets, or targets outside the source range (e.g. µm against nm).
    """
    src = meta.extras.get("source", "cube")
    if meta.wavelengths is None:
        raise CubeError(f"{src}: cannot resample bands: source wavelengths are unknown")
    source = np.asarray(meta.wavelengths, dtype=np.float64)
    if source.size != cube.shape[0]:
        raise CubeError(f"{src}: {source.size} wavelengths for a {cube.shape[0]}-band cube")
    targets = np.asarray(target_wavelengths, dtype=np.float64).reshape(-1)
    if targets.size == 0:
        raise CubeError(f"{src}: no target wavelengths")
    order = np.argsort(source)
    source = source[order]
    if np.any(np.diff(source) <= 0):
        raise CubeError(f"{src}: repeated source wavelengths, cannot interpolate")
    spacing = float(np.median(np.diff(source))) if source.size > 1 else 0.0
    low, high = source[0] - spacing / 2, source[-1] + spacing / 2
    outside = targets[(targets < low - 1e-9) | (targets > high + 1e-9)]
    if outside.size:
        raise CubeError(
            f"{src}: target wavelengths {outside.tolist()[:5]} nm lie outside the source range "
            f"{source[0]:g}-{source[-1]:g} nm"
        )
    data = np.asarray(cube)[order].astype(np.float64, copy=False)
    clipped = np.clip(targets, source[0], source[-1])
    upper = np.clip(np.searchsorted(source, clipped, side="right"), 1, max(source.size - 1, 1))
    lower = upper - 1
    if source.size == 1:
        out = np.repeat(data[:1], targets.size, axis=0)
    else:
        weight = ((clipped - source[lower]) / (source[upper] - source[lower]))[:, None, None]
        out = (1.0 - weight) * data[lower] + weight * data[upper]
    new_meta = dataclasses.replace(
        meta, bands=int(targets.size), wavelengths=targets.tolist(), band_names=None, extras=dict(meta.extras)
    )
    return out.astype(np.float32), new_meta


def match_bands(
    cube: np.ndarray,
    meta: CubeMeta,
    expected_bands: int,
    expected_wavelengths: Sequence[float] | None = None,
) -> tuple[np.ndarray, CubeMeta]:
    """Make a (C, H, W) cube fit a model expecting ``expected_bands`` bands.

    Returns ``(cube, meta)`` unchanged when C equals ``expected_bands``; otherwise, when both the
    cube's wavelengths and ``expected_wavelengths`` (nm) are known, the cube resampled to them by
    :func:`resample_bands`.

    Raises:
        CubeError: the counts differ and the cube cannot be resampled; the message names both counts.
    """
    src = meta.extras.get("source", "cube")
    have = int(cube.shape[0])
    if have == expected_bands:
        return cube, meta
    if expected_wavelengths is not None and len(expected_wavelengths) != expected_bands:
        raise CubeError(
            f"{src}: {len(expected_wavelengths)} wavelengths given for {expected_bands} expected bands"
        )
    if meta.wavelengths is None or expected_wavelengths is None:
        missing = (
            "the cube's wavelengths are unknown" if meta.wavelengths is None else "no target wavelengths"
        )
        raise CubeError(
            f"{src}: the cube has {have} bands but {expected_bands} are expected; cannot resample ({missing})"
        )
    try:
        return resample_bands(cube, meta, expected_wavelengths)
    except CubeError as exc:
        problem = str(exc).removeprefix(f"{src}: ")
        raise CubeError(
            f"{src}: the cube has {have} bands but {expected_bands} are expected; {problem}"
        ) from exc
