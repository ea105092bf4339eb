"""Hyperspectral cube I/O: .npy, .npz, HDF5, MATLAB .mat (v5 and v7.3), GeoTIFF (written as Cloud-Optimized
GeoTIFF) and ENVI, and the sensor products EnMAP L1C/L2A, PRISMA L1/L2 HE5 and EMIT L2A reflectance (read only),
on local paths or any fsspec URI.

- :func:`read_cube` / :func:`cube_shape` / :func:`write_cube` (:mod:`hsivar.io.cube`): cubes are float32
  (C, H, W) in source units plus a :class:`CubeMeta`; writes are atomic.
- :mod:`hsivar.io.registry`: the one table of formats (:data:`FORMAT_TABLE`) and what derives from it:
  :func:`detect_format`, the listing rule :func:`split_listing`, alias and HTTP media-type lookups.
- :mod:`hsivar.io.location`: locations and the project's atomic write (:func:`staged`,
  :func:`write_bytes_atomic`).
- :mod:`hsivar.io.bands`: :func:`select_bands`, :func:`resample_bands`, :func:`match_bands`.
- :mod:`hsivar.io.masks`: the entries a file marks as not observed (bad band lists ``bbl``, masks; nonzero
  mask = observed), read into ``CubeMeta.missing`` and written back from it; :func:`band_missing`.
- One module per format (:mod:`~hsivar.io.npy`, :mod:`~hsivar.io.hdf5`, :mod:`~hsivar.io.mat`,
  :mod:`~hsivar.io.geotiff`, :mod:`~hsivar.io.envi`) with its reader and writer, and per sensor product
  (:mod:`~hsivar.io.enmap`, :mod:`~hsivar.io.prisma` + :mod:`~hsivar.io.prisma_demo`, :mod:`~hsivar.io.emit`)
  with its reader and a writer of small demo products in the real layout; :mod:`hsivar.io.layout` holds the
  layout rule and helpers they share.
- :mod:`hsivar.io.dataarray` (imported on its own, it imports xarray): cubes as ``xarray.DataArray`` with
  band / y / x coordinates and wavelengths, for notebooks.
"""

from hsivar.io.bands import match_bands, resample_bands, select_bands
from hsivar.io.cube import cube_shape, read_cube, write_cube
from hsivar.io.layout import LAYOUTS
from hsivar.io.location import staged, write_bytes_atomic
from hsivar.io.masks import band_missing
from hsivar.io.meta import CubeError, CubeMeta
from hsivar.io.registry import (
    FORMAT_TABLE,
    FORMATS,
    WRITE_FORMATS,
    Format,
    cube_suffixes,
    detect_format,
    format_aliases,
    format_named,
    media_types,
    output_name,
    response_types,
    split_listing,
    writer_row,
)

__all__ = [
    "FORMATS",
    "FORMAT_TABLE",
    "LAYOUTS",
    "WRITE_FORMATS",
    "CubeError",
    "CubeMeta",
    "Format",
    "band_missing",
    "cube_shape",
    "cube_suffixes",
    "detect_format",
    "format_aliases",
    "format_named",
    "match_bands",
    "media_types",
    "output_name",
    "read_cube",
    "resample_bands",
    "response_types",
    "select_bands",
    "split_listing",
    "staged",
    "write_bytes_atomic",
    "write_cube",
    "writer_row",
]
