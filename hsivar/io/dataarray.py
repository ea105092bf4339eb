"""Cubes as labelled :class:`xarray.DataArray` objects, for notebook users.

A cube DataArray has the dims ``("band", "y", "x")`` and holds the (C, H, W) values in source units; what a
:class:`~hsivar.io.CubeMeta` knows travels with it:

- coord ``band`` (index of ``band``): the band names when known, else band indices (for
  :func:`open_dataarray` with ``bands=``: the source's band indices);
- coords ``wavelength`` and ``fwhm`` on ``band`` (float64, nm) when known;
- coords ``y`` / ``x``: pixel-centre map coordinates in CRS units when the transform is north-up
  (``b == d == 0``), else pixel indices (0-based rows / columns of the cube);
- coord ``missing`` on ``("band", "y", "x")`` (bool, True = not observed) when the source marks entries as
  not observed (``CubeMeta.missing``): ``da.where(~da.missing)`` turns them into NaN;
- attrs ``crs``, ``transform`` (rasterio/affine 6-tuple of the cube's pixel corners), ``nodata``, ``source``,
  ``format``, ``dtype`` (the source dtype), and ``dataset`` / ``interleave`` for writing back; only those that
  are known, so that ``da.to_netcdf`` accepts them (netCDF attributes cannot be ``None``).

:func:`to_cube` is the inverse (``write_cube(path, *to_cube(da))``); the transform it returns follows the
``y`` / ``x`` coordinates, so a slice ``da.isel(y=slice(10, 20))`` is written at its own place.
:meth:`hsivar.restore.Restorer.restore` accepts and returns such DataArrays.

xarray is imported by this module only: ``import hsivar.io`` does not import it (it would cost about 0.3 s,
and ``hsivar.io`` is imported by every entry point, :mod:`hsivar.restore` included); import
``hsivar.io.dataarray`` to use these functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from hsivar.io.cube import read_cube
from hsivar.io.masks import check_missing
from hsivar.io.meta import CubeError, CubeMeta

__all__ = ["DIMS", "NAME", "from_cube", "open_dataarray", "to_cube", "with_cube"]

DIMS = ("band", "y", "x")
"""The dims of a cube DataArray, in the (C, H, W) order of :func:`~hsivar.io.read_cube`."""

NAME = "cube"
"""The name of the DataArrays :func:`from_cube` builds."""

# CubeMeta.extras entries kept as attrs (strings write_cube reads back: the HDF5 dataset / npz key / .mat
# variable, the ENVI interleave) besides the source and format.
_EXTRAS_ATTRS = ("source", "dataset", "interleave")
# A pixel offset or step within this of an integer is that integer (float noise of the coordinates).
_PIXEL_TOL = 1e-6


def _north_up(transform: Sequence[float] | None) -> bool:
    """Whether an affine 6-tuple has no rotation / shear terms (``b == d == 0``)."""
    return transform is not None and transform[1] == 0 and transform[3] == 0


def _label(da: Any) -> str:
    """What a CubeError names: the DataArray's source when known, else its name."""
    attrs = getattr(da, "attrs", {}) or {}
    if attrs.get("source"):
        return str(attrs["source"])
    name = getattr(da, "name", None)
    return f"DataArray {name!r}" if name is not None else "DataArray"


