"""What the format readers share: the layout rule for array formats, shape and number checks, block
reads and the parsing of metadata values.

**Layout rule for array formats** (.npy, .npz, HDF5, .mat), whose arrays do not say which axis holds
the bands. The first rule that applies decides:

1. an explicit ``layout="chw"`` (bands first) or ``layout="hwc"`` (bands last);
2. a layout recorded in the file by :func:`hsivar.io.write_cube` (HDF5 attribute / npz entry ``layout``);
3. a wavelength vector stored beside the cube (``wavelengths`` entry/attribute) whose length matches
   exactly one of the first and last axes;
4. the band axis is the *smallest* axis when that is unambiguous: ``(a, b, c)`` is CHW when
   ``a < min(b, c)`` and HWC when ``c < min(a, b)``;
5. otherwise the format's convention: HWC for .mat (MATLAB's rows x cols x bands), CHW for the others.

For .mat v7.3 files (HDF5 inside) the axes arrive reversed relative to MATLAB; the layout always
refers to the array as MATLAB shows it. GeoTIFF and ENVI files describe their own layout (bands,
BSQ/BIL/BIP), so ``layout=`` is not consulted for them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hsivar.io.location import Location
from hsivar.io.meta import CubeError, CubeMeta

__all__ = [
    "LAYOUTS",
    "WAVELENGTH_KEYS",
    "OpenOptions",
    "ShapeOnly",
    "Source",
    "Window",
    "array_source",
    "as_floats",
    "as_names",
    "as_str",
    "check_bands",
    "check_cube_shape",
    "check_numeric",
    "dataset_key",
    "infer_layout",
    "iso_utc",
    "pick",
    "read_block",
    "require_size",
    "subset_meta",
    "to_nanometres",
]

LAYOUTS: tuple[str, ...] = ("chw", "hwc")
"""Accepted values of ``layout=``: bands first or bands last."""

WAVELENGTH_KEYS: tuple[str, ...] = ("wavelengths", "wavelength", "wl")
"""Names of a wavelength vector stored beside the cube (npz entry, HDF5 dataset/attribute, .mat variable)."""

_MICROMETRE_UNITS = {"micrometers", "micrometer", "micrometres", "micrometre", "um", "µm", "microns", "micron"}

Window = tuple[int, int, int, int]
"""``(row0, col0, height, width)`` in pixels."""


@dataclass(frozen=True)
class OpenOptions:
    """What the caller asked of a reader: ``layout`` override, ``dataset`` name, header only (``shape_only``)."""

    layout: str | None = None
    dataset: str | None = None
    shape_only: bool = False


@dataclass
class Source:
    """An opened cube file.

    Attributes:
        shape: (C, H, W) of the whole source.
        meta: what the file says about the cube (all bands, whole raster).
        read: ``read(window, bands)`` returns the (c, h, w) block of the window (``(row0, col0, height,
            width)``) and band indices (``None``: all) in the source dtype, touching only that block
            where the format allows.
        read_missing: ``read_missing(window, bands)`` returns the (c, h, w) bool entries of the same block
            that the file marks as not observed (:mod:`hsivar.io.masks`); ``None`` when it marks none.
    """

    shape: tuple[int, int, int]
    meta: CubeMeta
    read: Callable[[Window, list[int] | None], np.ndarray]
    read_missing: Callable[[Window, list[int] | None], np.ndarray] | None = None


@dataclass
class ShapeOnly:
    """Stands in for an array when only its shape is wanted (nothing is read)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)


def read_block(arr: Any, axes: str, window: Window, bands: list[int] | None) -> np.ndarray:
    """Read bands x window from ``arr`` (numpy array, memmap or h5py.Dataset) whose axis order is
    ``axes`` (a permutation of ``"chw"``), touching only that block; returns (c, h, w) in ``arr``'s dtype."""
    r0, c0, h, w = window
    order = None
    if bands is None:
        band_index: slice | list[int] = slice(None)
    else:
        # h5py wants increasing, unique indices: read those, then restore the requested order.
        unique = sorted(set(bands))
        if unique == list(range(unique[0], unique[-1] + 1)):
            band_index = slice(unique[0], unique[-1] + 1)
        else:
            band_index = unique
        if unique != bands:
            position = {b: i for i, b in enumerate(unique)}
            order = [position[b] for b in bands]
    index = {"c": band_index, "h": slice(r0, r0 + h), "w": slice(c0, c0 + w)}
    block = np.asarray(arr[tuple(index[a] for a in axes)])
    block = np.transpose(block, [axes.index(a) for a in "chw"])
    if order is not None:
        block = block[order]
    return block


