"""Which entries of a cube a file marks as *not observed*: bad band lists and masks.

One convention for every format:

* **Bad band list** ``bbl``: one number per band, ``0`` = bad band (every entry of it is unobserved),
  nonzero = good band — ENVI's header field ``bbl``; a GeoTIFF dataset tag ``bbl`` (comma-separated); an
  HDF5 attribute ``bbl`` on the cube's dataset, else a 1-D dataset ``bbl`` beside it (or at the root); a
  .mat variable ``bbl``.
* **Mask**: nonzero = observed, ``0`` = not observed (GDAL's polarity) — a GeoTIFF internal (or ``.msk``)
  per-dataset mask; an HDF5 dataset named by the cube dataset's ``mask`` attribute, else a dataset ``mask``
  beside the cube (or at the root); a .mat variable ``mask``. An array-format mask has either the shape
  the cube has in the file (one value per entry, the cube's axis order: (C, H, W) for a bands-first HDF5
  cube, H x W x C for a MATLAB cube) or the shape (H, W) (one value per pixel, for every band).
* **Nodata** (GeoTIFF nodata, ENVI ``data ignore value``, HDF5 ``nodata`` attribute) is not a mask: it
  stays :attr:`~hsivar.io.CubeMeta.nodata`, and the restoration writes those voxels back as nodata,
  whereas entries a bad band list or a mask leaves out are synthesised.

Readers give :attr:`hsivar.io.CubeMeta.missing`, (C, H, W) bool, True = not observed. Writers store it
back: whole bad bands as ``bbl`` (ENVI, GeoTIFF, HDF5, .mat), other entries as a mask (HDF5 / .mat: a
cube-shaped ``mask``; GeoTIFF: an internal mask, one for all the good bands); ENVI holds bad bands only,
.npy / .npz nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hsivar.io.layout import Source, Window, read_block
from hsivar.io.meta import CubeError

__all__ = [
    "AUX_KEYS",
    "BBL_KEY",
    "MASK_KEY",
    "MissingReader",
    "attach_array_mask",
    "band_missing",
    "bands_reader",
    "check_missing",
    "parse_bbl",
    "resolve_mask_name",
    "split_missing",
]

MASK_KEY = "mask"
"""Name of a mask dataset / variable (and of the HDF5 attribute naming one)."""

BBL_KEY = "bbl"
"""Name of a bad band list (ENVI header field, GeoTIFF tag, HDF5 attribute / dataset, .mat variable)."""

AUX_KEYS: tuple[str, ...] = (MASK_KEY, BBL_KEY)
"""Names of arrays that describe the cube and are never the cube itself (unless asked for by name)."""

MissingReader = Callable[[Window, "list[int] | None"], np.ndarray]
"""``read_missing(window, bands)`` → (c, h, w) bool, True = not observed, for the window and band indices."""


def parse_bbl(value: Any, count: int, src: str) -> np.ndarray | None:
    """A bad band list (one number per band, 0 = bad) → (C,) bool, True = bad band; ``None`` when
    ``value`` is ``None`` or names no bad band.

    Raises:
        CubeError: not numbers, or not one per band (the message names ``src`` and both lengths).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        flags = np.asarray(
            [float(v) for v in (value.split(",") if isinstance(value, str) else np.asarray(value).reshape(-1))],
            np.float64,
        )
    except (TypeError, ValueError):
        raise CubeError(f"{src}: bad band list (bbl) {value!r} is not a list of numbers (0 = bad band)") from None
    if flags.size != count:
        raise CubeError(f"{src}: bad band list (bbl) has {flags.size} entries for {count} bands")
    bad = flags == 0
    return bad if bad.any() else None


def band_missing(bad_bands: Sequence[int], shape: tuple[int, int, int]) -> np.ndarray:
    """(C, H, W) bool, True at every entry of the bands ``bad_bands`` (0-based indices) of a cube of ``shape``.

    Raises:
        ValueError: an index outside [0, C) (the message lists them).
    """
    C = shape[0]
    bad = sorted({int(b) for b in bad_bands if not 0 <= int(b) < C})
    if bad:
        raise ValueError(f"bad band indices {bad} out of range for {C} bands (0-based, 0..{C - 1})")
    missing = np.zeros(shape, bool)
    missing[list(bad_bands)] = True
    return missing


