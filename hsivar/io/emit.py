"""EMIT L2A surface reflectance products (``EMIT_L2A_RFL_<vvv>_<YYYYMMDDTHHMMSS>_<orbit>_<scene>.nc``), through h5py.

Layout followed: the EMIT L2A RFL NetCDF4 file as the EMIT SDS writes it (emit-sds-l2a ``output_conversion.py``
with emit-utils ``daac_converter.py``; LP DAAC EMITL2ARFL V001 user guide), read as plain HDF5:

* root variable ``reflectance``, float32 (downtrack, crosstrack, bands), unitless hemispherical-directional
  reflectance factor, ``_FillValue`` -9999; dimensions ``downtrack``, ``crosstrack``, ``bands``, ``ortho_y``,
  ``ortho_x`` are netCDF dimension scales at the root;
* group ``sensor_band_parameters``: ``wavelengths`` (bands,) band centres, ``units`` nm; ``fwhm`` (bands,) nm;
  ``good_wavelengths`` (bands,) uint8, 1 = reflectance usable, 0 = not (water-vapour bands);
* group ``location``: ``lat``, ``lon``, ``elev`` (downtrack, crosstrack) float64 (WGS-84 degrees, metres);
  ``glt_x``, ``glt_y`` (ortho_y, ortho_x) int32, the geometry lookup table (GLT): for each cell of a north-up
  ortho grid the 1-based swath sample (``glt_x``, crosstrack column) and line (``glt_y``, downtrack row)
  that fills it; 0 = no data; a negative value means the cell was filled from that pixel by the ground
  processing (its absolute value is the pixel);
* root attributes: ``geotransform`` (GDAL order x0, dx, rx, y0, ry, dy) and ``spatial_ref`` (WKT) of the GLT's
  ortho grid, ``time_coverage_start`` / ``time_coverage_end`` (``%Y-%m-%dT%H:%M:%S%z``), ``product_version``,
  ``title``, ``flight_line``, ...

The cube is returned on the **swath grid**: C = bands, H = downtrack lines, W = crosstrack samples (stored
bands last; ``meta.layout`` is ``"chw"``, the order handed out). The swath is not north-up, so ``meta.crs`` and
``meta.transform`` are ``None``; the ortho grid (``crs``, ``transform``, ``glt_shape``) is in
``meta.extras["product"]``, :func:`read_glt` reads the GLT itself and :func:`orthorectify` places swath pixels
on the ortho grid. Values are reflectance already (no scale or offset); -9999 entries keep that value and
``meta.nodata`` says them. Bands with ``good_wavelengths == 0`` are missing (:mod:`hsivar.io.masks`).

Not supported: the other EMIT products (L1B RAD/OBS, L2A RFLUNCERT, L2A MASK: its per-pixel cloud flags are
not joined to the reflectance), the V002 ``state_variables`` group (ignored), orthorectified reads.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from affine import Affine

from hsivar.io import layout, masks
from hsivar.io.bands import spacing_fwhm
from hsivar.io.location import Location, resolve_location, staged
from hsivar.io.meta import CubeError, CubeMeta

__all__ = [
    "EMIT_ERRORS",
    "NAME_PATTERNS",
    "NODATA",
    "open_emit",
    "orthorectify",
    "read_glt",
    "write_demo",
]

NAME_PATTERNS: tuple[str, ...] = ("EMIT_L2A_RFL_*.nc",)
"""File names of EMIT L2A reflectance products (the uncertainty and mask files are other products)."""

EMIT_ERRORS: tuple[type[Exception], ...] = ()
"""Library errors meaning "not a valid EMIT file", besides the common ones (h5py raises OSError, KeyError, ...)."""

NODATA = -9999.0
"""EMIT's fill value (``_FillValue`` of every variable)."""

CUBE = "reflectance"
BAND_GROUP = "sensor_band_parameters"
LOCATION_GROUP = "location"
GLT_NODATA = 0
"""GLT value of an ortho cell no swath pixel fills."""