def check_numeric(dtype: np.dtype, src: str) -> None:
    """Refuse values that are not real numbers (objects, strings, complex); ``src`` names the file."""
    if dtype.kind not in "biuf":
        raise CubeError(f"{src}: values of dtype {dtype} are not real numbers")


def check_cube_shape(shape: tuple[int, ...], src: str, what: str = "array") -> None:
    """Refuse a shape that is not 3-D; ``src`` names the file, ``what`` the thing checked."""
    if len(shape) != 3:
        raise CubeError(
            f"{src}: not a cube: {len(shape)}-D {what} of shape {tuple(shape)}; "
            "expected 3-D (bands, rows, cols)"
        )


def require_size(loc: Location, needed: int, declared: str) -> None:
    """Refuse a file shorter than ``needed`` bytes.

    ``declared`` completes the message ``"<file>: truncated <declared>, file has <n> bytes"``: what the
    header declares, with the byte count it implies.
    """
    size = loc.fs.size(loc.path)
    if size < needed:
        raise CubeError(f"{loc.text}: truncated {declared}, file has {size} bytes")


def infer_layout(
    shape: tuple[int, int, int],
    requested: str | None,
    stored: str | None,
    n_wavelengths: int | None,
    default: str,
) -> str:
    """Apply the layout rule (module docstring) to a 3-D array shape; returns ``"chw"`` or ``"hwc"``."""
    if requested is not None:
        return requested
    if stored in LAYOUTS:
        return stored
    if n_wavelengths:
        matches = [lay for lay, axis in (("chw", 0), ("hwc", 2)) if shape[axis] == n_wavelengths]
        if len(matches) == 1:
            return matches[0]
    a, b, c = shape
    if a < min(b, c):
        return "chw"
    if c < min(a, b):
        return "hwc"
    return default


