"""MATLAB ``.mat`` cubes: v5 through scipy.io, v7.3 (HDF5 inside) through h5py.

An array format whose convention is MATLAB's rows x cols x bands (H x W x C); the layout rule of
:mod:`hsivar.io.layout` applies to the array as MATLAB shows it. v5 files are read whole; v7.3 files lazily
(a window reads only its block). The writer produces v5 unless the cube reaches v5's 2 GiB variable limit
or ``meta.extras["mat_version"]`` is ``"7.3"``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h5py
import numpy as np
import scipy.io
import scipy.io.matlab

from hsivar.io import layout
from hsivar.io.hdf5 import MATLAB_NON_NUMERIC, open_hdf5
from hsivar.io.location import Location
from hsivar.io.meta import CubeError, CubeMeta

__all__ = ["MAT_ERRORS", "open_mat", "write_mat"]

MAT_ERRORS: tuple[type[Exception], ...] = (scipy.io.matlab.MatReadError,)
"""Library errors meaning "not a valid .mat" (besides OSError, ValueError, ...)."""

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAT_V5_LIMIT = 2**31 - 1024  # v5 variables are limited to 2 GiB; larger cubes go to v7.3
_MATLAB_CLASS = {
    "float64": "double", "float32": "single", "int8": "int8", "uint8": "uint8", "int16": "int16",
    "uint16": "uint16", "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
}  # fmt: skip


def _is_mat73(loc: Location) -> bool:
    """Whether the file is MATLAB v7.3 (HDF5 behind a 512-byte header), from its first bytes."""
    with loc.open() as f:
        head = f.read(520)
    return head.startswith(b"MATLAB 7.3") or head[512:520] == _HDF5_SIGNATURE or head[:8] == _HDF5_SIGNATURE


def open_mat(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions) -> layout.Source:
    """Open the cube of a .mat file: ``opts.dataset`` or the only 3-D numeric variable, with the
    ``wavelengths`` (and ``wavelength_units``) and ``band_names`` variables beside it."""
    if _is_mat73(loc):
        return open_hdf5(loc, stack, opts, mat73=True)
    f = stack.enter_context(loc.open())
    listing = scipy.io.whosmat(f)
    classes = {name: cls for name, _, cls in listing}
    numeric = {name: shape for name, shape, cls in listing if cls not in MATLAB_NON_NUMERIC}
    key = layout.pick(loc.text, "variable", numeric or {n: s for n, s, _ in listing}, opts.dataset)
    if classes[key] in MATLAB_NON_NUMERIC:
        raise CubeError(f"{loc.text}: variable {key!r} is a MATLAB {classes[key]}, not a numeric array")
    extras = {"dataset": key, "mat_version": "5"}
    if opts.shape_only:
        dtype = np.dtype(
            {"single": "float32", "double": "float64", "logical": "bool"}.get(classes[key], classes[key])
        )
        shape_only = layout.ShapeOnly(numeric[key], dtype)
        return layout.array_source(
            loc.text, shape_only, "mat", layout=opts.layout, default_layout="hwc", extras=extras
        )
    f.seek(0)
    wanted = [key, "band_names", "wavelength_units", *layout.WAVELENGTH_KEYS]
    variables = scipy.io.loadmat(f, variable_names=wanted)
    arr = variables.get(key)
    if not isinstance(arr, np.ndarray):
        raise CubeError(f"{loc.text}: variable {key!r} is not a numeric array")
    wl_key = next((k for k in layout.WAVELENGTH_KEYS if k != key and k in variables), None)
    units = layout.as_str(variables["wavelength_units"]) if "wavelength_units" in variables else None
    return layout.array_source(
        loc.text,
        arr,
        "mat",
        layout=opts.layout,
        default_layout="hwc",
        wavelengths=layout.to_nanometres(layout.as_floats(variables[wl_key]), units) if wl_key else None,
        band_names=layout.as_names(variables["band_names"]) if "band_names" in variables else None,
        extras=extras,
    )


def _write_mat73(path: str, variables: dict[str, np.ndarray]) -> None:
    """Write numeric variables as a MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header and axes
    stored in reverse order (MATLAB is column-major)."""
    with h5py.File(path, "w", userblock_size=512) as h5:
        for name, value in variables.items():
            value = np.asarray(value)
            ds = h5.create_dataset(name, data=np.ascontiguousarray(value.T))
            ds.attrs["MATLAB_class"] = np.bytes_(_MATLAB_CLASS[value.dtype.name])
    text = b"MATLAB 7.3 MAT-file, Platform: hsivar, Created by: hsivar.io HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header.ljust(512, b"\x00"))


def write_mat(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    """Write the (C, H, W) cube to ``paths[0]`` MATLAB-style as H x W x C (variable
    ``meta.extras["dataset"]`` when a valid name, else ``cube``) with its wavelengths (nm) and, in v5,
    its band names."""
    key = layout.dataset_key(meta)
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