_NAME = re.compile(
    r"^EMIT_(?P<level>L\d[AB]?)_(?P<kind>[A-Z]+)_(?P<version>\d{3})_(?P<time>\d{8}T\d{6})"
    r"_(?P<orbit>\d{7})_(?P<scene>\d{3})\.nc$"
)

# ------------------------------------------------------------------------------------------------ reading


def _open_h5(loc: Location, stack: contextlib.ExitStack) -> h5py.File:
    """Open the product as HDF5 (remote files through fsspec); a truncated or foreign file is a CubeError."""
    handle = loc.path if loc.local else stack.enter_context(loc.open())
    try:
        return stack.enter_context(h5py.File(handle, "r"))
    except OSError as exc:
        size = loc.fs.size(loc.path)
        # HDF5 compares the file size with the end-of-file address its superblock records.
        what = "truncated file" if "truncated" in str(exc).lower() else "not a NetCDF4 (HDF5) file"
        raise CubeError(f"{loc.text}: {what} ({size} bytes): {exc}") from exc


def _vector(src: str, group: Any, name: str, count: int) -> np.ndarray | None:
    """The 1-D variable ``name`` of ``group`` (``None`` when absent), checked to hold one value per band."""
    ds = group.get(name) if isinstance(group, h5py.Group) else None
    if not isinstance(ds, h5py.Dataset):
        return None
    values = np.asarray(ds[()]).reshape(-1)
    if values.size != count or values.dtype.kind not in "biuf":
        raise CubeError(
            f"{src}: '{BAND_GROUP}/{name}' has {values.size} values ({values.dtype}) for the {count} bands of '{CUBE}'"
        )
    return values


def _band_parameters(
    src: str, h5: h5py.File, count: int
) -> tuple[list[float], list[float] | None, np.ndarray | None]:
    """(wavelengths nm, FWHM nm or ``None``, bad bands (C,) bool or ``None``) from ``sensor_band_parameters``."""
    group = h5.get(BAND_GROUP)
    wavelengths = _vector(src, group, "wavelengths", count)
    if wavelengths is None:
        raise CubeError(f"{src}: no '{BAND_GROUP}/wavelengths' variable (the band centres of '{CUBE}')")
    units = layout.as_str(group["wavelengths"].attrs.get("units"))
    wl = layout.to_nanometres([float(v) for v in wavelengths], units)
    fwhm_values = _vector(src, group, "fwhm", count)
    fwhm = layout.to_nanometres([float(v) for v in fwhm_values], units) if fwhm_values is not None else None
    good = _vector(src, group, "good_wavelengths", count)
    bad = None if good is None else good == 0  # 1 = reflectance usable, 0 = not
    return wl, fwhm, bad if bad is not None and bad.any() else None


def _geotransform(src: str, value: Any) -> tuple[float, ...]:
    """A GDAL geotransform attribute (6 numbers, or their text) as a rasterio/affine 6-tuple (a, b, c, d, e, f)."""
    text = layout.as_str(value) if isinstance(value, (str, bytes)) else None
    numbers = layout.as_floats(text.replace(",", " ").split() if text is not None else value)
    if numbers is None or len(numbers) != 6:
        raise CubeError(f"{src}: attribute 'geotransform' is {value!r}; expected 6 numbers (GDAL order)")
    return tuple(Affine.from_gdal(*numbers))[:6]


