"""Where cubes live, and the project's one atomic write.

A location is a local path, a ``file://`` URI or any fsspec URI (``s3://`` through s3fs, ``memory://`` in
tests), resolved once to an fsspec filesystem and a path inside it (:func:`resolve_location`).

Writes are atomic: :func:`staged` hands out local temporary paths and moves the complete files into
place only when the block succeeds (local: a temporary name in the same folder, fsync, ``os.replace``;
remote: one put per file, so an object store never shows a partial object); on any error the
temporaries are removed and the final names are untouched. :func:`write_bytes_atomic` is the same for a
byte string.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from hsivar.io.meta import CubeError

__all__ = ["Location", "resolve_location", "single_target", "split_ext", "staged", "write_bytes_atomic"]


@dataclass(frozen=True)
class Location:
    """A file on an fsspec filesystem.

    Attributes:
        text: the path/URI as the caller wrote it, for messages.
        fs: the fsspec ``AbstractFileSystem`` holding the file.
        path: the path inside ``fs``.
    """

    text: str
    fs: Any
    path: str

    @property
    def local(self) -> bool:
        """Whether the file is on the local filesystem (readable by path, memory-mappable)."""
        return isinstance(self.fs, LocalFileSystem)

    def with_path(self, path: str) -> Location:
        """The location of another file on the same filesystem."""
        return Location(path if self.local else self.fs.unstrip_protocol(path), self.fs, path)

    def open(self, mode: str = "rb") -> Any:
        """Open the file through fsspec (a file object; remote files are read lazily)."""
        return self.fs.open(self.path, mode)


def resolve_location(src: str | os.PathLike, storage_options: dict | None = None) -> Location:
    """Resolve a local path or URI to a :class:`Location`.

    Args:
        src: local path, ``file://`` URI or fsspec URI.
        storage_options: fsspec options for remote URIs (e.g. an S3 endpoint).

    Raises:
        CubeError: ``src`` is not a path, or names an unknown protocol.
    """
    try:
        text = os.fspath(src)
    except TypeError:
        raise CubeError(f"{src!r}: not a path or URI") from None
    if not isinstance(text, str) or not text:
        raise CubeError(f"{src!r}: not a path or URI")
    try:
        fs, path = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except ValueError as exc:  # unknown protocol
        raise CubeError(f"{text}: cannot open: {exc}") from exc
    return Location(text, fs, path)


def split_ext(path: str) -> tuple[str, str]:
    """Split the file name of ``path`` into (stem, lower-case extension with its dot, or ``""``)."""
    name = posixpath.basename(path.replace("\\", "/"))
    stem, ext = posixpath.splitext(name)
    return stem, ext.lower()


def single_target(loc: Location) -> list[Location]:
    """The files a one-file format writes for ``loc``: ``loc`` itself."""
    return [loc]


@contextlib.contextmanager
def staged(finals: Sequence[Location]) -> Iterator[list[str]]:
    """Yield one local temporary path per final location; move them into place, in order, on success.

    Local finals: the temporaries are hidden names in the final folder (created if missing), each is
    fsynced and renamed over its final name with ``os.replace``. Remote finals: the temporaries are in a
    private temporary folder and each is put once. On any error (exceptions and interrupts alike) the
    temporaries are removed and no final name is touched by the failed block.
    """
    if all(loc.local for loc in finals):
        temps = []
        for loc in finals:
            folder, name = os.path.split(loc.path)
            os.makedirs(folder or ".", exist_ok=True)
            stem, ext = os.path.splitext(name)
            temps.append(os.path.join(folder, f".{stem}.tmp-{uuid.uuid4().hex[:12]}{ext}"))
        try:
            yield temps
            for tmp, loc in zip(temps, finals):
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)  # the data is on disk before the name points at it
                finally:
                    os.close(fd)
                os.replace(tmp, loc.path)
        finally:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="hsivar-write-") as folder:
            temps = [
                os.path.join(folder, f"{i}-{posixpath.basename(loc.path)}") for i, loc in enumerate(finals)
            ]
            yield temps
            for tmp, loc in zip(temps, finals):
                loc.fs.put_file(tmp, loc.path)


def write_bytes_atomic(uri: str | os.PathLike, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``uri`` atomically: readers see the old file (or none) or all of ``data``.

    Args:
        uri: local path (parent folders are created), ``file://`` URI or fsspec URI.
        data: the file's whole content.
        storage_options: fsspec options for remote URIs.

    Local files get a temporary name in the same folder, an fsync and a rename; remote ones a single put.

    Raises:
        CubeError: ``uri`` is not a path or URI, or names an unknown protocol.
        OSError: the write itself failed (nothing is left under ``uri``'s name by it).
    """
    with staged([resolve_location(uri, storage_options)]) as (tmp,), open(tmp, "wb") as f:
        f.write(data)
