"""The one table of cube formats, and everything derived from it.

Each :class:`Format` row says how a format is named (extensions, file-name patterns, aliases, HTTP media
types), listed and opened / written. Adding a format means one module (its opener and writer) plus one row
in :data:`FORMAT_TABLE`; format detection, the listing rule, alias and media-type lookups and the dispatch
of :func:`hsivar.io.read_cube` / :func:`hsivar.io.write_cube` read the table when called.

Sensor products (EnMAP, PRISMA, EMIT) are rows too: they are recognised by their file names
(``name_patterns``, tried before extensions), are read only, and name the format written in their place
(``output_format``: a restored product is a Cloud-Optimized GeoTIFF).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hsivar.io import emit, enmap, envi, geotiff, hdf5, image, mat, npy, prisma, prisma_demo
from hsivar.io.layout import OpenOptions, Source
from hsivar.io.location import Location, single_target, split_ext
from hsivar.io.meta import CubeError, CubeMeta

__all__ = [
    "FORMATS",
    "FORMAT_TABLE",
    "WRITE_FORMATS",
    "Format",
    "cube_suffixes",
    "detect_file_format",
    "detect_format",
    "format_aliases",
    "format_named",
    "media_types",
    "output_name",
    "response_types",
    "split_listing",
    "writer_row",
]

Opener = Callable[[Location, contextlib.ExitStack, OpenOptions], Source]
"""``open(location, stack, options)``: open a file (closing what it opens through ``stack``) as a Source."""

Writer = Callable[[list[str], np.ndarray, CubeMeta], None]
"""``write(local_paths, cube, meta)``: write a (C, H, W) cube to the local temporary paths of ``targets``."""


@dataclass(frozen=True)
class Format:
    """One cube format.

    Attributes:
        name: the canonical name (``CubeMeta.format``, ``write_cube(format=...)``).
        extensions: lower-case extensions (with the dot) that :func:`detect_format` maps to this format.
        write_suffix: extension given to new files of this format (demo datasets, HTTP bodies).
        open: the reader (see :data:`Opener`).
        write: the writer (see :data:`Writer`); ``None`` for a read-only format (a sensor product).
        aliases: other names accepted for it (CLI ``--format``, HTTP ``?format=``).
        media_types: HTTP media types of request bodies in this format, the first being the response
            type; empty when the format is not served over HTTP.
        targets: the files a write to a location fills, in the order they are moved into place.
        listed_suffixes: suffixes that name a cube in a listing; empty means all ``extensions``.
        header_suffix: for formats made of a header plus a data file: the header's suffix. A file is part
            of the cube named by ``<file><header_suffix>`` or ``<stem><header_suffix>`` when that is listed /
            exists, extension-less data files included.
        dtypes: value dtype names the format can store; ``None``: any real dtype.
        band_counts: band counts the format can store (an image: grey or RGB); ``None``: any.
        lossy: the format changes the values it stores (JPEG): never used for masks or uncertainties.
        meta_problem: says why the format cannot store some metadata (``None`` when it can).
        errors: library exceptions that mean "not a valid file of this format", besides the common ones.
        name_patterns: case-sensitive shell patterns (``fnmatch``) on the file name that claim a file for
            this format before its extension is looked at, e.g. ``PRS_L2*.he5``.
        output_format: for a read-only format, the format a restored cube is written in instead.
        write_demo: for a read-only sensor product, ``write_demo(folder, cube, wavelengths, *, index, missing)``
            writes a small product in its real on-disk layout (demo datasets, tests) and returns the path of
            the file naming it.
        member_of: for a product of several files, ``member_of(uri)`` is the URI of the file naming the
            product that ``uri`` belongs to (its metadata, quality masks, quicklooks), else ``None``; a listing
            drops the members of a listed product.
    """

    name: str
    extensions: tuple[str, ...]
    write_suffix: str
    open: Opener
    write: Writer | None
    aliases: tuple[str, ...] = ()
    media_types: tuple[str, ...] = ()
    targets: Callable[[Location], list[Location]] = single_target
    listed_suffixes: tuple[str, ...] = ()
    header_suffix: str | None = None
    dtypes: frozenset[str] | None = None
    band_counts: tuple[int, ...] | None = None
    lossy: bool = False
    meta_problem: Callable[[CubeMeta], str | None] | None = None
    errors: tuple[type[Exception], ...] = ()
    name_patterns: tuple[str, ...] = ()
    output_format: str | None = None
    member_of: Callable[[str], str | None] | None = None
    write_demo: Callable[..., Any] | None = None

    @property
    def cube_suffixes(self) -> tuple[str, ...]:
        """Suffixes that name a cube of this format in a listing."""
        return self.listed_suffixes or self.extensions

    def stores_exactly(self, dtype: str) -> bool:
        """Whether values of ``dtype`` come back from this format exactly as written."""
        return not self.lossy and (self.dtypes is None or dtype in self.dtypes)

    @property
    def data_extensions(self) -> tuple[str, ...]:
        """Extensions of the files that are part of a cube named by another file (a header)."""
        return tuple(e for e in self.extensions if e not in self.cube_suffixes)


FORMAT_TABLE: dict[str, Format] = {
    row.name: row
    for row in (
        Format(
            "npy", (".npy",), ".npy", npy.open_npy, npy.write_npy,
            media_types=("application/x-npy", "application/npy"),
        ),
        Format("npz", (".npz",), ".npz", npy.open_npz, npy.write_npz, errors=npy.NPZ_ERRORS),
        Format(
            "hdf5", (".h5", ".hdf5", ".he5"), ".h5", hdf5.open_hdf5, hdf5.write_hdf5, aliases=("h5",),
            media_types=("application/x-hdf5", "application/x-hdf", "application/hdf5"),
        ),
        Format("mat", (".mat",), ".mat", mat.open_mat, mat.write_mat, errors=mat.MAT_ERRORS),
        Format(
            "geotiff", (".tif", ".tiff"), ".tif", geotiff.open_geotiff, geotiff.write_geotiff,
            aliases=("tif", "tiff", "cog"), media_types=("image/tiff", "image/tif", "image/geotiff"),
            dtypes=geotiff.GEOTIFF_DTYPES, meta_problem=geotiff.geotiff_meta_problem, errors=geotiff.GEOTIFF_ERRORS,
        ),
        Format(
            "envi", (envi.HEADER_SUFFIX, *envi.DATA_EXTENSIONS), envi.HEADER_SUFFIX, envi.open_envi,
            envi.write_envi, targets=envi.envi_targets, listed_suffixes=(envi.HEADER_SUFFIX,),
            header_suffix=envi.HEADER_SUFFIX, dtypes=envi.ENVI_DTYPES, meta_problem=envi.envi_meta_problem,
            errors=envi.ENVI_ERRORS,
        ),
        Format(
            "png", (".png",), ".png", image.open_image, image.write_png, dtypes=image.PNG_DTYPES,
            media_types=("image/png",), band_counts=image.IMAGE_BANDS, meta_problem=image.png_meta_problem,
            errors=image.IMAGE_ERRORS,
        ),
        Format(
            "jpeg", (".jpg", ".jpeg"), ".jpg", image.open_image, image.write_jpeg, aliases=("jpg",),
            media_types=("image/jpeg", "image/jpg"), dtypes=image.JPEG_DTYPES, band_counts=image.IMAGE_BANDS,
            lossy=True,
            meta_problem=image.jpeg_meta_problem, errors=image.IMAGE_ERRORS,
        ),
        Format(
            "enmap", (), ".TIF", enmap.open_enmap, None, name_patterns=enmap.NAME_PATTERNS,
            output_format="geotiff", member_of=enmap.member_of, write_demo=enmap.write_demo,
            errors=enmap.ENMAP_ERRORS,
        ),
        Format(
            "prisma", (), ".he5", prisma.open_prisma, None, name_patterns=prisma.NAME_PATTERNS,
            output_format="geotiff", write_demo=prisma_demo.write_demo, errors=prisma.PRISMA_ERRORS,
        ),
        Format(
            "emit", (), ".nc", emit.open_emit, None, name_patterns=emit.NAME_PATTERNS,
            output_format="geotiff", write_demo=emit.write_demo, errors=emit.EMIT_ERRORS,
        ),
    )
}  # fmt: skip
"""Format name -> :class:`Format`, in the order formats are listed to users."""

FORMATS: tuple[str, ...] = tuple(FORMAT_TABLE)
"""Format names used by :func:`detect_format` and ``CubeMeta.format``."""

WRITE_FORMATS: tuple[str, ...] = tuple(name for name, row in FORMAT_TABLE.items() if row.write is not None)
"""Formats :func:`hsivar.io.write_cube` writes (``format=...``); the others are read-only sensor products."""


def _extension_map() -> dict[str, str]:
    return {ext: row.name for row in FORMAT_TABLE.values() for ext in row.extensions}


def _named_format(path: str) -> str | None:
    """The format whose ``name_patterns`` match the file name of ``path``, else ``None``."""
    name = posixpath.basename(path.replace("\\", "/"))
    for row in FORMAT_TABLE.values():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in row.name_patterns):
            return row.name
    return None


def detect_format(path: str | os.PathLike) -> str:
    """Return the cube format of ``path`` from its extension (case-insensitive).

    Args:
        path: local path or URI, e.g. ``"s3://bucket/scene.tif"`` (a URI's query string is ignored).

    Returns:
        One of :data:`FORMATS`. A sensor product's file name first (``*-SPECTRAL_IMAGE.TIF`` -> enmap,
        ``PRS_L1*/PRS_L2*.he5`` -> prisma, ``EMIT_L2A_RFL_*.nc`` -> emit), then the extension: ``.npy`` -> npy,
        ``.npz`` -> npz, ``.h5/.hdf5/.he5`` -> hdf5, ``.mat`` -> mat, ``.tif/.tiff`` -> geotiff,
        ``.hdr/.img/.dat/.raw/.bsq/.bil/.bip`` -> envi, ``.png`` -> png, ``.jpg/.jpeg`` -> jpeg.

    Raises:
        CubeError: the extension is missing or not supported (the message lists the supported ones).
    """
    text = os.fspath(path)
    if "://" in text:
        text = text.split("?", 1)[0]
    named = _named_format(text)
    if named is not None:
        return named
    _, ext = split_ext(text)
    extensions = _extension_map()
    fmt = extensions.get(ext)
    if fmt is None:
        what = f"extension {ext!r}" if ext else "no file extension"
        raise CubeError(f"{text}: unsupported format ({what}); supported extensions: {', '.join(sorted(extensions))}")
    return fmt


def detect_file_format(loc: Location) -> str:
    """The format of an existing file: by extension, except that a file whose extension is not a cube
    extension is a data file when its header (``<file><header_suffix>``) exists beside it.

    Raises:
        CubeError: as :func:`detect_format`.
    """
    _, ext = split_ext(loc.path)
    if ext not in _extension_map() and _named_format(loc.path) is None:
        for row in FORMAT_TABLE.values():
            if row.header_suffix and loc.fs.isfile(loc.path + row.header_suffix):
                return row.name  # e.g. ENVI "scene" beside "scene.hdr"
    return detect_format(loc.text)


def _part_of_listed_cube(uri: str, names: set[str]) -> bool:
    """Whether ``uri`` is the data file of a cube whose header is among ``names``."""
    root, ext = posixpath.splitext(uri)
    for row in FORMAT_TABLE.values():
        if row.member_of is not None and row.member_of(uri) in names:
            return True
        if not row.header_suffix:
            continue
        for suffix in (row.header_suffix, row.header_suffix.upper()):
            if uri + suffix in names or (ext.lower() in row.data_extensions and root + suffix in names):
                return True
    return False


def split_listing(uris: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split a file listing into the cubes it holds and the other files.

    A cube is listed once, by the file that names it: an ENVI cube by its header, its data file
    (``x.img`` ... or extension-less ``x``) being dropped when the header is listed too; an EnMAP product by
    its ``…-SPECTRAL_IMAGE.TIF``, its metadata and quality files being dropped. A data file whose header is
    not listed stays a cube (reading it reports the missing header).

    Args:
        uris: paths or URIs of a listing, e.g. the files under a data prefix.

    Returns:
        ``(cube_uris, other_uris)``, each in the listing's order; files that are part of a listed cube
        are in neither.
    """
    listed = [str(u) for u in uris]
    names = set(listed)
    cubes: list[str] = []
    others: list[str] = []
    extensions = _extension_map()
    for uri in listed:
        if _part_of_listed_cube(uri, names):
            continue
        _, ext = split_ext(uri)
        (cubes if ext in extensions or _named_format(uri) is not None else others).append(uri)
    return cubes, others