def _ortho_grid(src: str, h5: h5py.File) -> tuple[h5py.Dataset, h5py.Dataset, str, tuple[float, ...]]:
    """The GLT datasets (``glt_x``, ``glt_y``), CRS (WKT) and affine transform of the product's ortho grid."""
    group = h5.get(LOCATION_GROUP)
    found = {name: group.get(name) if isinstance(group, h5py.Group) else None for name in ("glt_x", "glt_y")}
    absent = [f"{LOCATION_GROUP}/{name}" for name, ds in found.items() if not isinstance(ds, h5py.Dataset)]
    absent += [name for name in ("geotransform", "spatial_ref") if name not in h5.attrs]
    if absent:
        raise CubeError(f"{src}: no geometry lookup table: {', '.join(absent)} missing")
    gx, gy = found["glt_x"], found["glt_y"]
    if gx.ndim != 2 or gx.shape != gy.shape or gx.dtype.kind not in "iu" or gy.dtype.kind not in "iu":
        raise CubeError(
            f"{src}: GLT variables glt_x {gx.shape} {gx.dtype} and glt_y {gy.shape} {gy.dtype} are not two "
            "integer (ortho_y, ortho_x) arrays of one shape"
        )
    crs = layout.as_str(h5.attrs["spatial_ref"])
    if not crs or not crs.strip():
        raise CubeError(f"{src}: attribute 'spatial_ref' (the ortho grid's WKT) is empty")
    return gx, gy, crs.strip(), _geotransform(src, h5.attrs["geotransform"])


def _product_facts(loc: Location, h5: h5py.File) -> tuple[dict[str, Any], list[str]]:
    """``extras["product"]`` (JSON-able): sensor, level, version, acquisition times, orbit, scene and the ortho grid;
    plus warnings about what is missing."""
    attrs = {key: layout.as_str(h5.attrs.get(key)) for key in
             ("time_coverage_start", "time_coverage_end", "product_version", "title", "flight_line")}
    name = _NAME.match(posixpath.basename(loc.path))
    product: dict[str, Any] = {"sensor": "EMIT", "platform": "ISS", "level": "L2A", "product": "RFL"}
    version = (attrs["product_version"] or "").lstrip("Vv") or (name["version"] if name else None)
    if version:
        product["version"] = version
    start = layout.iso_utc(attrs["time_coverage_start"])
    if start is None and name is not None:  # the name's time is the acquisition start, UTC
        start = datetime.strptime(name["time"], "%Y%m%dT%H%M%S").strftime("%Y-%m-%dT%H:%M:%SZ")
    end = layout.iso_utc(attrs["time_coverage_end"])
    product.update({k: v for k, v in (("datetime", start), ("end_datetime", end)) if v is not None})
    if name is not None:
        product.update(orbit=name["orbit"], scene=name["scene"])
    product.update({k: attrs[k] for k in ("title", "flight_line") if attrs[k]})
    warnings: list[str] = []
    try:
        gx, _, crs, transform = _ortho_grid(loc.text, h5)
    except CubeError as exc:
        warnings.append(str(exc))
    else:
        product.update(crs=crs, transform=list(transform), glt_shape=[int(n) for n in gx.shape])
    return product, warnings


def open_emit(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions) -> layout.Source:
    """Open an EMIT L2A RFL product: its ``reflectance`` on the swath grid as a (C, H, W) float32 source.

    ``opts.layout`` / ``opts.dataset`` are not consulted (the product says its layout). Only metadata is read
    here (band parameters, attributes, the GLT's shape); ``read`` touches the window's rows and columns only.

    Raises:
        CubeError: not HDF5 or truncated; no ``reflectance`` or not 3-D; no ``sensor_band_parameters/wavelengths``;
            band parameters not one per band.
    """
    h5 = _open_h5(loc, stack)
    ds = h5.get(CUBE)
    if not isinstance(ds, h5py.Dataset):
        listing = ", ".join(sorted(h5)) or "nothing"
        raise CubeError(f"{loc.text}: no '{CUBE}' variable at the root (not an EMIT L2A RFL file?); root: {listing}")
    layout.check_cube_shape(ds.shape, loc.text, f"'{CUBE}' variable")
    layout.check_numeric(ds.dtype, loc.text)
    height, width, count = (int(n) for n in ds.shape)  # (downtrack, crosstrack, bands)
    wavelengths, fwhm, bad = _band_parameters(loc.text, h5, count)
    fill = layout.as_floats(ds.attrs.get("_FillValue"))
    product, warnings = _product_facts(loc, h5)
    extras: dict[str, Any] = {"dataset": CUBE, "grid": "swath", "scale": 1.0, "offset": 0.0, "product": product}
    if warnings:
        extras["warnings"] = warnings
    meta = CubeMeta(
        bands=count,
        wavelengths=wavelengths,
        fwhm=fwhm,
        nodata=fill[0] if fill else NODATA,
        dtype="float32",
        format="emit",
        layout="chw",
        extras=extras,
    )

    def read(window: layout.Window, bands: list[int] | None) -> np.ndarray:
        return layout.read_block(ds, "hwc", window, bands).astype(np.float32, copy=False)

    return layout.Source(
        shape=(count, height, width),
        meta=meta,
        read=read,
        read_missing=masks.bands_reader(bad) if bad is not None else None,
    )


