"""Read and write hyperspectral cubes in any format of :data:`hsivar.io.registry.FORMAT_TABLE`.

Every read returns the cube as a ``float32`` array of shape ``(C, H, W)`` (bands, rows, columns) in the
units of the source values (no normalisation), plus a :class:`CubeMeta` holding what is known about the
bands (centre wavelengths in nanometres, names), the georeferencing (GeoTIFF, ENVI), the source dtype and
the (min, max) of the values read. Array formats follow the layout rule of :mod:`hsivar.io.layout`.

Sources are local paths, ``file://`` URIs or any fsspec URI (``s3://`` through s3fs at run time,
``memory://`` in tests). Remote HDF5 / .mat v7.3 / GeoTIFF files are read lazily through fsspec file
objects (only the bytes needed); remote ENVI files are copied to a temporary folder; other remote
formats are read whole.

Writes go to the format of the destination's extension, are atomic (:func:`hsivar.io.location.staged`)
and keep the georeferencing, band names and wavelengths wherever the format can hold them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from affine import Affine

from hsivar.io.layout import (
    LAYOUTS,
    OpenOptions,
    Source,
    check_bands,
    check_cube_shape,
    check_numeric,
    subset_meta,
)
from hsivar.io.location import resolve_location, staged
from hsivar.io.masks import check_missing
from hsivar.io.meta import CubeError, CubeMeta
from hsivar.io.registry import FORMAT_TABLE, Format, detect_file_format, detect_format, output_name

__all__ = ["cube_shape", "read_cube", "write_cube"]

_READ_OPTIONS = ("allow_nonfinite", "storage_options", "format")
# Library exceptions that mean "this file is not what it claims to be", whatever the format; each
# format adds its own (Format.errors). All are turned into CubeError.
_LIBRARY_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    EOFError,
    TypeError,
    NotImplementedError,
)


def _row(fmt: str, src: str | None = None) -> Format:
    """The table row of ``fmt``; CubeError (prefixed by ``src`` when given) for an unknown name."""
    row = FORMAT_TABLE.get(fmt)
    if row is None:
        prefix = f"{src}: " if src is not None else ""
        raise CubeError(f"{prefix}unknown format {fmt!r}; expected one of {', '.join(FORMAT_TABLE)}")
    return row


def _parse_read_options(options: dict) -> tuple[bool, dict | None, str | None]:
    unknown = sorted(set(options) - set(_READ_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(unknown)}; known: {', '.join(_READ_OPTIONS)}")
    fmt = options.get("format")
    if fmt is not None:
        _row(fmt)
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
) -> Iterator[tuple[Source, Format]]:
    """Open ``src`` with its format's opener; yields the source and the format's row."""
    loc = resolve_location(src, storage_options)
    if layout is not None and layout not in LAYOUTS:
        raise CubeError(f"{loc.text}: impossible layout={layout!r}; expected one of {', '.join(LAYOUTS)}")
    row = _row(fmt if fmt is not None else detect_file_format(loc))
    try:
        exists = loc.fs.isfile(loc.path)
        size = loc.fs.size(loc.path) if exists else None
    except OSError as exc:
        raise CubeError(f"{loc.text}: cannot access: {exc}") from exc
    if not exists:
        raise CubeError(f"{loc.text}: no such file")
    if size == 0:
        raise CubeError(f"{loc.text}: empty file (0 bytes)")
    opts = OpenOptions(layout=layout, dataset=dataset, shape_only=shape_only)
    with contextlib.ExitStack() as stack:
        try:
            source = row.open(loc, stack, opts)
        except CubeError:
            raise
        except (*_LIBRARY_ERRORS, *row.errors) as exc:
            raise CubeError(f"{loc.text}: cannot read as {row.name}: {type(exc).__name__}: {exc}") from exc
        source.meta.extras["source"] = loc.text
        c, h, w = source.shape
        if c == 0:
            raise CubeError(f"{loc.text}: zero bands (source layout {source.meta.layout!r})")
        if h == 0 or w == 0:
            raise CubeError(f"{loc.text}: empty raster ({h} x {w} pixels)")
        yield source, row


def _check_window(window: Sequence[int] | None, shape: tuple[int, int, int], src: str) -> tuple[int, int, int, int]:
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
            from the extension (:func:`hsivar.io.detect_format`); an ENVI file may be named by its header
            or data file.
        layout: ``"chw"`` or ``"hwc"``, overriding the layout rule for array formats (:mod:`hsivar.io.layout`).
        dataset: HDF5 dataset path, npz key or .mat variable holding the cube; default: the only 3-D one.
        window: ``(row0, col0, height, width)`` in pixels; only that block is read where the format
            allows (GeoTIFF, HDF5, .mat v7.3, ENVI, local .npy).
        bands: band indices (0-based, any order) to read; default all.
        **options: ``allow_nonfinite=True`` to accept NaN/Inf values; ``storage_options={...}`` for
            fsspec; ``format="npy"|...`` to override the extension.

    Returns:
        ``(cube, meta)``: cube of shape (C, H, W), dtype float32, in source units (C = len(bands)
        when given; H, W the window's size when given); meta with the wavelengths (nm) and names of
        the bands read, source dtype, value range of the values read, for GeoTIFF/ENVI the CRS
        and the transform of the window, and ``meta.missing``: the (C, H, W) bool entries the file's
        bad band list or mask marks as not observed (:mod:`hsivar.io.masks`), or ``None``.

    Raises:
        CubeError: missing, empty, truncated or unreadable file; not a 3-D cube; zero bands;
            impossible ``layout``; unknown ``dataset``; window or band indices out of range; NaN/Inf
            values (with their count) outside the entries the file marks as not observed, unless
            ``allow_nonfinite``; a mask of the wrong shape or a bad band list of the wrong length
            (the message names the file and both shapes).
    """
    allow_nonfinite, storage_options, fmt = _parse_read_options(options)
    with _open_source(
        src, layout=layout, dataset=dataset, fmt=fmt, storage_options=storage_options, shape_only=False
    ) as (source, row):
        text = source.meta.extras["source"]
        win = _check_window(window, source.shape, text)
        indices = check_bands(bands, source.shape[0], text)
        try:
            raw = source.read(win, indices)
            missing = source.read_missing(win, indices) if source.read_missing is not None else None
        except (*_LIBRARY_ERRORS, *row.errors) as exc:
            raise CubeError(f"{text}: cannot read data: {type(exc).__name__}: {exc}") from exc

    with np.errstate(over="ignore", invalid="ignore"):
        cube = np.ascontiguousarray(raw, dtype=np.float32)
    if not (cube.flags.owndata and cube.flags.writeable):
        cube = cube.copy()  # never hand out a read-only view of a memory-mapped file
    if missing is not None and not missing.any():
        missing = None
    finite = np.isfinite(cube)
    bad = int(cube.size - np.count_nonzero(finite))
    # entries the file marks as not observed may hold anything
    refused = bad if not bad or missing is None else int(np.count_nonzero(~finite & ~missing))
    if refused and not allow_nonfinite:
        raise CubeError(
            f"{text}: {refused} non-finite value(s) (NaN/Inf after conversion to float32) among {cube.size}; "
            "pass allow_nonfinite=True to read them anyway"
        )
    meta = subset_meta(source.meta, indices)
    meta.missing = missing
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
    ) as (source, _):
        return source.shape


