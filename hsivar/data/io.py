"""Read and write hyperspectral cubes: .npy, .npz, HDF5, MATLAB .mat (v5 and v7.3), GeoTIFF and ENVI.

Every reader returns the cube as a ``float32`` array of shape ``(C, H, W)`` (bands, rows, columns)
in the units of the source values (no normalisation), plus a :class:`CubeMeta` holding what is known
about the bands (centre wavelengths in nanometres, names), the georeferencing (GeoTIFF, ENVI), the
source dtype and the (min, max) of the values read.

Sources are local paths, ``file://`` URIs or any fsspec URI (``s3://`` through s3fs at run time,
``memory://`` in tests). Remote HDF5 / .mat v7.3 / GeoTIFF files are read lazily through fsspec file
objects (only the bytes needed); remote ENVI files are copied to a temporary folder; other remote
formats are read whole.

**Layout rule for array formats** (.npy, .npz, HDF5, .mat), whose arrays do not say which axis holds
the bands. The first rule that applies decides:

1. an explicit ``layout="chw"`` (bands first) or ``layout="hwc"`` (bands last);
2. a layout recorded in the file by :func:`write_cube` (HDF5 attribute / npz entry ``layout``);
3. a wavelength vector stored beside the cube (``wavelengths`` entry/attribute) whose length matches
   exactly one of the first and last axes;
4. the band axis is the *smallest* axis when that is unambiguous: ``(a, b, c)`` is CHW when
   ``a < min(b, c)`` and HWC when ``c < min(a, b)``;
5. otherwise the format's convention: HWC for .mat (MATLAB's rows x cols x bands), CHW for the others.

For .mat v7.3 files (HDF5 inside) the axes arrive reversed relative to MATLAB; the layout always
refers to the array as MATLAB shows it. GeoTIFF and ENVI files describe their own layout (bands,
BSQ/BIL/BIP), so ``layout=`` is not consulted for them.

Writes go to the format of the destination's extension, are atomic (temporary name in the same
folder, then a rename; for remote URIs a local temporary file, then a single put) and keep the
georeferencing, band names and wavelengths wherever the format can hold them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import posixpath
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import h5py
import numpy as np
import rasterio
import rasterio.errors
import rasterio.windows
import scipy.io
import scipy.io.matlab
import spectral.io.envi as envi
from affine import Affine
from fsspec.implementations.local import LocalFileSystem
from rasterio.crs import CRS

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "CubeError",
    "CubeMeta",
    "cube_shape",
    "detect_format",
    "match_bands",
    "read_cube",
    "resample_bands",
    "select_bands",
    "write_cube",
]

FORMATS: tuple[str, ...] = ("npy", "npz", "hdf5", "mat", "geotiff", "envi")
"""Format names used by :func:`detect_format`, ``CubeMeta.format`` and ``write_cube(format=...)``."""

LAYOUTS: tuple[str, ...] = ("chw", "hwc")
"""Accepted values of ``layout=``: bands first or bands last."""

_EXTENSIONS: dict[str, str] = {
    ".npy": "npy",
    ".npz": "npz",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".he5": "hdf5",
    ".mat": "mat",
    ".tif": "geotiff",
    ".tiff": "geotiff",
    ".hdr": "envi",
    ".img": "envi",
    ".dat": "envi",
    ".raw": "envi",
    ".bsq": "envi",
    ".bil": "envi",
    ".bip": "envi",
}
_ENVI_DATA_EXTS = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip")
# ENVI interleave -> the axis order of the data file, as a permutation of "chw".
_ENVI_AXES = {"bsq": "chw", "bil": "hcw", "bip": "hwc"}
_WAVELENGTH_KEYS = ("wavelengths", "wavelength", "wl")
_MICROMETRE_UNITS = {
    "micrometers",
    "micrometer",
    "micrometres",
    "micrometre",
    "um",
    "µm",
    "microns",
    "micron",
}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_READ_OPTIONS = ("allow_nonfinite", "storage_options", "format")
_MAT_V5_LIMIT = 2**31 - 1024  # v5 variables are limited to 2 GiB; larger cubes go to v7.3


class CubeError(ValueError):
    """A cube could not be read or written; the message names the source (path/URI) and the problem."""


@dataclass
class CubeMeta:
    """What is known about a cube besides its values.

    Attributes:
        bands: number of bands C of the cube this describes.
        wavelengths: band centre wavelengths in nanometres (length C), when known.
        band_names: band names (length C), when known.
        crs: coordinate reference system, ``"EPSG:xxxx"`` or WKT (GeoTIFF, ENVI).
        transform: affine 6-tuple ``(a, b, c, d, e, f)`` mapping (col, row) pixel corners to CRS
            coordinates, as in rasterio/affine; for a windowed read it is the window's transform.
        nodata: the source's no-data value, in source units.
        dtype: the source dtype name (e.g. ``"uint16"``); the cube itself is always float32.
        value_range: (min, max) of the finite source values that were read, in source units.
        format: one of :data:`FORMATS`.
        layout: axis order the source was stored in (``"chw"``, ``"hwc"``, ``"hcw"`` for ENVI BIL).
        extras: format-specific details: ``source`` (the path/URI read), ``dataset`` (HDF5 dataset,
            npz key or .mat variable), ``mat_version``, ``interleave`` (ENVI), ``window``,
            ``full_shape`` (C, H, W of the whole source), ``warnings`` (metadata that was ignored).
    """

    bands: int = 0
    wavelengths: list[float] | None = None
    band_names: list[str] | None = None
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    nodata: float | None = None
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None
    format: str | None = None
    layout: str = "chw"
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Locations (local paths, file://, fsspec URIs)


@dataclass(frozen=True)
class _Loc:
    text: str  # as the caller wrote it, for messages
    fs: Any  # fsspec AbstractFileSystem
    path: str  # path inside fs

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def with_path(self, path: str) -> _Loc:
        """The location of another file on the same filesystem."""
        return _Loc(path if self.local else self.fs.unstrip_protocol(path), self.fs, path)

    def open(self, mode: str = "rb") -> Any:
        return self.fs.open(self.path, mode)


def _resolve(src: str | os.PathLike, storage_options: dict | None) -> _Loc:
    try:
        text = os.fspath(src)
    except TypeError:
        raise CubeError(f"{src!r}: not a path or URI") from None
    if not isinstance(text, str) or not text:
        raise CubeError(f"{src!r}: not a path or URI")
    try:
        fs, path = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except ValueError as exc:  # unknown protocol
        raise CubeError(f"{text}: cannot open: {exc}") from exc
    return _Loc(text, fs, path)


def _split_ext(path: str) -> tuple[str, str]:
    """Split ``path`` into (stem, lower-case extension), ignoring a URI query string."""
    name = posixpath.basename(path.replace("\\", "/"))
    stem, ext = posixpath.splitext(name)
    return stem, ext.lower()


def detect_format(path: str) -> str:
    """Return the cube format of ``path`` from its extension (case-insensitive).

    Args:
        path: local path or URI, e.g. ``"s3://bucket/scene.tif"``.

    Returns:
        One of :data:`FORMATS`: ``.npy`` -> npy, ``.npz`` -> npz, ``.h5/.hdf5/.he5`` -> hdf5,
        ``.mat`` -> mat, ``.tif/.tiff`` -> geotiff, ``.hdr/.img/.dat/.raw/.bsq/.bil/.bip`` -> envi.

    Raises:
        CubeError: the extension is missing or not supported (the message lists the supported ones).
    """
    text = os.fspath(path)
    if "://" in text:
        text = text.split("?", 1)[0]
    _, ext = _split_ext(text)
    fmt = _EXTENSIONS.get(ext)
    if fmt is None:
        what = f"extension {ext!r}" if ext else "no file extension"
        raise CubeError(
            f"{text}: unsupported format ({what}); supported extensions: {', '.join(sorted(_EXTENSIONS))}"
        )
    return fmt


# --------------------------------------------------------------------------------------------------
# Sources: an opened file that can read (bands, window) blocks


@dataclass
class _Source:
    shape: tuple[int, int, int]  # (C, H, W) of the whole source
    meta: CubeMeta
    # read(window=(row0, col0, height, width), bands=list or None) -> (c, h, w) array in source dtype
    read: Callable[[tuple[int, int, int, int], list[int] | None], np.ndarray]


@dataclass
class _ShapeOnly:
    """Stands in for an array when only its shape is wanted (nothing is read)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _read_block(
    arr: Any, axes: str, window: tuple[int, int, int, int], bands: list[int] | None
) -> np.ndarray:
    """Read bands x window from ``arr`` (numpy array, memmap or h5py.Dataset) whose axis order is
    ``axes`` (a permutation of ``"chw"``), touching only that block; returns (c, h, w)."""
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