def read_glt(
    src: str | os.PathLike, storage_options: dict | None = None
) -> tuple[np.ndarray, str, tuple[float, ...]]:
    """Read the geometry lookup table of an EMIT product and its ortho grid.

    Args:
        src: the product's path or fsspec URI.
        storage_options: fsspec options for remote ``src``.

    Returns:
        ``(glt, crs, transform)``: ``glt`` int32 (2, Ho, Wo), row 0 = ``glt_x`` (1-based swath column), row 1 =
        ``glt_y`` (1-based swath row), 0 = no data, as stored (see :func:`orthorectify`); ``crs`` the ortho grid's
        WKT (``spatial_ref``); ``transform`` its affine 6-tuple (a, b, c, d, e, f) of pixel corners, converted
        from the GDAL ``geotransform``.

    Raises:
        CubeError: the file is missing, unreadable or truncated, or has no GLT / ``geotransform`` / ``spatial_ref``
            (the message names the file).
    """
    loc = resolve_location(src, storage_options)
    if not loc.fs.isfile(loc.path):
        raise CubeError(f"{loc.text}: no such file")
    with contextlib.ExitStack() as stack:
        try:
            gx, gy, crs, transform = _ortho_grid(loc.text, _open_h5(loc, stack))
            glt = np.stack([np.asarray(gx[()]), np.asarray(gy[()])]).astype(np.int32, copy=False)
        except CubeError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CubeError(f"{loc.text}: cannot read the GLT: {type(exc).__name__}: {exc}") from exc
    return glt, crs, transform


def orthorectify(cube: np.ndarray, glt: np.ndarray, nodata: float = NODATA) -> np.ndarray:
    """Place swath pixels on the ortho grid of a GLT (nearest pixel, as the EMIT GLT prescribes).

    Args:
        cube: (C, H, W) on the swath grid (bands, downtrack, crosstrack), e.g. from :func:`hsivar.io.read_cube`.
        glt: (2, Ho, Wo) from :func:`read_glt`: 1-based swath column (row 0) and row (row 1) of each ortho cell;
            0 (or -9999) = no data; negative values name the pixel by their absolute value.
        nodata: value of the ortho cells no pixel fills.

    Returns:
        (C, Ho, Wo) in ``cube``'s dtype.

    Raises:
        ValueError: shapes that are not (C, H, W) / (2, Ho, Wo), or a GLT pointing outside the swath.
    """
    cube = np.asarray(cube)
    glt = np.asarray(glt)
    if cube.ndim != 3:
        raise ValueError(f"cube must be (C, H, W), got shape {cube.shape}")
    if glt.ndim != 3 or glt.shape[0] != 2:
        raise ValueError(f"glt must be (2, Ho, Wo), got shape {glt.shape}")
    count, height, width = cube.shape
    gx, gy = glt[0].astype(np.int64), glt[1].astype(np.int64)
    valid = (gx != GLT_NODATA) & (gy != GLT_NODATA) & (gx != NODATA) & (gy != NODATA)
    cols, rows = np.abs(gx[valid]) - 1, np.abs(gy[valid]) - 1
    if cols.size and (cols.max() >= width or rows.max() >= height):
        raise ValueError(
            f"GLT points at swath pixels up to (row {rows.max() + 1}, col {cols.max() + 1}) (1-based) "
            f"outside the {height} x {width} swath"
        )
    out = np.full((count, *glt.shape[1:]), nodata, dtype=cube.dtype)
    out[:, valid] = cube[:, rows, cols]
    return out


