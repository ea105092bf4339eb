"""ENVI cubes: a text header ``x.hdr`` plus a raw data file (``x.img``, ``.dat``, ``.raw``, ``.bsq``,
``.bil``, ``.bip`` or extension-less ``x``), read and written through spectral's header parser.

A cube is named by either file. The header describes the layout (BSQ / BIL / BIP interleave), so
``layout=`` is not consulted. Local data files are memory-mapped (a window reads only its block); remote
ones are copied to a temporary folder first. Wavelengths (micrometres converted to nm), band names, data
ignore value (nodata), bad band list ``bbl`` (0 = bad band: :attr:`CubeMeta.missing`, see
:mod:`hsivar.io.masks`), ``map info`` (north-up transforms, WGS-84 UTM zones) and coordinate system strings
are read and written.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import tempfile
import warnings
from typing import Any

import numpy as np
import spectral.io.envi as spectral_envi
from rasterio.crs import CRS

from hsivar.io import layout, masks
from hsivar.io.location import Location
from hsivar.io.meta import CubeError, CubeMeta

__all__ = [
    "DATA_EXTENSIONS",
    "ENVI_DTYPES",
    "ENVI_ERRORS",
    "HEADER_SUFFIX",
    "envi_meta_problem",
    "envi_targets",
    "open_envi",
    "write_envi",
]

HEADER_SUFFIX = ".hdr"
"""Extension of the header, which names the cube in a listing."""

DATA_EXTENSIONS: tuple[str, ...] = (".img", ".dat", ".raw", ".bsq", ".bil", ".bip")
"""Extensions of the data file (it may also have none: ``x`` beside ``x.hdr``)."""

ENVI_ERRORS: tuple[type[Exception], ...] = (spectral_envi.EnviException,)
"""Library errors meaning "not a valid ENVI header" (besides OSError, ValueError, ...)."""

ENVI_DTYPES: frozenset[str] = frozenset(
    np.dtype(v).name for v in spectral_envi.envi_to_dtype.values() if np.dtype(v).kind in "iuf"
)
"""Value dtypes an ENVI data file can store."""

_DATA_EXTS = ("", *DATA_EXTENSIONS)
# ENVI interleave -> the axis order of the data file, as a permutation of "chw".
_AXES = {"bsq": "chw", "bil": "hcw", "bip": "hwc"}


def _pair(loc: Location) -> tuple[Location, Location]:
    """(header, data) locations of an ENVI cube given either file; CubeError if one is missing."""
    root, ext = posixpath.splitext(loc.path)
    if ext.lower() == HEADER_SUFFIX:
        tried = [root + e for e in _DATA_EXTS] + [root + e.upper() for e in _DATA_EXTS if e]
        for path in tried:
            if loc.fs.isfile(path):
                return loc, loc.with_path(path)
        names = ", ".join(posixpath.basename(p) or "''" for p in tried[: len(_DATA_EXTS)])
        raise CubeError(f"{loc.text}: ENVI header without its data file (looked for {names})")
    upper = HEADER_SUFFIX.upper()
    tried = [loc.path + HEADER_SUFFIX, root + HEADER_SUFFIX, loc.path + upper, root + upper]
    for path in tried:
        if loc.fs.isfile(path):
            return loc.with_path(path), loc
    raise CubeError(
        f"{loc.text}: ENVI data file without its header (looked for "
        f"{', '.join(posixpath.basename(p) for p in tried[:2])})"
    )


def _transform(header: dict) -> tuple[float, ...] | None:
    """The affine 6-tuple of the header's ``map info`` (north-up), or ``None``."""
    info = header.get("map info")
    if not isinstance(info, list) or len(info) < 7:
        return None
    try:
        ref_x, ref_y, east, north, dx, dy = (float(v) for v in info[1:7])
    except ValueError:
        return None
    # ENVI reference pixels are 1-based, (1, 1) being the upper-left corner of the first pixel.
    return (dx, 0.0, east - (ref_x - 1) * dx, 0.0, -dy, north + (ref_y - 1) * dy)


def _utm_crs(header: dict) -> str | None:
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


