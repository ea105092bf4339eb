"""NumPy cubes: ``.npy`` (one array) and ``.npz`` (named arrays, the cube beside its wavelengths / names).

Both are array formats: the band axis follows the layout rule of :mod:`hsivar.io.layout`. Local ``.npy``
files are memory-mapped, so a window reads only its block; ``.npz`` members are read whole.
"""

from __future__ import annotations

import contextlib
import math
import zipfile
from typing import Any

import numpy as np

from hsivar.io import layout
from hsivar.io.location import Location
from hsivar.io.meta import CubeError, CubeMeta

__all__ = ["NPZ_ERRORS", "open_npy", "open_npz", "write_npy", "write_npz"]

NPZ_ERRORS: tuple[type[Exception], ...] = (zipfile.BadZipFile,)
"""Library errors meaning "not a valid .npz" (besides OSError, ValueError, ...)."""


def _npy_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from an open .npy stream, leaving it at the start of the data."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def open_npy(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions) -> layout.Source:
    """Open a ``.npy`` cube (3-D array, any real dtype); local files are memory-mapped."""
    with loc.open() as f:
        shape, _, dtype = _npy_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise CubeError(f"{loc.text}: the .npy holds Python objects, not numbers")
    needed = offset + math.prod(shape) * dtype.itemsize
    layout.require_size(loc, needed, f".npy: header declares {shape} {dtype.name} ({needed} bytes)")
    if opts.shape_only:
        arr: Any = layout.ShapeOnly(shape, dtype)
    elif loc.local:
        arr = np.load(loc.path, mmap_mode="r", allow_pickle=False)  # windowed reads touch only the block
    else:
        f = stack.enter_context(loc.open())
        arr = np.load(f, allow_pickle=False)
    return layout.array_source(loc.text, arr, "npy", layout=opts.layout, default_layout="chw")


def open_npz(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions) -> layout.Source:
    """Open the cube of a ``.npz``: ``opts.dataset`` or the only 3-D numeric member, with the
    ``wavelengths`` / ``band_names`` / ``layout`` members stored beside it."""
    zf = stack.enter_context(zipfile.ZipFile(stack.enter_context(loc.open())))
    members = {name[:-4]: name for name in zf.namelist() if name.endswith(".npy")}
    headers = {}
    for key, member in members.items():
        with zf.open(member) as f:
            headers[key] = _npy_header(f)

    def load(key: str) -> np.ndarray:
        with zf.open(members[key]) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    shapes = {k: h[0] for k, h in headers.items() if h[2].kind in "biuf"}
    key = layout.pick(loc.text, "array", shapes or {k: h[0] for k, h in headers.items()}, opts.dataset)
    shape, _, dtype = headers[key]
    arr: Any = layout.ShapeOnly(shape, dtype) if opts.shape_only else load(key)
    others = {k for k in members if k != key}
    wl_key = next((k for k in layout.WAVELENGTH_KEYS if k in others and len(headers[k][0]) <= 2), None)
    return layout.array_source(
        loc.text,
        arr,
        "npz",
        layout=opts.layout,
        default_layout="chw",
        stored_layout=layout.as_str(load("layout")) if "layout" in others else None,
        wavelengths=layout.as_floats(load(wl_key)) if wl_key else None,
        band_names=layout.as_names(load("band_names")) if "band_names" in others else None,
        extras={"dataset": key},
    )


def write_npy(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    """Write the (C, H, W) cube to ``paths[0]`` as ``.npy`` (the format holds no metadata)."""
    with open(paths[0], "wb") as f:
        np.save(f, arr)


def write_npz(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    """Write the (C, H, W) cube to ``paths[0]`` as compressed ``.npz`` with its layout, wavelengths (nm)
    and band names."""
    entries: dict[str, np.ndarray] = {layout.dataset_key(meta).replace("/", "_"): arr, "layout": np.array("chw")}
    if meta.wavelengths is not None:
        entries["wavelengths"] = np.asarray(meta.wavelengths, dtype=np.float64)
    if meta.band_names is not None:
        entries["band_names"] = np.asarray(meta.band_names, dtype=str)
    with open(paths[0], "wb") as f:
        np.savez_compressed(f, **entries)