# ------------------------------------------------------------------------------------------------ demo writer

_DEMO_START = datetime(2022, 9, 3, 16, 31, 29, tzinfo=timezone.utc)
_DEMO_ORBIT = "2224611"  # YYDOYNN: 2022, day 246 (3 September), the day's 11th orbit
_DEMO_SCENE_SECONDS = 11  # EMIT scenes follow each other every ~11 s along an orbit
_DEMO_PIXEL_DEG = 0.000542232520256367  # EMIT's ortho pixel size, degrees (~60 m)
_DEMO_HEADING_DEG = 12.0  # the swath's rotation against north: the ISS track is not north-south
_DEMO_ORIGIN = (-112.05, 33.45)  # lon, lat of the swath's first corner
_WATER_BANDS_NM = ((1325.0, 1435.0), (1770.0, 1962.0))  # where EMIT flags reflectance as unusable
_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],'
    'UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],'
    'AUTHORITY["EPSG","4326"]]'
)
"""``spatial_ref`` of EMIT files: GDAL's WKT1 of EPSG:4326."""


def _demo_geometry(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...]]:
    """A swath rotated by :data:`_DEMO_HEADING_DEG`: pixel-centre (lon, lat) (H, W) float64, the GLT (2, Ho, Wo)
    int32 onto a north-up lat/lon grid covering it, and that grid's GDAL geotransform."""
    d = _DEMO_PIXEL_DEG
    theta = np.deg2rad(_DEMO_HEADING_DEG)
    across = np.array([np.cos(theta), np.sin(theta)])  # crosstrack: eastwards, turned
    down = np.array([np.sin(theta), -np.cos(theta)])  # downtrack: southwards, turned (perpendicular)
    origin = np.asarray(_DEMO_ORIGIN)
    rows, cols = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    centres = origin + d * (cols[..., None] * across + rows[..., None] * down)  # (H, W, 2)
    corners = origin + d * np.array([[0, 0], [width, 0], [0, height], [width, height]]) @ np.stack([across, down])
    x0, y0 = corners[:, 0].min(), corners[:, 1].max()
    ortho_w = int(np.ceil((corners[:, 0].max() - x0) / d))
    ortho_h = int(np.ceil((y0 - corners[:, 1].min()) / d))
    # Each ortho cell takes the swath pixel its centre falls in (the inverse of the rotation).
    oy, ox = np.meshgrid(np.arange(ortho_h) + 0.5, np.arange(ortho_w) + 0.5, indexing="ij")
    offset = np.stack([x0 + ox * d, y0 - oy * d], axis=-1) - origin
    col = np.floor(offset @ across / d).astype(np.int64)
    row = np.floor(offset @ down / d).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    glt = np.where(inside, np.stack([col + 1, row + 1]), GLT_NODATA).astype(np.int32)
    return centres[..., 0], centres[..., 1], glt, (float(x0), d, -0.0, float(y0), -0.0, -d)


def _demo_bad_band(wl: np.ndarray) -> int:
    """The band the demo marks bad: the one nearest 1380 nm when it lies in a water band, else the middle one."""
    nearest = int(np.argmin(np.abs(wl - 1380.0)))
    return nearest if any(lo <= wl[nearest] <= hi for lo, hi in _WATER_BANDS_NM) else wl.size // 2


def _text(value: str) -> np.bytes_:
    """A netCDF text attribute (NC_CHAR: a fixed-length ASCII string in HDF5)."""
    return np.bytes_(value.encode("ascii", "replace"))


