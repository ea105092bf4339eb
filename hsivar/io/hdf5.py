"""HDF5 cubes (``.h5``, ``.hdf5``, ``.he5``) through h5py; also the reader of MATLAB v7.3 files (HDF5 inside).

An array format: the band axis follows the layout rule of :mod:`hsivar.io.layout`. Datasets are read
lazily (remote files through fsspec file objects), so a window reads only the chunks it touches. The
writer stores the cube band-chunked with its layout, wavelengths (nm), band names, CRS, transform and
nodata as dataset attributes. A ``mask`` dataset and a bad band list ``bbl`` give
:attr:`CubeMeta.missing` (:mod:`hsivar.io.masks`: mask nonzero = observed; bbl 0 = bad band); mask and bbl
arrays are never taken for the cube unless ``dataset=`` names them.
"""

from __future__ import annotations

import contextlib
import posixpath
from typing import Any

import h5py
import numpy as np

from hsivar.io import layout, masks
from hsivar.io.location import Location
from hsivar.io.meta import CubeError, CubeMeta

__all__ = ["MATLAB_NON_NUMERIC", "open_hdf5", "write_hdf5"]

MATLAB_NON_NUMERIC: tuple[str, ...] = ("cell", "struct", "char", "object", "function_handle", "sparse", "opaque")
"""MATLAB classes that are never the cube (``MATLAB_class`` attribute in v7.3, class in v5 listings)."""


def _attr(obj: Any, *names: str) -> Any:
    """The first of the attributes ``names`` that ``obj`` has, else ``None``."""
    for name in names:
        if name in obj.attrs:
            return obj.attrs[name]
    return None


def open_hdf5(
    loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions, *, mat73: bool = False
) -> layout.Source:
    """Open the cube of an HDF5 file: ``opts.dataset`` or the only 3-D numeric dataset.

    Wavelengths come from the dataset's ``wavelengths`` attribute or a ``wavelengths`` dataset beside it
    (micrometres are converted to nm). ``mat73=True`` reads a MATLAB v7.3 file: variables are datasets
    whose axes are stored reversed, non-numeric MATLAB classes are skipped and the layout default is HWC.
    """
    handle = loc.path if loc.local else stack.enter_context(loc.open())
    h5 = stack.enter_context(h5py.File(handle, "r"))
    datasets: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: Any) -> None:
        # MATLAB keeps cell/string contents under "#refs#"; those are never the cube.
        if isinstance(obj, h5py.Dataset) and not name.startswith("#") and obj.dtype.kind in "biuf":
            if mat73 and layout.as_str(obj.attrs.get("MATLAB_class")) in MATLAB_NON_NUMERIC:
                return
            datasets[name] = obj

    h5.visititems(visit)
    kind = "variable" if mat73 else "dataset"
    shapes = {name: (ds.shape[::-1] if mat73 else ds.shape) for name, ds in datasets.items()}
    referenced = {masks.resolve_mask_name(layout.as_str(ds.attrs.get(masks.MASK_KEY)), name)
                  for name, ds in datasets.items()}
    aux = {n for n in shapes if posixpath.basename(n) in masks.AUX_KEYS or n in referenced}
    candidates = shapes if opts.dataset is not None else {n: s for n, s in shapes.items() if n not in aux} or shapes
    name = layout.pick(loc.text, kind, candidates, opts.dataset)
    ds = datasets[name]

    wl = _attr(ds, "wavelengths", "wavelength")
    units = layout.as_str(_attr(ds, "wavelength_units"))
    if wl is None:
        parent = posixpath.dirname(name)
        for candidate in [posixpath.join(parent, k) for k in layout.WAVELENGTH_KEYS] + list(layout.WAVELENGTH_KEYS):
            if candidate != name and candidate in datasets and datasets[candidate].size < 100_000:
                wl = datasets[candidate][()]
                units = units or layout.as_str(_attr(datasets[candidate], "units", "wavelength_units"))
                break
    transform = layout.as_floats(_attr(ds, "transform"))
    nodata = layout.as_floats(_attr(ds, "nodata"))
    extras: dict[str, Any] = {"dataset": name}
    if mat73:
        extras["mat_version"] = "7.3"
    source = layout.array_source(
        loc.text,
        ds,
        "mat" if mat73 else "hdf5",
        layout=opts.layout,
        default_layout="hwc" if mat73 else "chw",
        stored_layout=layout.as_str(_attr(ds, "layout")),
        reversed_axes=mat73,
        wavelengths=layout.to_nanometres(layout.as_floats(wl), units),
        band_names=layout.as_names(_attr(ds, "band_names")),
        fwhm=layout.to_nanometres(layout.as_floats(_attr(ds, "fwhm")), units),
        extras=extras,
        crs=layout.as_str(_attr(ds, "crs")),
        transform=tuple(transform) if transform and len(transform) >= 6 else None,
        nodata=nodata[0] if nodata else None,
    )
    mask_name, bbl = _mask_and_bbl(loc.text, ds, name, datasets)
    return masks.attach_array_mask(source, loc.text, mask=datasets[mask_name] if mask_name else None,
                                   mask_name=mask_name or masks.MASK_KEY, bbl=bbl, reversed_axes=mat73)