def open_envi(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions) -> layout.Source:
    """Open an ENVI cube named by its header or its data file."""
    hdr_loc, data_loc = _pair(loc)
    if hdr_loc.local:
        hdr_path, data_path = hdr_loc.path, data_loc.path
    else:  # memmap needs local files
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="hsivar-envi-"))
        hdr_path = os.path.join(tmp, "cube.hdr")
        data_path = os.path.join(tmp, "cube.img")
        hdr_loc.fs.get_file(hdr_loc.path, hdr_path)
        if not opts.shape_only:
            data_loc.fs.get_file(data_loc.path, data_path)
    if os.path.getsize(hdr_path) == 0:
        raise CubeError(f"{hdr_loc.text}: empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spectral warns about capitalised keys; they are lower-cased anyway
        header = spectral_envi.read_envi_header(hdr_path)
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
    if type_code not in spectral_envi.envi_to_dtype:
        raise CubeError(f"{hdr_loc.text}: unsupported ENVI data type {type_code}")
    dtype = np.dtype(spectral_envi.envi_to_dtype[type_code]).newbyteorder(">" if big_endian else "<")
    layout.check_numeric(dtype, hdr_loc.text)
    interleave = str(header.get("interleave", "bsq")).strip().lower()
    if interleave not in _AXES:
        raise CubeError(f"{hdr_loc.text}: unknown ENVI interleave {interleave!r}")
    if count == 0:
        raise CubeError(f"{hdr_loc.text}: zero bands")
    axes = _AXES[interleave]
    dims = {"c": count, "h": height, "w": width}
    stored_shape = tuple(dims[a] for a in axes)
    needed = offset + math.prod(stored_shape) * dtype.itemsize
    layout.require_size(
        data_loc,
        needed,
        f"ENVI data file: header declares {count} bands x {height} x {width} {dtype.name} "
        f"({needed} bytes with offset)",
    )
    arr: Any
    if opts.shape_only or 0 in stored_shape:
        arr = layout.ShapeOnly(stored_shape, dtype)
    else:
        arr = np.memmap(data_path, dtype=dtype, mode="r", offset=offset, shape=stored_shape)

    names = header.get("band names")
    nodata = layout.as_floats(header.get("data ignore value"))
    css = header.get("coordinate system string")
    crs = ",".join(css) if isinstance(css, list) else css
    if not crs:
        crs = _utm_crs(header)
    extras = {"interleave": interleave, "header": hdr_loc.text, "data_file": data_loc.text}
    if "reflectance scale factor" in header:
        extras["reflectance_scale_factor"] = float(header["reflectance scale factor"])
    meta = CubeMeta(
        bands=count,
        wavelengths=layout.to_nanometres(layout.as_floats(header.get("wavelength")), header.get("wavelength units")),
        fwhm=layout.to_nanometres(layout.as_floats(header.get("fwhm")), header.get("wavelength units")),
        band_names=[str(n) for n in names] if isinstance(names, list) else None,
        crs=crs or None,
        transform=_transform(header),
        nodata=nodata[0] if nodata else None,
        dtype=dtype.name,
        format="envi",
        layout=axes,
        extras=extras,
    )
    bad = masks.parse_bbl(header.get(masks.BBL_KEY), count, hdr_loc.text)
    return layout.Source(
        shape=(count, height, width), meta=meta, read=lambda window, bands: layout.read_block(arr, axes, window, bands),
        read_missing=masks.bands_reader(bad) if bad is not None else None,
    )


def envi_targets(loc: Location) -> list[Location]:
    """[data, header] locations to write an ENVI cube named ``loc`` (header or data file): the data file
    is moved into place first, the header last, so a listed header always has its data."""
    root, ext = posixpath.splitext(loc.path)
    if ext.lower() == HEADER_SUFFIX:
        return [loc.with_path(root + ".img"), loc]
    if ext.lower() in _DATA_EXTS:
        return [loc, loc.with_path(root + HEADER_SUFFIX)]
    return [loc, loc.with_path(loc.path + HEADER_SUFFIX)]  # extension-less data file


def envi_meta_problem(meta: CubeMeta) -> str | None:
    """Why ENVI cannot store ``meta`` (a rotated or sheared transform, missing entries that are not whole bands),
    or ``None``."""
    if meta.transform is not None and (meta.transform[1] or meta.transform[3]):
        return "ENVI map info holds north-up transforms only; write GeoTIFF instead"
    if meta.missing is not None and masks.split_missing(meta.missing)[1] is not None:
        return "ENVI holds whole bad bands only (bbl), not a mask of single entries; write HDF5 instead"
    return None


def write_envi(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    """Write the (C, H, W) cube as little-endian raw data (``paths[0]``, interleave
    ``meta.extras["interleave"]``, default BSQ) and its header (``paths[1]``) with wavelengths (nm),
    band names, data ignore value, bad band list (bands wholly in ``meta.missing``), map info and coordinate
    system string."""
    data_path, hdr_path = paths
    interleave = str(meta.extras.get("interleave") or "bsq").lower()
    if interleave not in _AXES:
        interleave = "bsq"
    axes = _AXES[interleave]
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
        "data type": spectral_envi.dtype_to_envi[arr.dtype.char],
        "interleave": interleave,
        "byte order": 0,
    }
    if meta.wavelengths is not None:
        header["wavelength"] = [repr(float(v)) for v in meta.wavelengths]
        header["wavelength units"] = "Nanometers"
    if meta.fwhm is not None:
        header["fwhm"] = [repr(float(v)) for v in meta.fwhm]
        header["wavelength units"] = "Nanometers"
    if meta.band_names is not None:
        header["band names"] = [str(n) for n in meta.band_names]
    if meta.nodata is not None:
        header["data ignore value"] = repr(float(meta.nodata))
    bad = masks.split_missing(meta.missing)[0] if meta.missing is not None else None
    if bad is not None:
        header[masks.BBL_KEY] = [str(int(not b)) for b in bad]
    if meta.transform is not None:
        a, b, x0, d, e, y0 = meta.transform[:6]
        header["map info"] = ["Arbitrary", 1, 1, repr(x0), repr(y0), repr(a), repr(-e)]
    if meta.crs is not None:
        header["coordinate system string"] = "{" + CRS.from_user_input(meta.crs).to_wkt() + "}"
    spectral_envi.write_envi_header(hdr_path, header)