def from_cube(cube: np.ndarray, meta: CubeMeta | None = None) -> xr.DataArray:
    """A cube and its metadata as a DataArray (see the module docstring for its coords and attrs).

    Args:
        cube: (C, H, W) = (bands, rows, columns) array in source units, e.g. from
            :func:`~hsivar.io.read_cube`; not copied.
        meta: what is known about it; default nothing (band indices, pixel indices, no attrs).

    Returns:
        DataArray named :data:`NAME` with dims ``("band", "y", "x")`` and ``cube`` as its values.

    Raises:
        CubeError: ``cube`` not 3-D; band metadata, transform or ``meta.missing`` not matching its shape.
    """
    values = np.asarray(cube)
    if meta is None:  # nothing known but the cube itself
        meta = CubeMeta(bands=values.shape[0] if values.ndim else 0, dtype=values.dtype.name)
    label = str(meta.extras.get("source", "from_cube"))
    if values.ndim != 3:
        raise CubeError(f"{label}: not a cube: {values.ndim}-D array of shape {values.shape}; expected 3-D "
                        "(bands, rows, cols)")
    c, h, w = values.shape
    for field in ("wavelengths", "band_names", "fwhm"):
        entries = getattr(meta, field)
        if entries is not None and len(entries) != c:
            raise CubeError(f"{label}: meta.{field} has {len(entries)} entries for a {c}-band cube")

    coords: dict[str, Any] = {
        "band": ("band", list(meta.band_names) if meta.band_names is not None else np.arange(c)),
    }
    if meta.wavelengths is not None:
        coords["wavelength"] = ("band", np.asarray(meta.wavelengths, dtype=np.float64), {"units": "nm"})
    if meta.fwhm is not None:
        coords["fwhm"] = ("band", np.asarray(meta.fwhm, dtype=np.float64), {"units": "nm"})
    transform = None if meta.transform is None else tuple(float(v) for v in meta.transform[:6])
    if transform is not None and len(transform) != 6:
        raise CubeError(f"{label}: meta.transform must have 6 terms (a, b, c, d, e, f), got {meta.transform!r}")
    if _north_up(transform):
        a, _, xoff, _, e, yoff = transform  # type: ignore[misc]
        coords["y"] = ("y", yoff + e * (np.arange(h) + 0.5), {"long_name": "y of the pixel centres (CRS units)"})
        coords["x"] = ("x", xoff + a * (np.arange(w) + 0.5), {"long_name": "x of the pixel centres (CRS units)"})
    else:  # no transform, or a rotated one: pixel indices (the transform maps them)
        coords["y"] = ("y", np.arange(h), {"long_name": "row (pixels)"})
        coords["x"] = ("x", np.arange(w), {"long_name": "column (pixels)"})
    missing = check_missing(meta.missing, values.shape, label)
    if missing is not None:
        coords["missing"] = (DIMS, missing, {"long_name": "not observed"})

    attrs: dict[str, Any] = {"crs": meta.crs, "transform": transform, "nodata": meta.nodata,
                             "format": meta.format, "dtype": meta.dtype}
    attrs.update({key: meta.extras.get(key) for key in _EXTRAS_ATTRS})
    attrs = {key: value for key, value in attrs.items() if value is not None}  # netCDF refuses None attributes
    if "nodata" in attrs:
        attrs["nodata"] = float(attrs["nodata"])
    return xr.DataArray(values, dims=DIMS, coords=coords, attrs=attrs, name=NAME)


def open_dataarray(src: str | os.PathLike, *, window: tuple[int, int, int, int] | None = None,
                   bands: Sequence[int] | None = None, **read_options: Any) -> xr.DataArray:
    """Read a cube (or a window / band subset of it) as a DataArray through :func:`~hsivar.io.read_cube`.

    Args:
        src: local path, ``file://`` URI or fsspec URI of any format :func:`~hsivar.io.read_cube` reads.
        window: ``(row0, col0, height, width)`` in pixels; the ``y`` / ``x`` coordinates and the ``transform``
            attribute are the window's.
        bands: source band indices (0-based, any order) to read; the ``band`` coordinate holds their names, or
            these indices when the source names no bands.
        **read_options: ``layout``, ``dataset``, ``allow_nonfinite``, ``storage_options``, ``format`` as
            :func:`~hsivar.io.read_cube` takes them.

    Returns:
        float32 DataArray with dims ``("band", "y", "x")``, shape (C, H, W), in source units (module docstring).

    Raises:
        CubeError: as :func:`~hsivar.io.read_cube`.
    """
    cube, meta = read_cube(src, window=window, bands=bands, **read_options)
    da = from_cube(cube, meta)
    if meta.band_names is None and bands is not None:
        da = da.assign_coords(band=np.asarray([int(i) for i in bands]))  # the source's band indices
    return da