def bands_reader(bad: np.ndarray) -> MissingReader:
    """A reader of the (c, h, w) missing entries of the bad bands ``bad`` (C,) bool."""

    def read(window: Window, bands: list[int] | None) -> np.ndarray:
        sel = bad if bands is None else bad[bands]
        return np.broadcast_to(sel[:, None, None], (sel.size, window[2], window[3])).copy()

    return read


def attach_array_mask(source: Source, src: str, *, mask: Any = None, mask_name: str = MASK_KEY,
                      bbl: Any = None, reversed_axes: bool = False) -> Source:
    """Give an array-format source (HDF5, .mat) the reader of its missing entries (``source.read_missing``).

    Args:
        source: from :func:`hsivar.io.layout.array_source`; its ``meta.layout`` says the cube's axis order.
        mask: the mask array-like (numpy, h5py.Dataset), nonzero = observed, shaped like the cube in the file
            or (H, W); ``None``: no mask.
        mask_name: the mask's name in the file, for messages.
        bbl: the bad band list (one number per band, 0 = bad), or ``None``.
        reversed_axes: the file stores axes reversed (.mat v7.3); shapes in messages are MATLAB's.
    Returns:
        ``source``, changed in place.
    Raises:
        CubeError: a mask of another shape, a mask that is not numeric, a bbl of the wrong length.
    """
    bad = parse_bbl(bbl, source.shape[0], src)
    if mask is None:
        if bad is not None:
            source.read_missing = bands_reader(bad)
        return source
    axes = source.meta.layout[::-1] if reversed_axes else source.meta.layout
    dims = dict(zip("chw", source.shape))
    stored = tuple(int(n) for n in mask.shape)
    cube_stored = tuple(dims[a] for a in axes)
    plane_axes = "wh" if reversed_axes else "hw"
    plane = tuple(dims[a] for a in plane_axes)

    def shown(shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[::-1] if reversed_axes else shape

    if stored not in (cube_stored, plane):
        raise CubeError(
            f"{src}: mask {mask_name!r} has shape {shown(stored)}; expected the cube's shape {shown(cube_stored)} "
            f"or {(dims['h'], dims['w'])} (rows, cols: one mask for every band)"
        )
    if np.dtype(mask.dtype).kind not in "biuf":
        raise CubeError(f"{src}: mask {mask_name!r} has dtype {mask.dtype}; expected numbers (nonzero = observed)")

    def read(window: Window, bands: list[int] | None) -> np.ndarray:
        r0, c0, h, w = window
        count = source.shape[0] if bands is None else len(bands)
        if stored == cube_stored:
            missing = read_block(mask, axes, window, bands) == 0
        else:
            index = {"h": slice(r0, r0 + h), "w": slice(c0, c0 + w)}
            block = np.asarray(mask[tuple(index[a] for a in plane_axes)])
            block = block.T if plane_axes == "wh" else block
            missing = np.broadcast_to((block == 0)[None], (count, h, w)).copy()
        if bad is not None:
            missing[bad if bands is None else bad[bands]] = True
        return missing

    source.read_missing = read
    return source


def resolve_mask_name(referenced: Any, cube_name: str) -> str | None:
    """The HDF5 path a cube dataset's ``mask`` attribute names (relative to the cube's group), or ``None``."""
    if referenced is None:
        return None
    text = referenced.decode() if isinstance(referenced, bytes) else str(referenced)
    text = text.strip()
    if not text:
        return None
    if text.startswith("/"):
        return text.lstrip("/")
    return posixpath.normpath(posixpath.join(posixpath.dirname(cube_name), text))


def check_missing(missing: Any, shape: tuple[int, ...], dst: str) -> np.ndarray | None:
    """``meta.missing`` as (C, H, W) bool checked against the cube's ``shape``; ``None`` when nothing is missing.

    Raises:
        CubeError: another shape (the message names ``dst`` and both shapes).
    """
    if missing is None:
        return None
    arr = np.asarray(missing)
    if arr.shape != tuple(shape):
        raise CubeError(f"{dst}: meta.missing has shape {arr.shape} for a cube of shape {tuple(shape)}")
    arr = arr.astype(bool, copy=False)
    return arr if arr.any() else None


def split_missing(missing: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(C, H, W) bool missing entries → (bad bands (C,) bool or ``None``, the other missing entries (C, H, W)
    bool or ``None``): what a bad band list holds, and what needs a mask."""
    C = missing.shape[0]
    whole = missing.reshape(C, -1).all(axis=1)
    rest = missing & ~whole[:, None, None]
    return (whole if whole.any() else None), (rest if rest.any() else None)
