"""Request and response bodies of the Serve API: cubes as ``.npy``, GeoTIFF or HDF5 bytes, and images (PNG, JPEG) for
models of 1 or 3 bands.

Nothing is unpickled: ``.npy`` bodies are read with ``allow_pickle=False`` (object arrays are refused),
GeoTIFF and images through rasterio (GDAL) and HDF5 through h5py, all via :func:`hsivar.io.read_cube` on a private
temporary file, so a request is parsed exactly like a file of the batch path (layout rules, CRS,
transform, nodata, band names, wavelengths, and the entries the file marks as not observed: a GeoTIFF
internal mask, an HDF5 ``mask`` dataset, a bad band list ``bbl``, :mod:`hsivar.io.masks`). The ``bad_bands``
query parameter adds whole bands (:func:`parse_bad_bands`). Every problem is a :class:`PayloadError`
carrying the HTTP status to answer with.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import h5py
import numpy as np

from hsivar.io import (
    FORMAT_TABLE,
    CubeError,
    CubeMeta,
    band_missing,
    cube_shape,
    format_aliases,
    media_types,
    read_cube,
    response_types,
    write_cube,
)

MEDIA_TYPES: dict[str, str] = media_types()
"""Accepted request media types → cube format (from the format table of :mod:`hsivar.io`)."""

RESPONSE_TYPES: dict[str, str] = response_types()
"""Cube format → response media type."""

FORMAT_ALIASES: dict[str, str] = format_aliases(servable_only=True)
"""Values of the ``format`` query parameter → cube format."""


class PayloadError(ValueError):
    """A request body or option that cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def media_format(content_type: str | None) -> str:
    """The cube format of a ``Content-Type`` header.

    Raises:
        PayloadError(415): missing or unsupported media type (the message lists the accepted ones).
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in MEDIA_TYPES:
        shown = media or "none"
        raise PayloadError(415, f"unsupported media type {shown!r}; send the cube as one of "
                                f"{', '.join(sorted(MEDIA_TYPES))}")
    return MEDIA_TYPES[media]


def output_format(name: str | None, default: str) -> str:
    """The response format for the ``format`` query value (``npy``, ``tiff``, ``h5``; default: the request's)."""
    if name is None or name == "":
        return default
    fmt = FORMAT_ALIASES.get(name.lower())
    if fmt is None:
        raise PayloadError(422, f"unknown format {name!r}; expected one of {', '.join(FORMAT_ALIASES)}")
    return fmt


def check_output(fmt: str, dtype: str, bands: int) -> None:
    """Refuse (422) a response format that cannot hold the answer: a ``dtype`` or a band count it does not store
    (an image holds 1 or 3 bands of uint8 / uint16; JPEG uint8), before any work is done.

    Raises:
        PayloadError(422): naming the format, what it stores, and what to ask for instead.
    """
    row = FORMAT_TABLE[fmt]
    if row.dtypes is not None and dtype not in row.dtypes:
        raise PayloadError(422, f"format {fmt} stores {', '.join(sorted(row.dtypes))}, not {dtype}: ask dtype=source "
                                "with an image of that type, or format=tiff / npy / h5 for float32")
    if row.band_counts is not None and bands not in row.band_counts:
        raise PayloadError(422, f"format {fmt} stores {' or '.join(map(str, row.band_counts))} bands, not {bands}: "
                                "ask format=tiff, npy or h5")


def parse_bad_bands(text: str | None, bands: int) -> list[int]:
    """The ``bad_bands`` query value, 0-based band indices separated by commas (``"3,7"``), checked against the
    model's ``bands``; ``None`` or ``""`` → ``[]``.

    Raises:
        PayloadError(422): an item that is not an integer, or an index outside [0, bands) (the message names it).
    """
    if text is None or not text.strip():
        return []
    indices = []
    for item in text.split(","):
        try:
            indices.append(int(item.strip()))
        except ValueError:
            raise PayloadError(422, f"query parameter bad_bands={text!r}: {item.strip()!r} is not a band index; "
                                    "expected 0-based integers separated by commas, e.g. bad_bands=3,7") from None
    out = sorted({b for b in indices if not 0 <= b < bands})
    if out:
        raise PayloadError(422, f"query parameter bad_bands={text!r}: band(s) {out} out of range for the model's "
                                f"{bands} bands (0-based, 0..{bands - 1})")
    return sorted(set(indices))


def request_missing(meta: CubeMeta, bad_bands: list[int], shape: tuple[int, int, int]) -> np.ndarray | None:
    """(C, H, W) bool entries of a request that were not observed: the body's own (``meta.missing``: its mask,
    its bad band list) and the ``bad_bands`` of the query; ``None`` when there are none."""
    missing = meta.missing
    if bad_bands:
        extra = band_missing(bad_bands, shape)
        missing = extra if missing is None else missing | extra
    return missing


def decode_cube(body: bytes, fmt: str, *, bands: int | None = None, max_values: int | None = None,
                dataset: str | None = None) -> tuple[np.ndarray, CubeMeta]:
    """Parse a request body into a cube (C, H, W) float32 in its own units, plus its metadata.

    Args:
        fmt: a served format (``npy``, ``geotiff``, ``hdf5``, ``png``, ``jpeg``; from :func:`media_format`).
        bands: when given, a cube with another band count is refused (422) before its values are read.
        max_values: when given, a cube with more than this many values C·H·W is refused (413) before
            its values are read (compressed GeoTIFF / HDF5 bodies can expand a lot).
        dataset: HDF5 dataset holding the cube (default: the only 3-D one).
    Returns:
        (cube, meta); NaN/Inf values are kept (the caller decides: 422 unless they are nodata or not observed);
        ``meta.missing``: the (C, H, W) bool entries the body marks as not observed, or None.
    Raises:
        PayloadError: 400 for an empty, corrupt or non-cube body (not 3-D, Python objects, several
            candidate datasets, a mask of the wrong shape, a bad band list of the wrong length), 413 too many
            values, 422 wrong band count.
    """
    if not body:
        raise PayloadError(400, "empty request body; send the cube's bytes")
    with tempfile.TemporaryDirectory(prefix="hsivar-req-") as tmp:
        path = Path(tmp) / f"request{FORMAT_TABLE[fmt].write_suffix}"
        path.write_bytes(body)
        try:
            shape = cube_shape(path, dataset=dataset)
        except CubeError as exc:
            raise PayloadError(400, _strip(str(exc), path)) from None
        if max_values is not None and math.prod(shape) > max_values:
            raise PayloadError(413, f"cube of shape {shape} has {math.prod(shape)} values; this endpoint accepts "
                                    f"at most {max_values} (use the batch job for larger scenes)")
        if bands is not None and shape[0] != bands:
            raise PayloadError(422, f"cube has {shape[0]} bands but the model restores {bands} bands "
                                    f"(shape {shape}, (C, H, W))")
        try:
            cube, meta = read_cube(path, dataset=dataset, allow_nonfinite=True)
        except CubeError as exc:
            raise PayloadError(400, _strip(str(exc), path)) from None
    meta.extras.pop("source", None)
    return cube, meta


def encode_cube(cube: np.ndarray, meta: CubeMeta, fmt: str, *, dtype: str | None = None,
                std: np.ndarray | None = None, kept: np.ndarray | None = None) -> bytes:
    """The bytes of ``cube`` (C, H, W) in ``fmt`` (GeoTIFF keeps CRS, transform, nodata, band metadata). The
    request's unobserved entries (``meta.missing``) are not written: the cube holds values there now.

    Args:
        dtype: dtype written (e.g. ``meta.dtype`` for the request's dtype); default the cube's.
        std: (C, H, W) per-pixel uncertainty, stored as dataset ``std`` next to the cube (HDF5 only).
        kept: (C, H, W) bool entries that hold the request's values bit for bit, stored as dataset ``kept``
            (uint8, 1 = kept as observed, 0 = synthesised or restored) next to the cube (HDF5 only; other
            formats: ignored, the response headers count them).
    """
    keep = ("dataset",) if fmt == "hdf5" else ()
    meta = dataclasses.replace(meta, extras={k: v for k, v in meta.extras.items() if k in keep}, missing=None)
    taken = {name for name, extra in (("std", std), ("kept", kept)) if extra is not None}
    if meta.extras.get("dataset") in taken:
        meta.extras["dataset"] = "cube"
    with tempfile.TemporaryDirectory(prefix="hsivar-resp-") as tmp:
        path = Path(tmp) / f"response{FORMAT_TABLE[fmt].write_suffix}"
        write_cube(path, cube, meta, format=fmt, dtype=dtype)
        if std is not None:
            if fmt != "hdf5":
                raise PayloadError(422, "the uncertainty cube is returned in HDF5 only (format=h5)")
            with h5py.File(path, "a") as h5:
                ds = h5.create_dataset("std", data=np.asarray(std, np.float32), compression="gzip")
                ds.attrs["layout"] = "chw"
                ds.attrs["description"] = "per-pixel standard deviation over samples, in the cube's units"
        if kept is not None and fmt == "hdf5":
            with h5py.File(path, "a") as h5:
                ds = h5.create_dataset("kept", data=np.asarray(kept, np.uint8), compression="gzip")
                ds.attrs["layout"] = "chw"
                ds.attrs["description"] = ("1 where the entry holds the request's value bit for bit (observed), "
                                           "0 where it was synthesised (not observed) or restored")
        return path.read_bytes()


def _strip(message: str, path: Path) -> str:
    """A reader message about the private temporary file, phrased about the request body."""
    return message.replace(str(path), "request body")