def as_str(value: Any) -> str | None:
    """A metadata value (bytes, numpy scalar or one-element array, anything printable) as text."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        return as_str(value.reshape(-1)[0])
    return str(value)


def as_floats(value: Any) -> list[float] | None:
    """A metadata value as a flat list of floats; ``None`` when empty or not numeric."""
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return [float(v) for v in arr] if arr.size else None


def iso_utc(text: str | None) -> str | None:
    """A product's time text as ISO-8601 UTC with a ``Z`` (``2022-06-09T08:12:27.123456Z``), else ``None``.

    Accepts any fraction of a second, ``Z``, an offset with or without a colon (``+0000``, ``+05:30``) or none
    (taken as UTC), on every supported Python (3.10's ``fromisoformat`` reads none of these).
    """
    match = re.fullmatch(r"\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?\s*", text or "")
    if match is None:
        return None
    zone = match[3] or "Z"
    zone = "+00:00" if zone == "Z" else zone[:3] + ":" + zone[-2:]
    micro = (match[2] or "0")[:6].ljust(6, "0")
    try:
        when = dt.datetime.fromisoformat(f"{match[1]}.{micro}{zone}").astimezone(dt.timezone.utc)
    except ValueError:
        return None
    return when.isoformat().replace("+00:00", "Z")


def as_names(value: Any) -> list[str] | None:
    """Band names from an attribute, npz entry or MATLAB cell / char array."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=object).reshape(-1)
    names = []
    for item in arr:
        if isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size == 1 else "".join(str(x) for x in item.reshape(-1))
        names.append(as_str(item).strip())
    return names or None


def to_nanometres(wavelengths: list[float] | None, units: str | None) -> list[float] | None:
    """Wavelengths in nm: values given in micrometres (by ``units``) are multiplied by 1000."""
    if wavelengths is not None and units and units.strip().lower() in _MICROMETRE_UNITS:
        return [w * 1000.0 for w in wavelengths]
    return wavelengths


def array_source(
    src: str,
    arr: Any,
    fmt: str,
    *,
    layout: str | None,
    default_layout: str,
    stored_layout: str | None = None,
    reversed_axes: bool = False,
    wavelengths: list[float] | None = None,
    band_names: list[str] | None = None,
    extras: dict | None = None,
    **meta_fields: Any,
) -> Source:
    """Wrap a 3-D array-like (numpy, memmap, h5py.Dataset, :class:`ShapeOnly`) as a source, applying the
    layout rule. ``reversed_axes`` is for .mat v7.3: the stored axes are MATLAB's in reverse order."""
    shape = tuple(int(n) for n in arr.shape)
    logical = shape[::-1] if reversed_axes else shape
    check_cube_shape(logical, src)
    check_numeric(np.dtype(arr.dtype), src)
    lay = infer_layout(logical, layout, stored_layout, len(wavelengths) if wavelengths else None, default_layout)
    axes = lay[::-1] if reversed_axes else lay
    full = tuple(shape[axes.index(a)] for a in "chw")
    return Source(
        shape=full,
        meta=CubeMeta(
            bands=full[0],
            wavelengths=wavelengths,
            band_names=band_names,
            dtype=np.dtype(arr.dtype).name,
            format=fmt,
            layout=lay,
            extras=dict(extras or {}),
            **meta_fields,
        ),
        read=lambda window, bands: read_block(arr, axes, window, bands),
    )


def pick(src: str, kind: str, candidates: dict[str, tuple[int, ...]], dataset: str | None) -> str:
    """Choose the cube among named arrays (``kind``: dataset, array, variable): ``dataset`` if given,
    else the only 3-D one; the messages list the candidates with their shapes."""
    cubes = [name for name, shape in candidates.items() if len(shape) == 3]
    listing = ", ".join(f"{name} {tuple(candidates[name])}" for name in (cubes or candidates)) or "none"
    if dataset is not None:
        key = dataset.strip("/") if kind == "dataset" else dataset
        if key not in candidates:
            label = "3-D candidates" if cubes else "contents"
            raise CubeError(f"{src}: no {kind} named {dataset!r}; {label}: {listing}")
        return key
    if len(cubes) == 1:
        return cubes[0]
    if len(cubes) > 1:
        raise CubeError(f"{src}: several 3-D {kind}s, pass dataset= to choose one of: {listing}")
    if len(candidates) == 1:  # a single array that is not 3-D: report it as "not a cube"
        return next(iter(candidates))
    raise CubeError(f"{src}: no 3-D {kind} in the file; contents: {listing}")


def dataset_key(meta: CubeMeta, default: str = "cube") -> str:
    """The name a writer gives the cube (HDF5 dataset, npz key, .mat variable): ``meta.extras["dataset"]``."""
    key = meta.extras.get("dataset")
    return str(key) if key else default


def check_bands(bands: Sequence[int] | None, count: int, src: str) -> list[int] | None:
    """Band indices (0-based) as a list, checked against ``count`` bands; ``None`` stays ``None`` (all)."""
    if bands is None:
        return None
    indices = [int(b) for b in bands]
    if not indices:
        raise CubeError(f"{src}: zero bands requested (bands=[])")
    bad = [b for b in indices if not 0 <= b < count]
    if bad:
        raise CubeError(f"{src}: band indices {bad} out of range for {count} bands")
    return indices


_PER_BAND_EXTRAS = ("scale", "offset", "scales", "offsets")


def subset_meta(meta: CubeMeta, indices: list[int] | None) -> CubeMeta:
    """Copy of ``meta`` restricted to band ``indices``; per-band lists of the wrong length are dropped
    (and noted in ``extras["warnings"]``). Per-band lists in ``extras`` (``scale``, ``offset``, ``scales``,
    ``offsets``: one value per band) are restricted too."""
    meta = dataclasses.replace(meta, extras=dict(meta.extras))
    count = meta.bands
    for key in _PER_BAND_EXTRAS:
        values = meta.extras.get(key)
        if indices is not None and isinstance(values, list) and len(values) == count:
            meta.extras[key] = [values[i] for i in indices]
    for name in ("wavelengths", "band_names", "fwhm"):
        values = getattr(meta, name)
        if values is not None and len(values) != count:
            meta.extras.setdefault("warnings", []).append(f"ignored {name}: {len(values)} values for {count} bands")
            setattr(meta, name, None)
        elif values is not None and indices is not None:
            setattr(meta, name, [values[i] for i in indices])
    if indices is not None:
        meta.bands = len(indices)
    return meta
