"""What a cube reader returns besides the values: :class:`CubeMeta`, and the one error type :class:`CubeError`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CubeError", "CubeMeta"]


class CubeError(ValueError):
    """A cube could not be read or written; the message names the source (path/URI) and the problem."""


@dataclass
class CubeMeta:
    """What is known about a cube besides its values.

    Attributes:
        bands: number of bands C of the cube this describes.
        wavelengths: band centre wavelengths in nanometres (length C), when known.
        band_names: band names (length C), when known.
        fwhm: band full widths at half maximum in nanometres (length C), when known (sensor products,
            ENVI ``fwhm``, GeoTIFF / HDF5 written by hsivar).
        crs: coordinate reference system, ``"EPSG:xxxx"`` or WKT (GeoTIFF, ENVI).
        transform: affine 6-tuple ``(a, b, c, d, e, f)`` mapping (col, row) pixel corners to CRS
            coordinates, as in rasterio/affine; for a windowed read it is the window's transform.
        nodata: the source's no-data value, in source units.
        dtype: the source dtype name (e.g. ``"uint16"``); the cube itself is always float32.
        value_range: (min, max) of the finite source values that were read, in source units.
        format: one of :data:`hsivar.io.FORMATS`.
        layout: axis order the source was stored in (``"chw"``, ``"hwc"``, ``"hcw"`` for ENVI BIL).
        missing: (C, H, W) bool, True where the file marks an entry as *not observed*, or ``None`` when it
            marks none: every entry of the bands a bad band list names (ENVI header ``bbl``, GeoTIFF tag
            ``bbl``, HDF5 attribute / dataset ``bbl``, .mat variable ``bbl``; 0 = bad band, 1 = good), and
            the entries a mask leaves out (GeoTIFF internal / per-dataset mask, HDF5 / .mat ``mask``
            dataset; mask value nonzero = observed, as GDAL masks). Voxels equal to ``nodata`` are not in
            it (``nodata`` says them). For a window / band subset it covers what was read. See
            :mod:`hsivar.io.masks`. Not compared, not shown by ``repr``.
        extras: format-specific details: ``source`` (the path/URI read), ``dataset`` (HDF5 dataset,
            npz key or .mat variable), ``mat_version``, ``interleave`` (ENVI), ``window``,
            ``full_shape`` (C, H, W of the whole source), ``warnings`` (metadata that was ignored).
    """

    bands: int = 0
    wavelengths: list[float] | None = None
    band_names: list[str] | None = None
    fwhm: list[float] | None = None
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    nodata: float | None = None
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None
    format: str | None = None
    layout: str = "chw"
    extras: dict = field(default_factory=dict)
    missing: np.ndarray | None = field(default=None, compare=False, repr=False)