def _band_values(da: xr.DataArray, name: str, label: str) -> list[float] | None:
    """The float values of coord ``name`` (along ``band`` only) in band order, or None when absent."""
    if name not in da.coords:
        return None
    coord = da.coords[name]
    if coord.dims != ("band",):
        raise CubeError(f"{label}: coord {name!r} has dims {coord.dims}; expected ('band',)")
    return [float(v) for v in coord.values]


def _snap(value: float) -> float:
    """``value`` rounded to a multiple of half a pixel when float noise is all that separates them."""
    near = round(value * 2) / 2
    return near if abs(value - near) < _PIXEL_TOL else value


def _axis_grid(da: xr.DataArray, dim: str, transform: tuple[float, ...], label: str) -> tuple[float, float]:
    """(offset, step) in pixels of the transform's grid: the grid of ``da``'s own pixels along ``dim`` starts
    ``offset`` pixels in and its pixels are ``step`` pixels wide (negative: flipped), so that their centres
    fall on coord ``dim``. E.g. (10, 1) for ``da.isel(y=slice(10, 20))`` of a DataArray whose coords
    :func:`from_cube` built, (-0.5, 2) for ``da.isel(y=slice(0, None, 2))``; (0, 1) without the coord."""
    if dim not in da.coords:
        return 0.0, 1.0
    values = np.asarray(da.coords[dim].values, dtype=np.float64)
    if _north_up(transform):  # map coordinates of the pixel centres → their positions in the pixel grid
        scale, origin = (transform[0], transform[2]) if dim == "x" else (transform[4], transform[5])
        centres = (values - origin) / scale
    else:  # pixel indices: pixel i's centre is at i + 0.5
        centres = values + 0.5
    step = float(centres[1] - centres[0]) if len(centres) > 1 else 1.0
    if len(centres) > 1 and (step == 0 or not np.allclose(np.diff(centres), step, rtol=0, atol=_PIXEL_TOL)):
        raise CubeError(f"{label}: the {dim!r} coordinates are not evenly spaced, so no affine transform "
                        f"describes them; drop the transform (da.attrs.pop('transform')) to use the cube without it")
    step = _snap(step)
    return _snap(float(centres[0]) - step / 2), step  # new pixel k's centre k + 0.5 ↦ centres[k]


def _transform(da: xr.DataArray, label: str) -> tuple[float, ...] | None:
    """The affine 6-tuple of ``da``'s own pixels: attrs ``transform`` moved / scaled to where its ``y`` / ``x``
    coordinates put the pixel centres (a slice, stride or flip of the DataArray it was built as)."""
    raw = da.attrs.get("transform")
    if raw is None:
        return None
    try:
        transform = tuple(float(v) for v in np.asarray(raw).ravel())  # a netCDF round trip gives an array
    except (TypeError, ValueError):
        raise CubeError(f"{label}: attrs['transform'] is not 6 numbers: {raw!r}") from None
    if len(transform) < 6:
        raise CubeError(f"{label}: attrs['transform'] has {len(transform)} terms; expected 6 (a, b, c, d, e, f)")
    transform = transform[:6]
    col0, col_step = _axis_grid(da, "x", transform, label)
    row0, row_step = _axis_grid(da, "y", transform, label)
    if (col0, row0, col_step, row_step) == (0, 0, 1, 1):
        return transform  # the grid it was built from, exactly
    moved = Affine(*transform) @ Affine.translation(col0, row0) @ Affine.scale(col_step, row_step)
    return tuple(moved)[:6]


