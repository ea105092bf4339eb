"""MATLAB ``.mat`` cubes: v5 through scipy.io, v7.3 (HDF5 inside) through h5py.

An array format whose convention is MATLAB's rows x cols x bands (H x W x C); the layout rule of
:mod:`hsivar.io.layout` applies to the array as MATLAB shows it. v5 files are read whole; v7.3 files lazily
(a window reads only its block). The writer produces v5 unless the cube reaches v5's 2 GiB variable limit
or ``meta.extras["mat_version"]`` is ``"7.3"``. Variables ``mask`` (H x W x C like the cube, or H x W;
nonzero = observed) and ``bbl`` (one number per band, 0 = bad band) give :attr:`CubeMeta.missing`
(:mod:`hsivar.io.masks`) and are written back from it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h5py
import numpy as np
import scipy.io
import scipy.io.matlab

from hsivar.io import layout, masks
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
    if opts.dataset is None:
        numeric = {n: s for n, s in numeric.items() if n not in masks.AUX_KEYS} or numeric
    key = layout.pick(loc.text, "variable", numeric or {n: s for n, s, _ in listing}, opts.dataset)
    if classes[key] in MATLAB_NON_NUMERIC:
        raise CubeError(f"{loc.text}: variable {key!r} is a MATLAB {classes[key]}, not a numeric array")
    extras = {"dataset": key, "mat_version": "5"}
    if opts.shape_only:
        dtype = np.dtype(
            {"single": "float32", "double": "float64", "logical": "bool"}.get(classes[key], classes[key])
        )
        shape_only = layout.ShapeOnly(numeric[key], dtype)
        source = layout.array_source(
            loc.text, shape_only, "mat", layout=opts.layout, default_layout="hwc", extras=extras
        )
        mask_shape = next((s for n, s, _ in listing if n == masks.MASK_KEY and n != key), None)
        mask = layout.ShapeOnly(mask_shape, np.dtype(np.uint8)) if mask_shape is not None else None
        return masks.attach_array_mask(source, loc.text, mask=mask)  # shape checks only: bbl is read with the data
    f.seek(0)
    wanted = [key, "band_names", "wavelength_units", *layout.WAVELENGTH_KEYS, *masks.AUX_KEYS]
    variables = scipy.io.loadmat(f, variable_names=wanted)
    arr = variables.get(key)
    if not isinstance(arr, np.ndarray):
        raise CubeError(f"{loc.text}: variable {key!r} is not a numeric array")
    wl_key = next((k for k in layout.WAVELENGTH_KEYS if k != key and k in variables), None)
    units = layout.as_str(variables["wavelength_units"]) if "wavelength_units" in variables else None
    source = layout.array_source(
        loc.text,
        arr,
        "mat",
        layout=opts.layout,
        default_layout="hwc",
        wavelengths=layout.to_nanometres(layout.as_floats(variables[wl_key]), units) if wl_key else None,
        band_names=layout.as_names(variables["band_names"]) if "band_names" in variables else None,
        extras=extras,
    )
    aux = {k: variables[k] for k in masks.AUX_KEYS if k != key and isinstance(variables.get(k), np.ndarray)}
    return masks.attach_array_mask(source, loc.text, mask=aux.get(masks.MASK_KEY), bbl=aux.get(masks.BBL_KEY))


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
    ``meta.extras["dataset"]`` when a valid name, else ``cube``) with its wavelengths (nm), ``meta.missing``
    (``bbl`` for whole bad bands, an H x W x C uint8 ``mask``, 1 = observed, for other entries) and, in v5,
    its band names."""
    key = layout.dataset_key(meta)
    if not key.isidentifier():
        key = "cube"
    hwc = np.transpose(arr, (1, 2, 0))  # MATLAB convention: rows x cols x bands
    variables: dict[str, Any] = {key: hwc}
    if meta.wavelengths is not None:
        variables["wavelengths"] = np.asarray(meta.wavelengths, dtype=np.float64).reshape(1, -1)
    bad, rest = masks.split_missing(meta.missing) if meta.missing is not None else (None, None)
    if bad is not None and key != masks.BBL_KEY:
        variables[masks.BBL_KEY] = (~bad).astype(np.uint8).reshape(1, -1)
    if rest is not None and key != masks.MASK_KEY:
        variables[masks.MASK_KEY] = np.transpose(~meta.missing, (1, 2, 0)).astype(np.uint8)  # like the cube
    if meta.extras.get("mat_version") == "7.3" or arr.nbytes >= _MAT_V5_LIMIT:
        _write_mat73(paths[0], variables)  # band names (cell arrays) are not kept in v7.3
        return
    if meta.band_names is not None:
        variables["band_names"] = np.asarray(meta.band_names, dtype=object).reshape(1, -1)
    with open(paths[0], "wb") as f:
        scipy.io.savemat(f, variables, do_compression=True)
