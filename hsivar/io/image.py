"""Ordinary images as cubes: PNG (``.png``) and JPEG (``.jpg``, ``.jpeg``), through rasterio (GDAL's PNG and JPEG
drivers), so that three-band models restore photographs as they restore spectral cubes.

GDAL rather than Pillow: Pillow reads a 16-bit RGB PNG as 8-bit RGB (it drops the low byte); GDAL reads it
losslessly, reads windows, and takes the georeferencing of a world file (``.pgw``, ``.jgw``) beside the image.

* Bands: a grey image is one band, an RGB image three, in file order. An alpha channel is not a band: its zero
  entries are the pixels the image does not show, so they are :attr:`CubeMeta.missing` in every band (synthesised
  by a restoration, like a GeoTIFF's mask) and written back as alpha.
* dtypes: PNG stores uint8 and uint16, JPEG uint8 (lossy, quality :data:`JPEG_QUALITY`). A float cube is written
  with ``dtype="uint8"`` / ``"uint16"`` (``write_cube`` rounds and clips) or as a GeoTIFF. An image's values are
  fractions of its dtype's full scale: ``meta.extras["full_range"]`` is (0, 255) or (0, 65535), the range the batch
  job normalises an image with (not its own min–max, which would stretch a dark or hazy photo).
* Neither format holds wavelengths, band names, nodata or a CRS: they are dropped on writing, as ``.npy`` does.
  GDAL's ``.aux.xml`` side files are never written.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.windows
from rasterio.enums import ColorInterp

from hsivar.io import layout
from hsivar.io.location import Location
from hsivar.io.meta import CubeError, CubeMeta

__all__ = ["IMAGE_BANDS", "IMAGE_ERRORS", "JPEG_DTYPES", "JPEG_QUALITY", "PNG_DTYPES", "jpeg_meta_problem",
           "open_image", "png_meta_problem", "write_jpeg", "write_png"]

IMAGE_ERRORS: tuple[type[Exception], ...] = (rasterio.errors.RasterioError,)
"""Library errors meaning "not a valid image" or "cannot write it" (besides OSError, ValueError, ...)."""

PNG_DTYPES: frozenset[str] = frozenset({"uint8", "uint16"})
JPEG_DTYPES: frozenset[str] = frozenset({"uint8"})
IMAGE_BANDS: tuple[int, ...] = (1, 3)
"""Band counts an image stores: grey or RGB (an alpha channel is the mask, not a band)."""

JPEG_QUALITY = 95
"""libjpeg quality of the JPEGs written (0–100)."""


def open_image(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions) -> layout.Source:
    """Open a PNG or JPEG: its colour channels are the cube's bands (C = 1 or 3), an alpha channel its mask."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        ds = stack.enter_context(rasterio.open(loc.path) if loc.local else rasterio.open(loc.path, opener=loc.fs))
    interp = list(ds.colorinterp)
    colour = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
    alpha = [i + 1 for i, ci in enumerate(interp) if ci == ColorInterp.alpha]
    if ds.driver not in ("PNG", "JPEG"):
        raise CubeError(f"{loc.text}: not a PNG or JPEG image (GDAL reads it as {ds.driver})")
    if ds.colorinterp and ColorInterp.palette in interp:
        raise CubeError(f"{loc.text}: a palette (indexed-colour) image; save it as RGB or greyscale")
    if not colour:
        raise CubeError(f"{loc.text}: the image has no colour channel")
    dtype = np.result_type(*ds.dtypes)
    layout.check_numeric(dtype, loc.text)
    georeferenced = ds.crs is not None or not ds.transform.is_identity

    def window_of(window: tuple[int, int, int, int]) -> rasterio.windows.Window:
        r0, c0, h, w = window
        return rasterio.windows.Window(c0, r0, w, h)

    def read(window: tuple[int, int, int, int], bands: list[int] | None) -> np.ndarray:
        indexes = colour if bands is None else [colour[b] for b in bands]
        return ds.read(indexes=indexes, window=window_of(window), out_dtype=dtype)

    def read_missing(window: tuple[int, int, int, int], bands: list[int] | None) -> np.ndarray:
        hidden = ds.read(alpha[0], window=window_of(window)) == 0  # (h, w)
        count = len(colour) if bands is None else len(bands)
        return np.broadcast_to(hidden[None], (count, *hidden.shape)).copy()

    meta = CubeMeta(
        bands=len(colour),
        band_names=[interp[i - 1].name for i in colour] if len(colour) == 3 else None,
        crs=ds.crs.to_string() if ds.crs else None,
        transform=tuple(ds.transform)[:6] if georeferenced else None,
        dtype=dtype.name,
        format="png" if ds.driver == "PNG" else "jpeg",
        layout="hwc",
        extras={"full_range": (0.0, float(np.iinfo(dtype).max))},
    )
    return layout.Source(shape=(len(colour), ds.height, ds.width), meta=meta, read=read,
                         read_missing=read_missing if alpha else None)


def _mask_problem(meta: CubeMeta, fmt: str) -> str | None:
    if meta.missing is None or not meta.missing.any():
        return None
    if fmt == "JPEG":
        return "a JPEG holds no mask of missing entries: write PNG (alpha) or GeoTIFF instead"
    if not (meta.missing == meta.missing[:1]).all():
        return ("a PNG holds one mask (alpha) for all its bands; these missing entries differ between bands: "
                "write HDF5 instead")
    return None


def png_meta_problem(meta: CubeMeta) -> str | None:
    """Why a PNG cannot store ``meta`` (missing entries that differ between bands), or ``None``."""
    return _mask_problem(meta, "PNG")


def jpeg_meta_problem(meta: CubeMeta) -> str | None:
    """Why a JPEG cannot store ``meta`` (any missing entry), or ``None``."""
    return _mask_problem(meta, "JPEG")


def _write(path: str, arr: np.ndarray, meta: CubeMeta, driver: str, **options: Any) -> None:
    """Write the (C, H, W) integer cube (C in :data:`IMAGE_BANDS`) with GDAL's ``driver``, the common mask as
    alpha (PNG), no side files."""
    c, h, w = arr.shape  # c in IMAGE_BANDS: write_cube checked it (the row's band_counts)
    bands = [arr]
    if meta.missing is not None and meta.missing.any():
        full = np.iinfo(arr.dtype).max
        bands.append(np.where(meta.missing[0], 0, full).astype(arr.dtype)[None])
    data = np.concatenate(bands)
    profile: dict[str, Any] = {"driver": driver, "width": w, "height": h, "count": data.shape[0],
                               "dtype": arr.dtype.name, **options}
    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED=False):
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            if data.shape[0] in (2, 4):
                ds.colorinterp = [*ds.colorinterp[:-1], ColorInterp.alpha]


def write_png(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    """Write the (C, H, W) uint8 / uint16 cube (C = 1 or 3) to ``paths[0]`` as a PNG, the missing entries of
    ``meta.missing`` (one mask for all bands) as its alpha channel."""
    _write(paths[0], arr, meta, "PNG", ZLEVEL=6)


def write_jpeg(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    """Write the (C, H, W) uint8 cube (C = 1 or 3) to ``paths[0]`` as a JPEG of quality :data:`JPEG_QUALITY`."""
    _write(paths[0], arr, meta, "JPEG", QUALITY=JPEG_QUALITY)
