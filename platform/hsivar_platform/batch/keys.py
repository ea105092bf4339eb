"""Which inputs a batch job restores and where each output goes.

Output keys are the input keys relative to the input prefix, under the output prefix; the uncertainty
cube of ``a.tif`` is ``a.std.tif``. A key with ``..``, ``.`` or empty segments (possible in object
stores) is refused, so no output lands outside the output prefix. Which files are cubes is decided by
the one listing rule of :func:`hsivar.io.split_listing` (the training data listing uses it too).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from hsivar.io import FORMAT_TABLE, detect_format, output_name, split_listing, writer_row
from hsivar_platform import storage

UNCERTAINTY_SUFFIX = ".std"
"""Inserted before the extension of an output to name its uncertainty cube: ``a.tif`` → ``a.std.tif``."""
KEPT_SUFFIX = ".kept"
"""Inserted before the extension of an output to name its mask of entries kept as observed: ``a.kept.tif``."""


class UnsafeKeyError(ValueError):
    """An input key cannot be mapped into the output prefix safely (``..``, ``.`` or empty segments)."""


@dataclass
class Input:
    """One listed input: its URI, its key relative to the input prefix and its output URI, or why it is
    skipped (not a cube) or failed (unsafe key)."""

    uri: str
    rel: str | None
    out: str | None
    skip_reason: str = ""
    error: str = ""


def norm_prefix(uri: str) -> str:
    """Local prefixes as absolute paths, remote ones without a trailing slash."""
    s = str(uri)
    if storage.is_remote(s):
        return s.rstrip("/")
    return str(Path(s.removeprefix("file://")).absolute())


def relative_key(uri: str, prefix: str) -> str:
    """The key of ``uri`` relative to ``prefix``, checked segment by segment (never normalised).

    Raises:
        UnsafeKeyError: ``uri`` is not under ``prefix`` or a segment is empty, ``.``, ``..`` or holds a
            backslash / NUL, so the output could land outside the output prefix.
    """
    _, root = storage.filesystem(prefix)
    _, path = storage.filesystem(uri)
    root = root.rstrip("/")
    if path == root:  # the prefix is a single file
        rel = posixpath.basename(path)
    elif path.startswith(root + "/"):
        rel = path[len(root) + 1:]
    else:
        raise UnsafeKeyError(f"{uri}: not under the input prefix {prefix}")
    return check_key(rel, uri)


def check_key(rel: str, uri: str) -> str:
    """``rel`` when every segment is safe to join under the output prefix, for the input ``uri``.

    Raises:
        UnsafeKeyError: an empty, ``.`` or ``..`` segment, or one holding a backslash or NUL.
    """
    for part in rel.split("/"):
        if part in ("", ".", "..") or "\\" in part or "\x00" in part:
            raise UnsafeKeyError(f"{uri}: unsafe key {rel!r} (empty, '.' or '..' segments or backslashes); "
                                 "refusing to derive an output key from it")
    return rel


def output_uri(output_prefix: str, rel: str) -> str:
    """The output URI for relative key ``rel`` (already checked by :func:`relative_key`); a sensor product's output
    takes the suffix of the format it is written in (:func:`hsivar.io.output_name`: ``PRS_….he5`` → ``PRS_….tif``)."""
    *folders, name = rel.split("/")
    return storage.join(output_prefix, *folders, output_name(name))


def item_id(rel: str) -> str:
    """The STAC Item id of the output of relative key ``rel``: the key, ``/`` written as ``__``."""
    return rel.replace("/", "__")


def sidecar_uri(out_uri: str, suffix: str, dtype: str = "uint8") -> str:
    """A file of ``dtype`` values beside an output, named by inserting ``suffix`` before its extension:
    ``…/a.tif`` → ``…/a<suffix>.tif`` (ENVI ``a.hdr`` → ``a<suffix>.hdr``). When the output's format cannot store
    ``dtype`` exactly (a PNG's float uncertainty, anything in a lossy JPEG) the sidecar is a GeoTIFF:
    ``a.png`` → ``a<suffix>.tif``."""
    head, ext = posixpath.splitext(out_uri)
    if not writer_row(detect_format(out_uri)).stores_exactly(dtype):
        ext = FORMAT_TABLE["geotiff"].write_suffix
    return f"{head}{suffix}{ext}"


def uncertainty_uri(out_uri: str) -> str:
    """``…/a.tif`` → ``…/a.std.tif`` (ENVI ``a.hdr`` → ``a.std.hdr``; float32 values, so ``a.png`` → ``a.std.tif``)."""
    return sidecar_uri(out_uri, UNCERTAINTY_SUFFIX, "float32")


def is_stac_input(input_prefix: str) -> bool:
    """Whether the input names a STAC document (a ``.json`` file) rather than a prefix or a cube."""
    return str(input_prefix).lower().endswith(".json")


def list_stac_inputs(document: str, output_prefix: str, assets: list[str] | None = None) -> list[Input]:
    """The assets a STAC Item / Collection / ItemCollection names (:func:`hsivar_platform.batch.stac.stac_assets`),
    each with the output ``<output>/<item id>/<asset file name>``; an asset that is not a cube file is skipped.

    Raises:
        FileNotFoundError: no document at ``document``; StacInputError: not usable STAC JSON, or two assets that would
            be restored to the same output (the message says why).
    """
    from hsivar_platform.batch.stac import StacInputError, stac_assets

    if not storage.exists(document):
        raise FileNotFoundError(f"{document}: no such STAC document")
    dst = norm_prefix(output_prefix)
    inputs: list[Input] = []
    for asset in stac_assets(document, assets):
        name = posixpath.basename(asset.href.rstrip("/"))
        cubes, _ = split_listing([asset.href])
        if not cubes:
            inputs.append(Input(asset.href, None, None, skip_reason="not a cube file (unsupported extension)"))
            continue
        try:
            rel = check_key(f"{asset.item_id}/{name}", asset.href)
        except UnsafeKeyError as exc:
            inputs.append(Input(asset.href, None, None, error=str(exc)))
            continue
        inputs.append(Input(asset.href, rel, output_uri(dst, rel)))
    outputs: dict[str, str] = {}
    for item in inputs:
        if item.out is not None and outputs.setdefault(item.out, item.uri) != item.uri:
            raise StacInputError(f"{document}: {outputs[item.out]} and {item.uri} would both be restored to "
                                 f"{item.out} (same item id and file name); restore them in separate jobs")
    return sorted(inputs, key=lambda i: i.uri)


def list_inputs(input_prefix: str, output_prefix: str) -> list[Input]:
    """The inputs under ``input_prefix`` with their output URIs (or why they are skipped / refused).

    Files under ``output_prefix`` (when it lies inside the input prefix) are left out.

    Raises:
        FileNotFoundError: nothing exists at ``input_prefix``.
    """
    src, dst = norm_prefix(input_prefix), norm_prefix(output_prefix)
    fs, root = storage.filesystem(src)
    if not fs.exists(root):
        raise FileNotFoundError(f"{input_prefix}: no such input prefix or file")
    uris = [src] if fs.isfile(root) else storage.list_files(src)
    uris = [u for u in uris if not (u == dst or u.startswith(dst.rstrip("/") + "/"))]
    cubes, others = split_listing(uris)
    inputs = [Input(u, None, None, skip_reason="not a cube file (unsupported extension)") for u in others]
    for uri in cubes:
        try:
            rel = relative_key(uri, src)
        except UnsafeKeyError as exc:
            inputs.append(Input(uri, None, None, error=str(exc)))
            continue
        inputs.append(Input(uri, rel, output_uri(dst, rel)))
    return sorted(inputs, key=lambda i: i.uri)


def remove_stale_temporaries(output_prefix: str) -> int:
    """Delete temporary files an interrupted local run left behind (``.name.*.tmp`` / ``.name.tmp-*``); → count."""
    if storage.is_remote(output_prefix):
        return 0  # object stores get whole objects (one PUT) or nothing
    root = Path(output_prefix)
    if not root.is_dir():
        return 0
    n = 0
    for path in root.rglob(".*"):
        if path.is_file() and (path.name.endswith(".tmp") or ".tmp-" in path.name):
            path.unlink(missing_ok=True)
            n += 1
    return n
