"""Writing one restored cube: in the input's format, atomically, with its sha256.

The cube is written to a local temporary folder first (:func:`hsivar.io.write_cube` picks the format
from the extension and keeps georeferencing, nodata and band metadata), hashed, then published file
by file with :func:`hsivar_platform.storage.write_bytes` (rename locally, one PUT on S3) — ENVI data
before its header, so a header never names missing data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import tempfile
from pathlib import Path

import numpy as np

from hsivar.io import CubeMeta, write_cube
from hsivar_platform import storage


def _sibling(uri: str, name: str) -> str:
    """The URI of file ``name`` in the same folder as ``uri``."""
    if storage.is_remote(uri):
        return posixpath.join(posixpath.dirname(uri), name)
    return str(Path(uri.removeprefix("file://")).parent / name)


def _written_files(local_dst: Path) -> list[Path]:
    """Files :func:`write_cube` produced for ``local_dst``, in publication order (ENVI: data first, header last)."""
    files = sorted(p for p in local_dst.parent.iterdir() if p.is_file())
    return sorted(files, key=lambda p: p.suffix.lower() == ".hdr")


def write_output(uri: str, cube: np.ndarray, meta: CubeMeta, dtype: str | None = None) -> str:
    """Write ``cube`` (C, H, W) to ``uri`` in the format of its extension, atomically; → sha256 hex.

    The checksum covers the bytes of every file written, in publication order (ENVI: data then header).
    """
    with tempfile.TemporaryDirectory(prefix="hsivar-out-") as tmp:
        local = Path(tmp) / posixpath.basename(uri.rstrip("/"))
        write_cube(local, cube, meta, dtype=dtype)
        digest = hashlib.sha256()
        for path in _written_files(local):
            data = path.read_bytes()
            digest.update(data)
            storage.write_bytes(_sibling(uri, path.name), data)
    return digest.hexdigest()


GLT_SUFFIX = ".glt"
"""Inserted before the extension of a swath product's output to name its geolocation table: ``a.glt.tif``."""


def write_glt(input_uri: str, output_uri: str, meta: CubeMeta) -> str | None:
    """For a swath product (EMIT): write its geolocation table beside the output, as a 2-band int32 COG on the
    product's ortho grid (band 1 the swath column ``glt_x``, band 2 the swath row ``glt_y``, 1-based, 0 = no
    data), so the restored swath can be orthorectified like the input; → its URI, or ``None`` for other cubes and
    for a product without a GLT (its reader warned about it)."""
    product = meta.extras.get("product") or {}
    if meta.format != "emit" or not (product.get("crs") and product.get("transform")):
        return None
    from hsivar.io import emit

    glt, crs, transform = emit.read_glt(input_uri, storage.storage_options(input_uri))
    head, ext = posixpath.splitext(output_uri)
    uri = f"{head}{GLT_SUFFIX}{ext}"
    glt_meta = CubeMeta(bands=2, band_names=["glt_x", "glt_y"], crs=crs, transform=tuple(transform), nodata=0)
    write_output(uri, glt, glt_meta, dtype="int32")
    return uri


def meta_to_json(meta: CubeMeta) -> str:
    """A :class:`~hsivar.io.CubeMeta` as JSON (arrays as lists), to travel in a Ray Data row, without ``missing``:
    the input's unobserved entries travel as the observation's mask, and an output holds no unobserved entry (they
    were synthesised; the kept mask says which)."""
    meta = dataclasses.replace(meta, missing=None)
    return json.dumps(dataclasses.asdict(meta), default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def meta_from_json(text: str) -> CubeMeta:
    """The inverse of :func:`meta_to_json`."""
    d = json.loads(text)
    for key in ("transform", "value_range"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return CubeMeta(**d)