def _check_numeric(dtype: np.dtype, src: str) -> None:
    if dtype.kind not in "biuf":
        raise CubeError(f"{src}: values of dtype {dtype} are not real numbers")


def _check_cube_shape(shape: tuple[int, ...], src: str, what: str = "array") -> None:
    if len(shape) != 3:
        raise CubeError(
            f"{src}: not a cube: {len(shape)}-D {what} of shape {tuple(shape)}; "
            "expected 3-D (bands, rows, cols)"
        )


def _infer_layout(
    shape: tuple[int, int, int],
    requested: str | None,
    stored: str | None,
    n_wavelengths: int | None,
    default: str,
) -> str:
    """Apply the module's layout rule (see the module docstring) to a 3-D array shape."""
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


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        return _as_str(value.reshape(-1)[0])
    return str(value)


def _as_floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return [float(v) for v in arr] if arr.size else None


def _as_names(value: Any) -> list[str] | None:
    """Band names from an attribute, npz entry or MATLAB cell / char array."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=object).reshape(-1)
    names = []
    for item in arr:
        if isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size == 1 else "".join(str(x) for x in item.reshape(-1))
        names.append(_as_str(item).strip())
    return names or None


def _nm(wavelengths: list[float] | None, units: str | None) -> list[float] | None:
    if wavelengths is not None and units and units.strip().lower() in _MICROMETRE_UNITS:
        return [w * 1000.0 for w in wavelengths]
    return wavelengths


def _array_source(
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
) -> _Source:
    """Wrap a 3-D array-like (numpy, memmap, h5py.Dataset) as a source, applying the layout rule.

    ``reversed_axes`` is for .mat v7.3: the stored axes are MATLAB's in reverse order.
    """
    shape = tuple(int(n) for n in arr.shape)
    logical = shape[::-1] if reversed_axes else shape
    _check_cube_shape(logical, src)
    _check_numeric(np.dtype(arr.dtype), src)
    lay = _infer_layout(
        logical, layout, stored_layout, len(wavelengths) if wavelengths else None, default_layout
    )
    axes = lay[::-1] if reversed_axes else lay
    full = tuple(shape[axes.index(a)] for a in "chw")
    return _Source(
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
        read=lambda window, bands: _read_block(arr, axes, window, bands),
    )


def _pick(src: str, kind: str, candidates: dict[str, tuple[int, ...]], dataset: str | None) -> str:
    """Choose the cube among named arrays: ``dataset`` if given, else the only 3-D one."""
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


def _npy_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def _open_npy(loc: _Loc, stack: contextlib.ExitStack, opts: dict) -> _Source:
    with loc.open() as f:
        shape, _, dtype = _npy_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise CubeError(f"{loc.text}: the .npy holds Python objects, not numbers")
    needed = offset + math.prod(shape) * dtype.itemsize
    size = loc.fs.size(loc.path)
    if size < needed:
        raise CubeError(
            f"{loc.text}: truncated .npy: header declares {shape} {dtype.name} ({needed} bytes), "
            f"file has {size} bytes"
        )
    if opts["shape_only"]:
        arr: Any = _ShapeOnly(shape, dtype)
    elif loc.local:
        arr = np.load(loc.path, mmap_mode="r", allow_pickle=False)  # windowed reads touch only the block
    else:
        f = stack.enter_context(loc.open())
        arr = np.load(f, allow_pickle=False)
    return _array_source(loc.text, arr, "npy", layout=opts["layout"], default_layout="chw")


def _open_npz(loc: _Loc, stack: contextlib.ExitStack, opts: dict) -> _Source:
    zf = stack.enter_context(zipfile.ZipFile(stack.enter_context(loc.open())))
    members = {name[:-4]: name for name in zf.namelist() if name.endswith(".npy")}
    headers = {}
    for key, member in members.items():
        with zf.open(member) as f:
            headers[key] = _npy_header(f)

    def load(key: str) -> np.ndarray:
        with zf.open(members[key]) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    shapes = {k: h[0] for k, h in headers.items() if h[2].kind in "biuf"}
    key = _pick(loc.text, "array", shapes or {k: h[0] for k, h in headers.items()}, opts["dataset"])
    shape, _, dtype = headers[key]
    arr: Any = _ShapeOnly(shape, dtype) if opts["shape_only"] else load(key)
    others = {k for k in members if k != key}
    wl_key = next((k for k in _WAVELENGTH_KEYS if k in others and len(headers[k][0]) <= 2), None)
    wavelengths = _as_floats(load(wl_key)) if wl_key else None
    stored = _as_str(load("layout")) if "layout" in others else None
    names = _as_names(load("band_names")) if "band_names" in others else None
    return _array_source(
        loc.text,
        arr,
        "npz",
        layout=opts["layout"],
        default_layout="chw",
        stored_layout=stored,
        wavelengths=wavelengths,
        band_names=names,
        extras={"dataset": key},
    )


def _h5_attr(obj: Any, *names: str) -> Any:
    for name in names:
        if name in obj.attrs:
            return obj.attrs[name]
    return None


def _open_hdf5(loc: _Loc, stack: contextlib.ExitStack, opts: dict, *, mat73: bool = False) -> _Source:
    handle = loc.path if loc.local else stack.enter_context(loc.open())
    h5 = stack.enter_context(h5py.File(handle, "r"))
    datasets: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: Any) -> None:
        # MATLAB keeps cell/string contents under "#refs#"; those are never the cube.
        if isinstance(obj, h5py.Dataset) and not name.startswith("#") and obj.dtype.kind in "biuf":
            if mat73 and _as_str(obj.attrs.get("MATLAB_class")) in _MATLAB_NON_NUMERIC:
                return
            datasets[name] = obj

    h5.visititems(visit)
    kind = "variable" if mat73 else "dataset"
    shapes = {name: (ds.shape[::-1] if mat73 else ds.shape) for name, ds in datasets.items()}
    name = _pick(loc.text, kind, shapes, opts["dataset"])
    ds = datasets[name]

    wl = _h5_attr(ds, "wavelengths", "wavelength")
    units = _as_str(_h5_attr(ds, "wavelength_units"))
    if wl is None:
        parent = posixpath.dirname(name)
        for candidate in [posixpath.join(parent, k) for k in _WAVELENGTH_KEYS] + list(_WAVELENGTH_KEYS):
            if candidate != name and candidate in datasets and datasets[candidate].size < 100_000:
                wl = datasets[candidate][()]
                units = units or _as_str(_h5_attr(datasets[candidate], "units", "wavelength_units"))
                break
    transform = _as_floats(_h5_attr(ds, "transform"))
    nodata = _as_floats(_h5_attr(ds, "nodata"))
    extras: dict[str, Any] = {"dataset": name}
    if mat73:
        extras["mat_version"] = "7.3"
    return _array_source(
        loc.text,
        ds,
        "mat" if mat73 else "hdf5",
        layout=opts["layout"],
        default_layout="hwc" if mat73 else "chw",
        stored_layout=_as_str(_h5_attr(ds, "layout")),
        reversed_axes=mat73,
        wavelengths=_nm(_as_floats(wl), units),
        band_names=_as_names(_h5_attr(ds, "band_names")),
        extras=extras,
        crs=_as_str(_h5_attr(ds, "crs")),
        transform=tuple(transform) if transform and len(transform) >= 6 else None,
        nodata=nodata[0] if nodata else None,
    )


_MATLAB_NON_NUMERIC = ("cell", "struct", "char", "object", "function_handle", "sparse", "opaque")


def _is_mat73(loc: _Loc) -> bool:
    with loc.open() as f:
        head = f.read(520)
    return head.startswith(b"MATLAB 7.3") or head[512:520] == _HDF5_SIGNATURE or head[:8] == _HDF5_SIGNATURE


def _open_mat(loc: _Loc, stack: contextlib.ExitStack, opts: dict) -> _Source:
    if _is_mat73(loc):
        return _open_hdf5(loc, stack, opts, mat73=True)
    f = stack.enter_context(loc.open())
    listing = scipy.io.whosmat(f)
    classes = {name: cls for name, _, cls in listing}
    numeric = {name: shape for name, shape, cls in listing if cls not in _MATLAB_NON_NUMERIC}
    key = _pick(loc.text, "variable", numeric or {n: s for n, s, _ in listing}, opts["dataset"])
    if classes[key] in _MATLAB_NON_NUMERIC:
        raise CubeError(f"{loc.text}: variable {key!r} is a MATLAB {classes[key]}, not a numeric array")
    extras = {"dataset": key, "mat_version": "5"}
    if opts["shape_only"]:
        dtype = np.dtype(
            {"single": "float32", "double": "float64", "logical": "bool"}.get(classes[key], classes[key])
        )
        return _array_source(
            loc.text,
            _ShapeOnly(numeric[key], dtype),
            "mat",
            layout=opts["layout"],
            default_layout="hwc",
            extras=extras,
        )
    f.seek(0)
    wanted = [key, "band_names", "wavelength_units", *_WAVELENGTH_KEYS]
    variables = scipy.io.loadmat(f, variable_names=wanted)
    arr = variables.get(key)
    if not isinstance(arr, np.ndarray):
        raise CubeError(f"{loc.text}: variable {key!r} is not a numeric array")
    wl_key = next((k for k in _WAVELENGTH_KEYS if k != key and k in variables), None)
    units = _as_str(variables["wavelength_units"]) if "wavelength_units" in variables else None
    return _array_source(
        loc.text,
        arr,
        "mat",
        layout=opts["layout"],
        default_layout="hwc",
        wavelengths=_nm(_as_floats(variables[wl_key]), units) if wl_key else None,
        band_names=_as_names(variables["band_names"]) if "band_names" in variables else None,
        extras=extras,
    )


def _geotiff_wavelengths(ds: Any) -> list[float] | None:
    tags = {k.lower(): v for k, v in ds.tags().items()}
    units = tags.get("wavelength_units")
    if "wavelengths" in tags:
        values = _as_floats([v for v in tags["wavelengths"].replace(";", ",").split(",") if v.strip()])
        return _nm(values, units)
    per_band = []
    for i in range(1, ds.count + 1):
        band_tags = {k.lower(): v for k, v in ds.tags(i).items()}
        if "wavelength" not in band_tags:
            return None
        per_band.append(float(band_tags["wavelength"]))
        units = units or band_tags.get("wavelength_units")
    return _nm(per_band, units)


def _open_geotiff(loc: _Loc, stack: contextlib.ExitStack, opts: dict) -> _Source:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        ds = stack.enter_context(
            rasterio.open(loc.path) if loc.local else rasterio.open(loc.path, opener=loc.fs)
        )
    if ds.count == 0:
        raise CubeError(f"{loc.text}: zero bands")
    dtype = np.result_type(*ds.dtypes)
    _check_numeric(dtype, loc.text)
    georeferenced = ds.crs is not None or not ds.transform.is_identity
    names = list(ds.descriptions) if any(ds.descriptions) else None

    def read(window: tuple[int, int, int, int], bands: list[int] | None) -> np.ndarray:
        r0, c0, h, w = window
        indexes = [b + 1 for b in bands] if bands is not None else None
        return ds.read(indexes=indexes, window=rasterio.windows.Window(c0, r0, w, h), out_dtype=dtype)

    meta = CubeMeta(
        bands=ds.count,
        wavelengths=_geotiff_wavelengths(ds),
        band_names=[n or f"band_{i + 1}" for i, n in enumerate(names)] if names else None,
        crs=ds.crs.to_string() if ds.crs else None,
        transform=tuple(ds.transform)[:6] if georeferenced else None,
        nodata=ds.nodata,
        dtype=dtype.name,
        format="geotiff",
        layout="chw",
        extras={"tiff_interleave": (ds.profile.get("interleave") or "").lower() or None},
    )
    if any(v != 1 for v in ds.scales) or any(v != 0 for v in ds.offsets):
        # Values are returned as stored; physical = stored * scale + offset.
        meta.extras.update(scales=list(ds.scales), offsets=list(ds.offsets))
    return _Source(shape=(ds.count, ds.height, ds.width), meta=meta, read=read)


def _envi_pair(loc: _Loc) -> tuple[_Loc, _Loc]:
    """(header, data) locations of an ENVI file given either one; CubeError if one is missing."""
    root, ext = posixpath.splitext(loc.path)
    if ext.lower() == ".hdr":
        tried = [root + e for e in _ENVI_DATA_EXTS] + [root + e.upper() for e in _ENVI_DATA_EXTS if e]
        for path in tried:
            if loc.fs.isfile(path):
                return loc, loc.with_path(path)
        names = ", ".join(posixpath.basename(p) or "''" for p in tried[: len(_ENVI_DATA_EXTS)])
        raise CubeError(f"{loc.text}: ENVI header without its data file (looked for {names})")
    tried = [loc.path + ".hdr", root + ".hdr", loc.path + ".HDR", root + ".HDR"]
    for path in tried:
        if loc.fs.isfile(path):
            return loc.with_path(path), loc
    raise CubeError(
        f"{loc.text}: ENVI data file without its header (looked for "
        f"{', '.join(posixpath.basename(p) for p in tried[:2])})"
    )


def _envi_transform(header: dict) -> tuple[float, ...] | None:
    info = header.get("map info")
    if not isinstance(info, list) or len(info) < 7:
        return None
    try:
        ref_x, ref_y, east, north, dx, dy = (float(v) for v in info[1:7])
    except ValueError:
        return None
    # ENVI reference pixels are 1-based, (1, 1) being the upper-left corner of the first pixel.
    return (dx, 0.0, east - (ref_x - 1) * dx, 0.0, -dy, north + (ref_y - 1) * dy)


def _envi_utm_crs(header: dict) -> str | None:
    """EPSG code of a WGS-84 UTM ``map info`` (``{UTM, x, y, e, n, dx, dy, zone, North|South, WGS-84}``)."""
    info = header.get("map info")
    if not isinstance(info, list) or len(info) < 10 or info[0].strip().upper() != "UTM":
        return None
    if info[9].strip().upper().replace("-", "") != "WGS84":
        return None
    try:
        zone = int(info[7])
    except ValueError:
        return None
    hemisphere = 6 if info[8].strip().lower().startswith("n") else 7
    return f"EPSG:32{hemisphere}{zone:02d}" if 1 <= zone <= 60 else None


def _open_envi(loc: _Loc, stack: contextlib.ExitStack, opts: dict) -> _Source:
    hdr_loc, data_loc = _envi_pair(loc)
    if hdr_loc.local:
        hdr_path, data_path = hdr_loc.path, data_loc.path
    else:  # memmap needs local files
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="hsivar-envi-"))
        hdr_path = os.path.join(tmp, "cube.hdr")
        data_path = os.path.join(tmp, "cube.img")
        hdr_loc.fs.get_file(hdr_loc.path, hdr_path)
        if not opts["shape_only"]:
            data_loc.fs.get_file(data_loc.path, data_path)
    if os.path.getsize(hdr_path) == 0:
        raise CubeError(f"{hdr_loc.text}: empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spectral warns about capitalised keys; they are lower-cased anyway
        header = envi.read_envi_header(hdr_path)
    missing = [k for k in ("samples", "lines", "bands", "data type") if k not in header]
    if missing:
        raise CubeError(f"{hdr_loc.text}: ENVI header lacks {', '.join(missing)}")
    try:
        width, height, count = int(header["samples"]), int(header["lines"]), int(header["bands"])
        offset = int(header.get("header offset", 0))
        big_endian = int(header.get("byte order", 0)) == 1
        type_code = str(header["data type"]).strip()
    except (TypeError, ValueError) as exc:
        raise CubeError(f"{hdr_loc.text}: malformed ENVI header: {exc}") from exc
    if type_code not in envi.envi_to_dtype:
        raise CubeError(f"{hdr_loc.text}: unsupported ENVI data type {type_code}")
    dtype = np.dtype(envi.envi_to_dtype[type_code]).newbyteorder(">" if big_endian else "<")
    _check_numeric(dtype, hdr_loc.text)
    interleave = str(header.get("interleave", "bsq")).strip().lower()
    if interleave not in _ENVI_AXES:
        raise CubeError(f"{hdr_loc.text}: unknown ENVI interleave {interleave!r}")
    if count == 0:
        raise CubeError(f"{hdr_loc.text}: zero bands")
    axes = _ENVI_AXES[interleave]
    dims = {"c": count, "h": height, "w": width}
    stored_shape = tuple(dims[a] for a in axes)
    needed = offset + math.prod(stored_shape) * dtype.itemsize
    size = data_loc.fs.size(data_loc.path)
    if size < needed:
        raise CubeError(
            f"{data_loc.text}: truncated ENVI data file: header declares {count} bands x {height} x {width} "
            f"{dtype.name} ({needed} bytes with offset), file has {size} bytes"
        )
    arr: Any
    if opts["shape_only"] or 0 in stored_shape:
        arr = _ShapeOnly(stored_shape, dtype)
    else:
        arr = np.memmap(data_path, dtype=dtype, mode="r", offset=offset, shape=stored_shape)

    wavelengths = _as_floats(header.get("wavelength"))
    names = header.get("band names")
    nodata = _as_floats(header.get("data ignore value"))
    css = header.get("coordinate system string")
    crs = ",".join(css) if isinstance(css, list) else css
    if not crs:
        crs = _envi_utm_crs(header)
    extras = {"interleave": interleave, "header": hdr_loc.text, "data_file": data_loc.text}
    if "reflectance scale factor" in header:
        extras["reflectance_scale_factor"] = float(header["reflectance scale factor"])
    meta = CubeMeta(
        bands=count,
        wavelengths=_nm(wavelengths, header.get("wavelength units")),
        band_names=[str(n) for n in names] if isinstance(names, list) else None,
        crs=crs or None,
        transform=_envi_transform(header),
        nodata=nodata[0] if nodata else None,
        dtype=dtype.name,
        format="envi",
        layout=axes,
        extras=extras,
    )
    return _Source(
        shape=(count, height, width),
        meta=meta,
        read=lambda window, bands: _read_block(arr, axes, window, bands),
    )


_OPENERS: dict[str, Callable[[_Loc, contextlib.ExitStack, dict], _Source]] = {
    "npy": _open_npy,
    "npz": _open_npz,
    "hdf5": _open_hdf5,
    "mat": _open_mat,
    "geotiff": _open_geotiff,
    "envi": _open_envi,
}
# Library exceptions that mean "this file is not what it claims to be"; turned into CubeError.
_LIBRARY_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    EOFError,
    TypeError,
    NotImplementedError,
    zipfile.BadZipFile,
    rasterio.errors.RasterioError,
    scipy.io.matlab.MatReadError,
    envi.EnviException,
)


def _parse_read_options(options: dict) -> tuple[bool, dict | None, str | None]:
    unknown = sorted(set(options) - set(_READ_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(unknown)}; known: {', '.join(_READ_OPTIONS)}")
    fmt = options.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise CubeError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return bool(options.get("allow_nonfinite", False)), options.get("storage_options"), fmt


@contextlib.contextmanager
def _open_source(
    src: str | os.PathLike,
    *,
    layout: str | None,
    dataset: str | None,
    fmt: str | None,
    storage_options: dict | None,
    shape_only: bool,
) -> Iterator[_Source]:
    loc = _resolve(src, storage_options)
    if layout is not None and layout not in LAYOUTS:
        raise CubeError(f"{loc.text}: impossible layout={layout!r}; expected one of {', '.join(LAYOUTS)}")
    if fmt is None:
        _, ext = _split_ext(loc.path)
        if ext not in _EXTENSIONS and loc.fs.isfile(loc.path + ".hdr"):
            fmt = "envi"  # ENVI data file without an extension, e.g. "scene" + "scene.hdr"
        else:
            fmt = detect_format(loc.text)
    try:
        exists = loc.fs.isfile(loc.path)
        size = loc.fs.size(loc.path) if exists else None
    except OSError as exc:
        raise CubeError(f"{loc.text}: cannot access: {exc}") from exc
    if not exists:
        raise CubeError(f"{loc.text}: no such file")
    if size == 0:
        raise CubeError(f"{loc.text}: empty file (0 bytes)")
    opts = {"layout": layout, "dataset": dataset, "shape_only": shape_only}
    with contextlib.ExitStack() as stack:
        try:
            source = _OPENERS[fmt](loc, stack, opts)
        except CubeError:
            raise
        except _LIBRARY_ERRORS as exc:
            raise CubeError(f"{loc.text}: cannot read as {fmt}: {type(exc).__name__}: {exc}") from exc
        source.meta.extras["source"] = loc.text
        c, h, w = source.shape
        if c == 0:
            raise CubeError(f"{loc.text}: zero bands (source layout {source.meta.layout!r})")
        if h == 0 or w == 0:
            raise CubeError(f"{loc.text}: empty raster ({h} x {w} pixels)")
        yield source


def _check_window(
    window: Sequence[int] | None, shape: tuple[int, int, int], src: str
) -> tuple[int, int, int, int]:
    _, height, width = shape
    if window is None:
        return (0, 0, height, width)
    try:
        r0, c0, h, w = (int(v) for v in window)
    except (TypeError, ValueError):
        raise CubeError(f"{src}: window must be (row0, col0, height, width), got {window!r}") from None
    if h <= 0 or w <= 0 or r0 < 0 or c0 < 0 or r0 + h > height or c0 + w > width:
        raise CubeError(f"{src}: window {(r0, c0, h, w)} does not fit in the {height} x {width} raster")
    return (r0, c0, h, w)


def _check_bands(bands: Sequence[int] | None, count: int, src: str) -> list[int] | None:
    if bands is None:
        return None
    indices = [int(b) for b in bands]
    if not indices:
        raise CubeError(f"{src}: zero bands requested (bands=[])")
    bad = [b for b in indices if not 0 <= b < count]
    if bad:
        raise CubeError(f"{src}: band indices {bad} out of range for {count} bands")
    return indices


def _subset_meta(meta: CubeMeta, indices: list[int] | None, src: str) -> CubeMeta:
    """Copy of ``meta`` restricted to ``indices``; per-band lists of the wrong length are dropped."""
    meta = dataclasses.replace(meta, extras=dict(meta.extras))
    count = meta.bands
    for name in ("wavelengths", "band_names"):
        values = getattr(meta, name)
        if values is not None and len(values) != count:
            meta.extras.setdefault("warnings", []).append(
                f"ignored {name}: {len(values)} values for {count} bands"
            )
            setattr(meta, name, None)
        elif values is not None and indices is not None:
            setattr(meta, name, [values[i] for i in indices])
    if indices is not None:
        meta.bands = len(indices)
    return meta


def _window_transform(transform: tuple[float, ...], window: tuple[int, int, int, int]) -> tuple[float, ...]:
    return tuple(Affine(*transform[:6]) @ Affine.translation(window[1], window[0]))[:6]


def read_cube(
    src: str | os.PathLike,
    *,
    layout: str | None = None,
    dataset: str | None = None,
    window: tuple[int, int, int, int] | None = None,
    bands: Sequence[int] | None = None,
    **options: Any,
) -> tuple[np.ndarray, CubeMeta]:
    """Read a hyperspectral cube (or a window / band subset of it) as float32 (C, H, W).

    Args:
        src: local path, ``file://`` URI or fsspec URI (``s3://``, ``memory://``, ...). The format comes
            from the extension (:func:`detect_format`); an ENVI file may be named by its header or data file.
        layout: ``"chw"`` or ``"hwc"``, overriding the layout rule for array formats (module docstring).
        dataset: HDF5 dataset path, npz key or .mat variable holding the cube; default: the only 3-D one.
        window: ``(row0, col0, height, width)`` in pixels; only that block is read where the format
            allows (GeoTIFF, HDF5, .mat v7.3, ENVI, local .npy).
        bands: band indices (0-based, any order) to read; default all.
        **options: ``allow_nonfinite=True`` to accept NaN/Inf values; ``storage_options={...}`` for
            fsspec; ``format="npy"|...`` to override the extension.

    Returns:
        ``(cube, meta)``: cube of shape (C, H, W), dtype float32, in source units (C = len(bands)
        when given; H, W the window's size when given); meta with the wavelengths (nm) and names of
        the bands read, source dtype, value range of the values read, and for GeoTIFF/ENVI the CRS
        and the transform of the window.

    Raises:
        CubeError: missing, empty, truncated or unreadable file; not a 3-D cube; zero bands;
            impossible ``layout``; unknown ``dataset``; window or band indices out of range; NaN/Inf
            values (with their count) unless ``allow_nonfinite``.
    """
    allow_nonfinite, storage_options, fmt = _parse_read_options(options)
    with _open_source(
        src, layout=layout, dataset=dataset, fmt=fmt, storage_options=storage_options, shape_only=False
    ) as source:
        text = source.meta.extras["source"]
        win = _check_window(window, source.shape, text)
        indices = _check_bands(bands, source.shape[0], text)
        try:
            raw = source.read(win, indices)
        except _LIBRARY_ERRORS as exc:
            raise CubeError(f"{text}: cannot read data: {type(exc).__name__}: {exc}") from exc

    with np.errstate(over="ignore", invalid="ignore"):
        cube = np.ascontiguousarray(raw, dtype=np.float32)
    if not (cube.flags.owndata and cube.flags.writeable):
        cube = cube.copy()  # never hand out a read-only view of a memory-mapped file
    finite = np.isfinite(cube)
    bad = int(cube.size - np.count_nonzero(finite))
    if bad and not allow_nonfinite:
        raise CubeError(
            f"{text}: {bad} non-finite value(s) (NaN/Inf after conversion to float32) among {cube.size}; "
            "pass allow_nonfinite=True to read them anyway"
        )
    meta = _subset_meta(source.meta, indices, text)
    if not bad:
        meta.value_range = (float(raw.min()), float(raw.max()))
    elif bad < cube.size:
        meta.value_range = (float(cube[finite].min()), float(cube[finite].max()))
    if meta.transform is not None and window is not None:
        meta.transform = _window_transform(meta.transform, win)
    meta.extras["full_shape"] = source.shape
    if window is not None:
        meta.extras["window"] = win
    return cube, meta


def cube_shape(
    src: str | os.PathLike,
    *,
    layout: str | None = None,
    dataset: str | None = None,
    **options: Any,
) -> tuple[int, int, int]:
    """Return the (C, H, W) shape (bands, rows, columns) of a cube without reading its values.

    Only headers are read for .npy, .npz, .mat, HDF5, GeoTIFF and ENVI (remote ENVI copies the
    header only). Arguments as in :func:`read_cube`; ``allow_nonfinite`` is accepted and ignored.

    Raises:
        CubeError: as :func:`read_cube` for everything that can be told without the values.
    """
    _, storage_options, fmt = _parse_read_options(options)
    with _open_source(
        src, layout=layout, dataset=dataset, fmt=fmt, storage_options=storage_options, shape_only=True
    ) as source:
        return source.shape


# --------------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def _staged(finals: list[_Loc]) -> Iterator[list[str]]:
    """Yield local temporary paths for ``finals``; on success move them into place in order (local:
    ``os.replace`` in the same folder; remote: one put per file), on any error remove them."""
    if all(loc.local for loc in finals):
        temps = []
        for loc in finals:
            folder, name = os.path.split(loc.path)
            os.makedirs(folder or ".", exist_ok=True)
            stem, ext = os.path.splitext(name)
            temps.append(os.path.join(folder, f".{stem}.tmp-{uuid.uuid4().hex[:12]}{ext}"))
        try:
            yield temps
            for tmp, loc in zip(temps, finals):
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)  # the data is on disk before the name points at it
                finally:
                    os.close(fd)
                os.replace(tmp, loc.path)
        finally:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="hsivar-write-") as folder:
            temps = [
                os.path.join(folder, f"{i}-{posixpath.basename(loc.path)}") for i, loc in enumerate(finals)
            ]
            yield temps
            for tmp, loc in zip(temps, finals):
                loc.fs.put_file(tmp, loc.path)


def _as_cube(cube: Any, dst: str) -> np.ndarray:
    try:
        arr = np.asarray(cube)
    except Exception as exc:  # anything array-like may fail its own way
        raise CubeError(f"{dst}: cannot convert the cube to an array: {type(exc).__name__}: {exc}") from exc
    _check_cube_shape(arr.shape, dst, "cube")
    if arr.shape[0] == 0:
        raise CubeError(f"{dst}: cannot write a cube with zero bands (shape {arr.shape})")
    if 0 in arr.shape:
        raise CubeError(f"{dst}: cannot write an empty raster (shape {arr.shape})")
    _check_numeric(arr.dtype, dst)
    return arr


def _convert(arr: np.ndarray, dtype: np.dtype, dst: str) -> np.ndarray:
    """Cast to ``dtype``; integers are rounded and clipped to the dtype's range."""
    if dtype == arr.dtype:
        return arr
    if dtype.kind in "iu":
        if arr.dtype.kind == "f":
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise CubeError(f"{dst}: {bad} non-finite value(s) cannot be written as {dtype.name}")
            arr = np.rint(arr)
        info = np.iinfo(dtype)
        return np.clip(arr, info.min, info.max).astype(dtype)
    if dtype.kind in "fb":
        return arr.astype(dtype)
    raise CubeError(f"{dst}: cannot write values as dtype {dtype}")


def _write_npy(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    with open(paths[0], "wb") as f:
        np.save(f, arr)


def _dataset_key(meta: CubeMeta, default: str = "cube") -> str:
    key = meta.extras.get("dataset")
    return str(key) if key else default


def _write_npz(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    entries: dict[str, np.ndarray] = {_dataset_key(meta).replace("/", "_"): arr, "layout": np.array("chw")}
    if meta.wavelengths is not None:
        entries["wavelengths"] = np.asarray(meta.wavelengths, dtype=np.float64)
    if meta.band_names is not None:
        entries["band_names"] = np.asarray(meta.band_names, dtype=str)
    with open(paths[0], "wb") as f:
        np.savez_compressed(f, **entries)


def _write_hdf5(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    c, h, w = arr.shape
    with h5py.File(paths[0], "w") as h5:
        ds = h5.create_dataset(
            _dataset_key(meta),
            data=arr,
            chunks=(1, min(h, 256), min(w, 256)),  # one band x tile: cheap windows and band subsets
            compression="gzip",
            compression_opts=4,
            shuffle=True,
        )
        ds.attrs["layout"] = "chw"
        if meta.wavelengths is not None:
            ds.attrs["wavelengths"] = np.asarray(meta.wavelengths, dtype=np.float64)
            ds.attrs["wavelength_units"] = "nm"
        if meta.band_names is not None:
            ds.attrs["band_names"] = np.asarray(meta.band_names, dtype=h5py.string_dtype())
        if meta.crs is not None:
            ds.attrs["crs"] = meta.crs
        if meta.transform is not None:
            ds.attrs["transform"] = np.asarray(meta.transform[:6], dtype=np.float64)
        if meta.nodata is not None:
            ds.attrs["nodata"] = float(meta.nodata)


_MATLAB_CLASS = {
    "float64": "double", "float32": "single", "int8": "int8", "uint8": "uint8", "int16": "int16",
    "uint16": "uint16", "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
}  # fmt: skip


def _write_mat73(path: str, variables: dict[str, np.ndarray]) -> None:
    """Write numeric variables as a MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header and axes
    stored in reverse order (MATLAB is column-major)."""
    with h5py.File(path, "w", userblock_size=512) as h5:
        for name, value in variables.items():
            value = np.asarray(value)
            ds = h5.create_dataset(name, data=np.ascontiguousarray(value.T))
            ds.attrs["MATLAB_class"] = np.bytes_(_MATLAB_CLASS[value.dtype.name])
    text = b"MATLAB 7.3 MAT-file, Platform: hsivar, Created by: hsivar.data.io HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header.ljust(512, b"\x00"))


def _write_mat(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    key = _dataset_key(meta)
    if not key.isidentifier():
        key = "cube"
    hwc = np.transpose(arr, (1, 2, 0))  # MATLAB convention: rows x cols x bands
    variables: dict[str, Any] = {key: hwc}
    if meta.wavelengths is not None:
        variables["wavelengths"] = np.asarray(meta.wavelengths, dtype=np.float64).reshape(1, -1)
    if meta.extras.get("mat_version") == "7.3" or arr.nbytes >= _MAT_V5_LIMIT:
        _write_mat73(paths[0], variables)  # band names (cell arrays) are not kept in v7.3
        return
    if meta.band_names is not None:
        variables["band_names"] = np.asarray(meta.band_names, dtype=object).reshape(1, -1)
    with open(paths[0], "wb") as f:
        scipy.io.savemat(f, variables, do_compression=True)


def _write_geotiff(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    c, h, w = arr.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": c,
        "dtype": arr.dtype.name,
        "interleave": "band",
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if h >= 256 and w >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if meta.crs is not None:
        profile["crs"] = CRS.from_user_input(meta.crs)
    if meta.transform is not None:
        profile["transform"] = Affine(*meta.transform[:6])
    if meta.nodata is not None:
        profile["nodata"] = meta.nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(paths[0], "w", **profile) as ds:
            ds.write(arr)
            if meta.band_names is not None:
                for i, name in enumerate(meta.band_names, start=1):
                    ds.set_band_description(i, str(name))
            if meta.wavelengths is not None:
                ds.update_tags(
                    wavelengths=",".join(repr(float(v)) for v in meta.wavelengths), wavelength_units="nm"
                )
                for i, wl in enumerate(meta.wavelengths, start=1):
                    ds.update_tags(i, wavelength=repr(float(wl)), wavelength_units="nm")


def _write_envi(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    data_path, hdr_path = paths
    interleave = str(meta.extras.get("interleave") or "bsq").lower()
    if interleave not in _ENVI_AXES:
        interleave = "bsq"
    axes = _ENVI_AXES[interleave]
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    with open(data_path, "wb") as f:
        np.ascontiguousarray(np.transpose(little, ["chw".index(a) for a in axes])).tofile(f)
    c, h, w = arr.shape
    header: dict[str, Any] = {
        "samples": w,
        "lines": h,
        "bands": c,
        "header offset": 0,
        "file type": "ENVI Standard",
        "data type": envi.dtype_to_envi[arr.dtype.char],
        "interleave": interleave,
        "byte order": 0,
    }
    if meta.wavelengths is not None:
        header["wavelength"] = [repr(float(v)) for v in meta.wavelengths]
        header["wavelength units"] = "Nanometers"
    if meta.band_names is not None:
        header["band names"] = [str(n) for n in meta.band_names]
    if meta.nodata is not None:
        header["data ignore value"] = repr(float(meta.nodata))
    if meta.transform is not None:
        a, b, x0, d, e, y0 = meta.transform[:6]
        header["map info"] = ["Arbitrary", 1, 1, repr(x0), repr(y0), repr(a), repr(-e)]
    if meta.crs is not None:
        header["coordinate system string"] = "{" + CRS.from_user_input(meta.crs).to_wkt() + "}"
    envi.write_envi_header(hdr_path, header)


def _envi_targets(loc: _Loc) -> list[_Loc]:
    """[data, header] locations for writing ENVI to ``loc`` (named by header or data file)."""
    root, ext = posixpath.splitext(loc.path)
    if ext.lower() == ".hdr":
        return [loc.with_path(root + ".img"), loc]
    if ext.lower() in _ENVI_DATA_EXTS:
        return [loc, loc.with_path(root + ".hdr")]
    return [loc, loc.with_path(loc.path + ".hdr")]  # extension-less data file


_WRITERS: dict[str, Callable[[list[str], np.ndarray, CubeMeta], None]] = {
    "npy": _write_npy,
    "npz": _write_npz,
    "hdf5": _write_hdf5,
    "mat": _write_mat,
    "geotiff": _write_geotiff,
    "envi": _write_envi,
}
_SUPPORTED_DTYPES = {
    "geotiff": set("uint8 int8 uint16 int16 uint32 int32 int64 uint64 float32 float64".split()),
    "envi": {np.dtype(v).name for v in envi.envi_to_dtype.values() if np.dtype(v).kind in "iuf"},
}


def write_cube(
    dst: str | os.PathLike,
    cube: np.ndarray,
    meta: CubeMeta | None = None,
    *,
    format: str | None = None,  # noqa: A002  (the interface's name)
    dtype: str | None = None,
    storage_options: dict | None = None,
) -> None:
    """Write a (C, H, W) cube atomically, in the format of ``dst``'s extension.

    Args:
        dst: local path, ``file://`` URI or fsspec URI. Parent folders of local paths are created.
            ENVI writes two files: ``x.hdr`` + ``x.img`` (``dst`` may name either).
        cube: array (C, H, W) = (bands, rows, columns), any real dtype (e.g. the float32 cube from
            :func:`read_cube`).
        meta: band wavelengths (nm) / names, CRS, transform, nodata to store where the format can hold
            them (GeoTIFF: all; ENVI: all, north-up transforms; HDF5: attributes; npz / .mat:
            wavelengths and names; .npy: none). ``meta.extras["dataset"]`` names the HDF5 dataset /
            npz key / .mat variable (default ``"cube"``), ``meta.extras["interleave"]`` the ENVI
            interleave (default BSQ). .mat files store the cube MATLAB-style as H x W x C.
        format: one of :data:`FORMATS`, overriding the extension.
        dtype: dtype written, e.g. ``meta.dtype`` to go back to the source dtype; integer dtypes
            round and clip to their range. Default: the cube's own dtype.
        storage_options: fsspec options for remote ``dst``.

    The data go to a temporary name in the same folder (remote: a local temporary file) and are
    renamed (remote: put) into place only once complete; on any error no file is left under the
    final name (ENVI: the data file is moved first, the header last) and temporaries are removed.

    Raises:
        CubeError: not a non-empty 3-D numeric cube; unsupported format or dtype; metadata not
            matching the band count; non-finite values for an integer dtype; the library refused.
    """
    loc = _resolve(dst, storage_options)
    fmt = format or detect_format(loc.text)
    if fmt not in FORMATS:
        raise CubeError(f"{loc.text}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    arr = _as_cube(cube, loc.text)
    meta = meta if meta is not None else CubeMeta(bands=arr.shape[0])
    for name in ("wavelengths", "band_names"):
        values = getattr(meta, name)
        if values is not None and len(values) != arr.shape[0]:
            raise CubeError(
                f"{loc.text}: meta.{name} has {len(values)} entries for a {arr.shape[0]}-band cube"
            )
    try:
        target = np.dtype(dtype) if dtype is not None else arr.dtype
    except TypeError as exc:
        raise CubeError(f"{loc.text}: unknown dtype {dtype!r}") from exc
    if target == np.bool_ or target == np.float16:
        target = np.dtype(np.uint8 if target == np.bool_ else np.float32)
    target = target.newbyteorder("=")
    if fmt in _SUPPORTED_DTYPES and target.name not in _SUPPORTED_DTYPES[fmt]:
        raise CubeError(f"{loc.text}: {fmt} cannot store dtype {target.name}")
    if fmt == "envi" and meta.transform is not None and (meta.transform[1] or meta.transform[3]):
        raise CubeError(f"{loc.text}: ENVI map info holds north-up transforms only; write GeoTIFF instead")
    arr = _convert(arr, target, loc.text)
    finals = _envi_targets(loc) if fmt == "envi" else [loc]
    try:
        with _staged(finals) as temps:
            _WRITERS[fmt](temps, arr, meta)
    except CubeError:
        raise
    except (*_LIBRARY_ERRORS, rasterio.errors.CRSError) as exc:
        raise CubeError(f"{loc.text}: cannot write {fmt}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# Bands


def select_bands(cube: np.ndarray, meta: CubeMeta, indices: Sequence[int]) -> tuple[np.ndarray, CubeMeta]:
    """Keep bands ``indices`` (0-based, any order) of a (C, H, W) cube.

    Returns:
        ``(cube[indices], meta)`` with ``meta.bands``, ``wavelengths`` and ``band_names`` subset to match.

    Raises:
        CubeError: no indices, or an index outside ``[0, C)``.
    """
    src = meta.extras.get("source", "cube")
    picked = _check_bands(indices, cube.shape[0], src)
    meta = dataclasses.replace(meta, bands=cube.shape[0])
    return cube[picked], _subset_meta(meta, picked, src)


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
