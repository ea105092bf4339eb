"""GeoTIFF cubes (``.tif``, ``.tiff``) through rasterio: one raster band per spectral band.

The file describes its own layout, so ``layout=`` is not consulted. Reads are windowed (remote files
through fsspec, only the bytes needed). CRS, transform, nodata, band descriptions (names), wavelengths
(dataset tag ``wavelengths`` or per-band tags ``wavelength``, with ``wavelength_units``) and FWHM (tag
``fwhm``, nm) are read and written; scales / offsets are reported in ``extras``, values are returned as
stored. An internal (or ``.msk``) per-dataset mask and a dataset tag ``bbl`` (bad band list) give
:attr:`CubeMeta.missing` (:mod:`hsivar.io.masks`); the writer stores whole bad bands as ``bbl`` and the other
missing entries as an internal mask (one for all the good bands). Every GeoTIFF written is a Cloud-Optimized GeoTIFF
(:data:`COG_OPTIONS`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
import rasterio.windows
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags

from hsivar.io import layout, masks
from hsivar.io.location import Location
from hsivar.io.meta import CubeError, CubeMeta

__all__ = ["COG_OPTIONS", "GEOTIFF_DTYPES", "GEOTIFF_ERRORS", "geotiff_meta_problem", "open_geotiff", "write_geotiff"]

GEOTIFF_ERRORS: tuple[type[Exception], ...] = (rasterio.errors.RasterioError,)
"""Library errors meaning "not a valid GeoTIFF" or "cannot write it" (besides OSError, ValueError, ...)."""

GEOTIFF_DTYPES: frozenset[str] = frozenset(
    "uint8 int8 uint16 int16 uint32 int32 int64 uint64 float32 float64".split()
)
"""Value dtypes a GeoTIFF can store."""


def _wavelengths(ds: Any) -> list[float] | None:
    """Band wavelengths in nm from the dataset tag ``wavelengths`` or every band's ``wavelength`` tag."""
    tags = {k.lower(): v for k, v in ds.tags().items()}
    units = tags.get("wavelength_units")
    if "wavelengths" in tags:
        values = layout.as_floats([v for v in tags["wavelengths"].replace(";", ",").split(",") if v.strip()])
        return layout.to_nanometres(values, units)
    per_band = []
    for i in range(1, ds.count + 1):
        band_tags = {k.lower(): v for k, v in ds.tags(i).items()}
        if "wavelength" not in band_tags:
            return None
        per_band.append(float(band_tags["wavelength"]))
        units = units or band_tags.get("wavelength_units")
    return layout.to_nanometres(per_band, units)


def _fwhm(ds: Any) -> list[float] | None:
    """Band FWHM in nm from the dataset tag ``fwhm`` (written by :func:`write_geotiff`), else ``None``."""
    text = {k.lower(): v for k, v in ds.tags().items()}.get("fwhm")
    if text is None:
        return None
    values = layout.as_floats([v for v in text.replace(";", ",").split(",") if v.strip()])
    return values if values is not None and len(values) == ds.count else None


def open_geotiff(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions) -> layout.Source:
    """Open a GeoTIFF; its bands are the cube's bands (C), in file order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        ds = stack.enter_context(rasterio.open(loc.path) if loc.local else rasterio.open(loc.path, opener=loc.fs))
    if ds.count == 0:
        raise CubeError(f"{loc.text}: zero bands")
    dtype = np.result_type(*ds.dtypes)
    layout.check_numeric(dtype, loc.text)
    georeferenced = ds.crs is not None or not ds.transform.is_identity
    names = list(ds.descriptions) if any(ds.descriptions) else None

    def read(window: tuple[int, int, int, int], bands: list[int] | None) -> np.ndarray:
        r0, c0, h, w = window
        indexes = [b + 1 for b in bands] if bands is not None else None
        return ds.read(indexes=indexes, window=rasterio.windows.Window(c0, r0, w, h), out_dtype=dtype)

    meta = CubeMeta(
        bands=ds.count,
        wavelengths=_wavelengths(ds),
        fwhm=_fwhm(ds),
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
    return layout.Source(shape=(ds.count, ds.height, ds.width), meta=meta, read=read,
                         read_missing=_missing_reader(ds, loc.text))


def _missing_reader(ds: Any, src: str) -> masks.MissingReader | None:
    """The reader of the entries the dataset marks as not observed: its bad band list (tag ``bbl``) and the
    bands whose GDAL mask is a per-dataset (internal, ``.msk``) mask; ``None`` when there are none. Nodata
    masks are left to ``nodata``."""
    tags = {k.lower(): v for k, v in ds.tags().items()}
    bad = masks.parse_bbl(tags.get(masks.BBL_KEY), ds.count, src)
    masked = np.array([MaskFlags.per_dataset in flags and MaskFlags.nodata not in flags
                       for flags in ds.mask_flag_enums])
    if not masked.any():
        return masks.bands_reader(bad) if bad is not None else None
    first = int(np.flatnonzero(masked)[0]) + 1  # a per-dataset mask is the same for every band

    def read(window: tuple[int, int, int, int], bands: list[int] | None) -> np.ndarray:
        r0, c0, h, w = window
        unobserved = ds.read_masks(first, window=rasterio.windows.Window(c0, r0, w, h)) == 0
        idx = np.arange(ds.count) if bands is None else np.asarray(bands, int)
        missing = masked[idx][:, None, None] & unobserved[None]
        if bad is not None:
            missing[bad[idx]] = True
        return missing

    return read


def geotiff_meta_problem(meta: CubeMeta) -> str | None:
    """Why a GeoTIFF cannot store ``meta`` (missing entries that differ between the good bands), or ``None``."""
    if meta.missing is None:
        return None
    bad, rest = masks.split_missing(meta.missing)
    if rest is not None:
        good = rest if bad is None else rest[~bad]
        if not (good == good[:1]).all():
            return ("a GeoTIFF holds one mask for all its bands besides a bad band list (bbl); these missing "
                    "entries differ between bands: write HDF5 instead")
    return None


COG_OPTIONS: dict[str, Any] = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",  # horizontal differencing for integers, the floating-point predictor for floats
    "BLOCKSIZE": 256,
    "OVERVIEWS": "AUTO",  # halvings until the raster fits one tile
    "BIGTIFF": "IF_SAFER",
}
"""Creation options of GDAL's COG driver for every GeoTIFF written (deflate, 256-pixel tiles, overviews)."""