def _as_cube(cube: Any, dst: str) -> np.ndarray:
    try:
        arr = np.asarray(cube)
    except Exception as exc:  # anything array-like may fail its own way
        raise CubeError(f"{dst}: cannot convert the cube to an array: {type(exc).__name__}: {exc}") from exc
    check_cube_shape(arr.shape, dst, "cube")
    if arr.shape[0] == 0:
        raise CubeError(f"{dst}: cannot write a cube with zero bands (shape {arr.shape})")
    if 0 in arr.shape:
        raise CubeError(f"{dst}: cannot write an empty raster (shape {arr.shape})")
    check_numeric(arr.dtype, dst)
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
            wavelengths and names; .npy: none). ``meta.missing`` (C, H, W) bool, the entries not
            observed, as :mod:`hsivar.io.masks` says (whole bad bands as ``bbl``; other entries as a
            mask in HDF5, .mat and GeoTIFF; ENVI refuses those, .npy / .npz drop it).
            ``meta.extras["dataset"]`` names the HDF5 dataset / npz key / .mat variable (default
            ``"cube"``), ``meta.extras["interleave"]`` the ENVI interleave (default BSQ). .mat files
            store the cube MATLAB-style as H x W x C.
        format: one of :data:`hsivar.io.WRITE_FORMATS`, overriding the extension.
        dtype: dtype written, e.g. ``meta.dtype`` to go back to the source dtype; integer dtypes
            round and clip to their range. Default: the cube's own dtype.
        storage_options: fsspec options for remote ``dst``.

    The data go to a temporary name in the same folder (remote: a local temporary file) and are
    renamed (remote: put) into place only once complete; on any error no file is left under the
    final name (ENVI: the data file is moved first, the header last) and temporaries are removed.

    Raises:
        CubeError: not a non-empty 3-D numeric cube; unsupported format or dtype; metadata not
            matching the band count or the cube's shape; a mask the format cannot hold; non-finite
            values for an integer dtype; the library refused.
    """
    loc = resolve_location(dst, storage_options)
    row = _row(format or detect_format(loc.text), loc.text)
    if row.write is None:
        raise CubeError(f"{loc.text}: {row.name} is a sensor product format, read but never written; write the cube "
                        f"as {row.output_format} (e.g. to {output_name(posixpath.basename(loc.path))})")
    arr = _as_cube(cube, loc.text)
    meta = meta if meta is not None else CubeMeta(bands=arr.shape[0])
    for name in ("wavelengths", "band_names", "fwhm"):
        values = getattr(meta, name)
        if values is not None and len(values) != arr.shape[0]:
            raise CubeError(f"{loc.text}: meta.{name} has {len(values)} entries for a {arr.shape[0]}-band cube")
    try:
        target = np.dtype(dtype) if dtype is not None else arr.dtype
    except TypeError as exc:
        raise CubeError(f"{loc.text}: unknown dtype {dtype!r}") from exc
    if target == np.bool_ or target == np.float16:
        target = np.dtype(np.uint8 if target == np.bool_ else np.float32)
    target = target.newbyteorder("=")
    if row.dtypes is not None and target.name not in row.dtypes:
        raise CubeError(f"{loc.text}: {row.name} cannot store dtype {target.name} (it stores "
                        f"{', '.join(sorted(row.dtypes))}; pass dtype=, or write a GeoTIFF)")
    if row.band_counts is not None and arr.shape[0] not in row.band_counts:
        raise CubeError(f"{loc.text}: {row.name} stores {' or '.join(map(str, row.band_counts))} bands, the cube has "
                        f"{arr.shape[0]}: write a GeoTIFF instead")
    missing = check_missing(meta.missing, arr.shape, loc.text)
    if missing is not meta.missing:
        meta = dataclasses.replace(meta, missing=missing)
    problem = row.meta_problem(meta) if row.meta_problem is not None else None
    if problem:
        raise CubeError(f"{loc.text}: {problem}")
    arr = _convert(arr, target, loc.text)
    try:
        with staged(row.targets(loc)) as temps:
            row.write(temps, arr, meta)
    except CubeError:
        raise
    except (*_LIBRARY_ERRORS, *row.errors) as exc:
        raise CubeError(f"{loc.text}: cannot write {row.name}: {type(exc).__name__}: {exc}") from exc