def _dimension(h5: h5py.File, name: str, size: int) -> h5py.Dataset:
    """A netCDF dimension without a coordinate variable, as netCDF-4 stores it: an HDF5 dimension scale."""
    ds = h5.create_dataset(name, shape=(size,), dtype="f4")
    ds.make_scale(f"This is a netCDF dimension but not a netCDF variable.{size:10d}")
    return ds


def _variable(group: h5py.Group, name: str, data: np.ndarray, dims: list[h5py.Dataset], long_name: str,
              units: str | None, fill: bool = True, **options: Any) -> h5py.Dataset:
    """A netCDF variable: the dataset, its ``long_name`` / ``units`` / ``_FillValue`` attributes and dimensions."""
    data = np.asarray(data)
    if fill:
        options["fillvalue"] = data.dtype.type(NODATA)
    ds = group.create_dataset(name, data=data, **options)
    if fill:
        ds.attrs["_FillValue"] = data.dtype.type(NODATA)
    ds.attrs["long_name"] = _text(long_name)
    if units is not None:
        ds.attrs["units"] = _text(units)
    for axis, dim in enumerate(dims):
        ds.dims[axis].attach_scale(dim)
    return ds


def _write_product(path: str, reflectance: np.ndarray, wl: np.ndarray, fwhm: np.ndarray, good: np.ndarray,
                   start: datetime, flight_line: str) -> None:
    """Write the EMIT L2A RFL layout (module docstring) to ``path``; ``reflectance`` is (H, W, C) float32."""
    height, width, count = reflectance.shape
    lon, lat, glt, geotransform = _demo_geometry(height, width)
    with h5py.File(path, "w") as h5:
        for key, value in {
            "ncei_template_version": "NCEI_NetCDF_Swath_Template_v2.0",
            "title": "EMIT L2A Estimated Surface Reflectance 60 m V001",
            "summary": "hsivar demo product in the EMIT L2A RFL layout (synthetic values). Reflectance values are "
                       "reported as fractions (relative to 1); flagged pixels are -9999 in every band.",
            "keywords": "Imaging Spectroscopy, minerals, EMIT, dust, radiative forcing",
            "Conventions": "CF-1.63",
            "sensor": "EMIT (Earth Surface Mineral Dust Source Investigation)",
            "instrument": "EMIT",
            "platform": "ISS",
            "institution": "hsivar (synthetic)",
            "naming_authority": "LPDAAC",
            "date_created": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "flight_line": flight_line,
            "time_coverage_start": start.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "time_coverage_end": (start + timedelta(seconds=_DEMO_SCENE_SECONDS)).strftime("%Y-%m-%dT%H:%M:%S%z"),
            "product_version": "V001",
            "crosstrack_orientation": "as seen on ground",
            "day_night_flag": "Day",
            "spatial_ref": _WGS84_WKT,
        }.items():
            h5.attrs[key] = _text(value)
        h5.attrs["geotransform"] = np.asarray(geotransform, np.float64)
        h5.attrs["spatialResolution"] = np.float64(_DEMO_PIXEL_DEG)
        h5.attrs["westernmost_longitude"] = np.float64(geotransform[0])
        h5.attrs["northernmost_latitude"] = np.float64(geotransform[3])
        h5.attrs["easternmost_longitude"] = np.float64(geotransform[0] + geotransform[1] * glt.shape[2])
        h5.attrs["southernmost_latitude"] = np.float64(geotransform[3] + geotransform[5] * glt.shape[1])

        downtrack, crosstrack, bands = (_dimension(h5, n, s) for n, s in
                                        (("downtrack", height), ("crosstrack", width), ("bands", count)))
        ortho_y, ortho_x = _dimension(h5, "ortho_y", glt.shape[1]), _dimension(h5, "ortho_x", glt.shape[2])
        _variable(h5, CUBE, reflectance, [downtrack, crosstrack, bands],
                  "Hemispherical-Directional Reflectance Factor", "unitless")
        params = h5.create_group(BAND_GROUP)
        _variable(params, "wavelengths", wl.astype(np.float32), [bands], "Wavelength Centers", "nm")
        _variable(params, "fwhm", fwhm.astype(np.float32), [bands], "Full Width at Half Max", "nm")
        _variable(params, "good_wavelengths", good, [bands],
                  "Wavelengths where reflectance is useable: 1 = good data, 0 = bad data", "unitless", fill=False)
        location = h5.create_group(LOCATION_GROUP)
        swath = [downtrack, crosstrack]
        _variable(location, "lon", lon, swath, "Longitude (WGS-84)", "degrees east")
        _variable(location, "lat", lat, swath, "Latitude (WGS-84)", "degrees north")
        _variable(location, "elev", np.full((height, width), 412.0), swath, "Surface Elevation", "m")
        for axis, (name, long_name) in enumerate((("glt_x", "GLT Sample Lookup"), ("glt_y", "GLT Line Lookup"))):
            _variable(location, name, glt[axis], [ortho_y, ortho_x], long_name, "pixel location",
                      compression="gzip", compression_opts=9)