def writer_row(fmt: str) -> Format:
    """The row that writes cubes of format ``fmt``: its own, or for a read-only sensor product the row of its
    ``output_format``."""
    row = FORMAT_TABLE[fmt]
    return row if row.write is not None else FORMAT_TABLE[row.output_format or ""]


def output_name(name: str) -> str:
    """The file name a restored copy of the cube file ``name`` gets: the same, except that a sensor product
    takes its output format's suffix (``PRS_L2D_….he5`` -> ``PRS_L2D_….tif``; EnMAP's ``…-SPECTRAL_IMAGE.TIF``
    -> ``…-SPECTRAL_IMAGE.tif``, a plain GeoTIFF), so the output is never taken for a product.

    Raises:
        CubeError: ``name`` is not a cube file name (as :func:`detect_format`).
    """
    row = FORMAT_TABLE[detect_format(name)]
    if row.write is not None:
        return name
    stem = posixpath.splitext(name)[0]
    return stem + writer_row(row.name).write_suffix


def cube_suffixes() -> tuple[str, ...]:
    """Suffixes of the files that name a cube in a listing (ENVI by ``.hdr`` only), lower-case; sensor products
    are named by their file-name patterns instead (:func:`split_listing` knows both)."""
    return tuple(s for row in FORMAT_TABLE.values() for s in row.cube_suffixes)