def write_geotiff(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    """Write the (C, H, W) cube to ``paths[0]`` as a Cloud-Optimized GeoTIFF (GDAL's COG driver: internal
    256 x 256 tiles, deflate with a predictor, overviews when larger than a tile — averages for floats, nearest
    neighbours for integers such as masks and indices — pixel-interleaved) with CRS,
    transform, nodata, band names, wavelengths and FWHM (nm) and the missing entries of ``meta.missing``
    (tag ``bbl``, internal mask).

    The bands and tags are first written to a plain GeoTIFF beside ``paths[0]`` (the COG driver only copies
    a finished dataset), which is removed afterwards.
    """
    c, h, w = arr.shape
    profile: dict[str, Any] = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": arr.dtype.name,
                               "interleave": "band", "BIGTIFF": "IF_SAFER"}
    if meta.crs is not None:
        profile["crs"] = CRS.from_user_input(meta.crs)
    if meta.transform is not None:
        profile["transform"] = Affine(*meta.transform[:6])
    if meta.nodata is not None:
        profile["nodata"] = meta.nodata
    bad, rest = masks.split_missing(meta.missing) if meta.missing is not None else (None, None)
    plain = f"{paths[0]}.plain.tif"
    try:
        with warnings.catch_warnings(), rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(plain, "w", **profile) as ds:
                ds.write(arr)
                if rest is not None:  # one mask for the good bands (geotiff_meta_problem checked it)
                    good = rest if bad is None else rest[~bad]
                    ds.write_mask(np.where(good[0], 0, 255).astype(np.uint8))
                _write_band_tags(ds, meta, bad)
            with rasterio.open(plain) as src:
                # overviews: averages of measurements, but never of classes, masks or indices (integers)
                resampling = "NEAREST" if arr.dtype.kind in "iub" else "AVERAGE"
                rasterio.shutil.copy(src, paths[0], driver="COG", OVERVIEW_RESAMPLING=resampling, **COG_OPTIONS)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(plain)


def _write_band_tags(ds: Any, meta: CubeMeta, bad: np.ndarray | None) -> None:
    """Band names (descriptions), wavelengths / FWHM (dataset and per-band tags, nm) and the bad band list."""
    if bad is not None:
        ds.update_tags(**{masks.BBL_KEY: ",".join(str(int(not b)) for b in bad)})
    if meta.band_names is not None:
        for i, name in enumerate(meta.band_names, start=1):
            ds.set_band_description(i, str(name))
    if meta.wavelengths is not None:
        ds.update_tags(wavelengths=",".join(repr(float(v)) for v in meta.wavelengths), wavelength_units="nm")
        for i, wl in enumerate(meta.wavelengths, start=1):
            ds.update_tags(i, wavelength=repr(float(wl)), wavelength_units="nm")
    if meta.fwhm is not None:
        ds.update_tags(fwhm=",".join(repr(float(v)) for v in meta.fwhm))
        for i, width in enumerate(meta.fwhm, start=1):
            ds.update_tags(i, fwhm=repr(float(width)))