def _beside(name: str, key: str, datasets: dict[str, h5py.Dataset]) -> str | None:
    """The dataset ``key`` in the group of dataset ``name``, else at the root, else ``None``."""
    for candidate in (posixpath.join(posixpath.dirname(name), key), key):
        if candidate != name and candidate in datasets:
            return candidate
    return None


def _mask_and_bbl(src: str, ds: h5py.Dataset, name: str,
                  datasets: dict[str, h5py.Dataset]) -> tuple[str | None, Any]:
    """The cube's mask dataset (named by its ``mask`` attribute, else ``mask`` beside it) and bad band list
    (its ``bbl`` attribute, else a ``bbl`` dataset beside it)."""
    referenced = masks.resolve_mask_name(layout.as_str(ds.attrs.get(masks.MASK_KEY)), name)
    if referenced is not None and referenced not in datasets:
        raise CubeError(f"{src}: the cube's mask attribute names {referenced!r}, which is not a numeric "
                        "dataset of the file")
    mask_name = referenced or _beside(name, masks.MASK_KEY, datasets)
    bbl = _attr(ds, masks.BBL_KEY)
    if bbl is None:
        bbl_name = _beside(name, masks.BBL_KEY, datasets)
        bbl = datasets[bbl_name][()] if bbl_name is not None and datasets[bbl_name].size < 100_000 else None
    return mask_name, bbl


def write_hdf5(paths: list[str], arr: np.ndarray, meta: CubeMeta) -> None:
    """Write the (C, H, W) cube to ``paths[0]`` as a gzip-compressed dataset (``meta.extras["dataset"]``,
    default ``cube``) chunked one band x 256 x 256 pixels, with its metadata as attributes; ``meta.missing``
    as a ``bbl`` attribute (whole bad bands) and, for other missing entries, a (C, H, W) uint8 ``mask``
    dataset (1 = observed) that the cube's ``mask`` attribute names."""
    c, h, w = arr.shape
    with h5py.File(paths[0], "w") as h5:
        ds = h5.create_dataset(
            layout.dataset_key(meta),
            data=arr,
            chunks=(1, min(h, 256), min(w, 256)),  # one band x tile: cheap windows and band subsets
            compression="gzip",
            compression_opts=4,
            shuffle=True,
        )
        ds.attrs["layout"] = "chw"
        if meta.wavelengths is not None:
            ds.attrs["wavelengths"] = np.asarray(meta.wavelengths, dtype=np.float64)
            ds.attrs["wavelength_units"] = "nm"
        if meta.fwhm is not None:
            ds.attrs["fwhm"] = np.asarray(meta.fwhm, dtype=np.float64)
            ds.attrs["wavelength_units"] = "nm"
        if meta.band_names is not None:
            ds.attrs["band_names"] = np.asarray(meta.band_names, dtype=h5py.string_dtype())
        if meta.crs is not None:
            ds.attrs["crs"] = meta.crs
        if meta.transform is not None:
            ds.attrs["transform"] = np.asarray(meta.transform[:6], dtype=np.float64)
        if meta.nodata is not None:
            ds.attrs["nodata"] = float(meta.nodata)
        bad, rest = masks.split_missing(meta.missing) if meta.missing is not None else (None, None)
        if bad is not None:
            ds.attrs[masks.BBL_KEY] = (~bad).astype(np.uint8)
        if rest is not None:
            mask_key = masks.MASK_KEY if ds.name.strip("/") != masks.MASK_KEY else "observed"
            h5.create_dataset(mask_key, data=(~meta.missing).astype(np.uint8), chunks=ds.chunks, compression="gzip",
                              compression_opts=4, shuffle=True)
            ds.attrs[masks.MASK_KEY] = "/" + mask_key