def format_aliases(servable_only: bool = False, products: bool = False) -> dict[str, str]:
    """Every accepted format name (canonical names and aliases) -> canonical name, in table order.

    ``servable_only`` keeps the formats served over HTTP (those with media types); ``products`` adds the
    read-only sensor products (names a reader or the demo maker accepts, not :func:`write_cube`).
    """
    return {
        alias: row.name
        for row in FORMAT_TABLE.values()
        if (row.media_types or not servable_only) and (row.write is not None or products)
        for alias in (row.name, *row.aliases)
    }


def format_named(name: str) -> str:
    """The canonical format of a user-given name, case-insensitive (``"tif"`` -> ``"geotiff"``), sensor products
    included.

    Raises:
        CubeError: unknown name (the message lists the accepted ones).
    """
    aliases = format_aliases(products=True)
    fmt = aliases.get(str(name).lower())
    if fmt is None:
        raise CubeError(f"unknown format {name!r}; expected one of {', '.join(aliases)}")
    return fmt


def media_types() -> dict[str, str]:
    """HTTP media types accepted for request bodies -> format (lower-case, no parameters)."""
    return {media: row.name for row in FORMAT_TABLE.values() for media in row.media_types}


def response_types() -> dict[str, str]:
    """Format -> HTTP media type of responses in that format (served formats only)."""
    return {row.name: row.media_types[0] for row in FORMAT_TABLE.values() if row.media_types}