def write_demo(
    folder: str | os.PathLike,
    cube: np.ndarray,
    wavelengths: Any,
    *,
    index: int = 0,
    missing: np.ndarray | None = None,
) -> Path:
    """Write a small EMIT L2A RFL product in the real layout (module docstring), for tests and demos.

    Args:
        folder: local folder (created).
        cube: (C, H, W) reflectance in [0, 1], written as float32 (downtrack, crosstrack, bands).
        wavelengths: (C,) band centres, nm; FWHM is taken as the band spacing (7.5 nm for one band).
        index: makes the product unique: acquisition time 2022-09-03T16:31:29Z + 11 s x ``index``, scene
            ``012 + index``.
        missing: (H, W) bool, pixels to flag. The RFL file has no per-pixel quality layer (clouds are in the
            separate L2A MASK product), so flagged pixels are written as -9999 (nodata) in every band.

    The swath is rotated 12 degrees against north, its GLT maps a north-up EPSG:4326 grid of EMIT's 60 m
    pixels onto it; with C >= 8 one band is marked bad in ``good_wavelengths`` (the band nearest 1380 nm when it
    falls in a water-vapour window, else the middle band).

    Returns:
        The ``EMIT_L2A_RFL_001_<time>_<orbit>_<scene>.nc`` path.
    """
    arr = np.asarray(cube, dtype=np.float32)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"cube must be a non-empty (C, H, W) array, got shape {arr.shape}")
    count, height, width = arr.shape
    wl = np.asarray(wavelengths, dtype=np.float64).reshape(-1)
    if wl.size != count:
        raise ValueError(f"{wl.size} wavelengths for {count} bands")
    fwhm = spacing_fwhm(wl, single=7.5)
    good = np.ones(count, np.uint8)
    if count >= 8:
        good[_demo_bad_band(wl)] = 0
    reflectance = np.ascontiguousarray(arr.transpose(1, 2, 0))  # bands last, as EMIT stores them
    if missing is not None:
        flagged = np.asarray(missing, dtype=bool)
        if flagged.shape != (height, width):
            raise ValueError(f"missing must be (H, W) = {(height, width)}, got {flagged.shape}")
        reflectance[flagged] = NODATA
    start = _DEMO_START + timedelta(seconds=_DEMO_SCENE_SECONDS * index)
    scene = f"{(12 + index) % 1000:03d}"
    flight_line = f"emit{start:%Y%m%dt%H%M%S}_o{_DEMO_ORBIT[2:]}_s{scene}"
    path = Path(folder) / f"EMIT_L2A_RFL_001_{start:%Y%m%dT%H%M%S}_{_DEMO_ORBIT}_{scene}.nc"
    with staged([resolve_location(os.fspath(path))]) as (tmp,):
        _write_product(tmp, reflectance, wl, fwhm, good, start, flight_line)
    return path