def to_cube(da: xr.DataArray) -> tuple[np.ndarray, CubeMeta]:
    """A cube DataArray back as ``(cube, meta)`` (the inverse of :func:`from_cube`):
    ``write_cube(path, *to_cube(da))`` writes it.

    Args:
        da: DataArray with exactly the dims ``band``, ``y``, ``x`` in any order (coords and attrs as the module
            docstring says; all optional).

    Returns:
        ``(cube, meta)``: cube (C, H, W) in ``da``'s dtype and units (a NumPy array; dask / lazy values are
        loaded); meta with the band names (a ``band`` coordinate of strings), wavelengths / fwhm (nm), crs,
        nodata, format, source dtype, ``missing`` (C, H, W) bool from the ``missing`` coord, and the transform
        of ``da``'s own pixels (attrs ``transform`` moved to where the ``y`` / ``x`` coordinates place them).

    Raises:
        CubeError: not a DataArray; other dims than band / y / x (the message names those found); a band
            coordinate or ``missing`` of the wrong dims; ``y`` / ``x`` coordinates not evenly spaced while attrs
            hold a transform.
    """
    label = _label(da)
    if not isinstance(da, xr.DataArray):
        hint = "; pick one variable, e.g. ds['cube']" if isinstance(da, xr.Dataset) else ""
        raise CubeError(f"{label}: expected an xarray.DataArray, got {type(da).__name__}{hint}")
    if da.ndim != 3 or set(da.dims) != set(DIMS):
        raise CubeError(f"{label}: DataArray has dims {tuple(da.dims)}; expected exactly 'band', 'y', 'x' "
                        "(any order)")
    da = da.transpose(*DIMS)
    cube = np.asarray(da.values)
    band = da.coords["band"].values if "band" in da.coords else None
    names = [str(v) for v in band] if band is not None and band.dtype.kind in "OUS" else None
    missing = None
    if "missing" in da.coords:
        coord = da.coords["missing"]
        if set(coord.dims) != set(DIMS):
            raise CubeError(f"{label}: coord 'missing' has dims {coord.dims}; expected 'band', 'y', 'x'")
        missing = check_missing(coord.transpose(*DIMS).values, cube.shape, label)
    attrs = da.attrs
    nodata = attrs.get("nodata")
    meta = CubeMeta(
        bands=cube.shape[0],
        wavelengths=_band_values(da, "wavelength", label),
        band_names=names,
        fwhm=_band_values(da, "fwhm", label),
        crs=None if attrs.get("crs") is None else str(attrs["crs"]),
        transform=_transform(da, label),
        nodata=None if nodata is None else float(nodata),
        dtype=str(attrs.get("dtype", cube.dtype.name)),
        format=attrs.get("format"),
        extras={key: str(attrs[key]) for key in _EXTRAS_ATTRS if attrs.get(key) is not None},
        missing=missing,
    )
    return cube, meta


def with_cube(da: xr.DataArray, cube: np.ndarray) -> xr.DataArray:
    """A DataArray like ``da`` (its dims order, coords and attrs) holding ``cube`` instead of its values.

    The ``missing`` coord is dropped: it describes ``da``'s values, not the new ones (e.g. a restoration, where
    every entry holds a value). Used by :meth:`hsivar.restore.Restorer.restore` for DataArray inputs.

    Args:
        da: cube DataArray with the dims ``band``, ``y``, ``x`` in any order.
        cube: (C, H, W) values (``da``'s sizes in band, y, x order), not copied.

    Raises:
        CubeError: other dims than band / y / x, or ``cube`` of another shape.
    """
    if set(da.dims) != set(DIMS) or da.ndim != 3:
        raise CubeError(f"{_label(da)}: DataArray has dims {tuple(da.dims)}; expected exactly 'band', 'y', 'x' "
                        "(any order)")
    like = da.drop_vars("missing", errors="ignore").transpose(*DIMS)
    if np.shape(cube) != like.shape:
        raise CubeError(f"{_label(da)}: values of shape {np.shape(cube)} for a DataArray of shape {like.shape} "
                        "(band, y, x)")
    return like.copy(deep=False, data=np.asarray(cube)).transpose(*da.dims)
