"""Storage URIs for the platform: local paths, ``file://`` and ``s3://`` through one interface.

Every location the platform reads or writes (data prefixes, checkpoints, published models,
manifests) is a URI. ``s3://`` goes through s3fs; the endpoint comes from the usual AWS variables
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, e.g. a local MinIO or moto server), so no code path
needs a cloud account. Ray Train wants a ``pyarrow.fs`` filesystem for its ``storage_path``:
:func:`pyarrow_filesystem` builds one with the same endpoint and credentials.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from hsivar.io import write_bytes_atomic


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs with a non-local scheme (``s3://``, ``memory://``, …)."""
    s = str(uri)
    return "://" in s and not s.startswith("file://")


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment (``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


S3_CONNECT_TIMEOUT_ENV = "HSIVAR_S3_CONNECT_TIMEOUT_S"
S3_READ_TIMEOUT_ENV = "HSIVAR_S3_READ_TIMEOUT_S"
S3_MAX_ATTEMPTS_ENV = "HSIVAR_S3_MAX_ATTEMPTS"
S3_DEFAULTS = {S3_CONNECT_TIMEOUT_ENV: 10.0, S3_READ_TIMEOUT_ENV: 60.0, S3_MAX_ATTEMPTS_ENV: 5}
"""How long an S3 request may take to connect and to answer (s), and how many times it is tried: a dropped,
reset or stalled connection is retried with botocore's "standard" policy (exponential backoff with jitter,
capped at 20 s) up to the attempts; the environment variables override them (forwarded to Ray workers)."""


def _s3_setting(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else float(S3_DEFAULTS[name])
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {raw!r}")
    return value


def storage_options(uri: str | os.PathLike) -> dict[str, Any]:
    """fsspec options for ``uri``: for ``s3://`` the endpoint (:func:`s3_endpoint`), timeouts and the retry policy
    of :data:`S3_DEFAULTS` (botocore's; s3fs retries some errors again on top); nothing otherwise."""
    if not str(uri).startswith(("s3://", "s3a://")):
        return {}
    endpoint = s3_endpoint()
    config = {"connect_timeout": _s3_setting(S3_CONNECT_TIMEOUT_ENV), "read_timeout": _s3_setting(S3_READ_TIMEOUT_ENV),
              "retries": {"max_attempts": int(_s3_setting(S3_MAX_ATTEMPTS_ENV)), "mode": "standard"}}
    return {**({"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}), "config_kwargs": config}


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a URI or local path."""
    s = str(uri)
    if not is_remote(s):
        return LocalFileSystem(), str(Path(s.removeprefix("file://")).absolute())
    fs, path = fsspec.core.url_to_fs(s, **storage_options(s))
    return fs, path


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path segments onto a URI or local path (always ``/`` for URIs)."""
    s = str(base)
    if is_remote(s):
        return posixpath.join(s.rstrip("/"), *[p.strip("/") for p in parts])
    return str(Path(s.removeprefix("file://"), *parts))


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI of ``path`` inside ``fs`` (local paths stay plain paths)."""
    if isinstance(fs, LocalFileSystem):
        return path
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return f"{protocol}://{path.lstrip('/')}" if protocol != "memory" else f"memory://{path}"


def list_files(prefix: str | os.PathLike, suffixes: Iterable[str] | None = None) -> list[str]:
    """Every file under ``prefix`` (recursive, sorted URIs), optionally only those ending in ``suffixes``.

    Hidden names (``.x``) and names starting with ``_`` (manifests, markers) are skipped.
    """
    fs, root = filesystem(prefix)
    if not fs.exists(root):
        return []
    ends = tuple(s.lower() for s in suffixes) if suffixes else None
    out = []
    for path in fs.find(root):
        name = posixpath.basename(path)
        if name.startswith((".", "_")):
            continue
        if ends and not name.lower().endswith(ends):
            continue
        out.append(to_uri(fs, path))
    return sorted(out)


def exists(uri: str | os.PathLike) -> bool:
    """Whether a file or directory exists at ``uri``."""
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of the file at ``uri``."""
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def sha256(*uris: str | os.PathLike) -> str:
    """sha256 hex digest of the bytes of the files at ``uris``, one after the other, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for uri in uris:
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):  # noqa: B023  (used at once, inside the loop)
                digest.update(chunk)
    return digest.hexdigest()


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically (:func:`hsivar.io.write_bytes_atomic`: temp file + fsync + rename locally,
    one PUT on object stores), with the S3 endpoint of :func:`storage_options`."""
    write_bytes_atomic(str(uri), data, storage_options=storage_options(uri))


def upload_dir(local_dir: str | os.PathLike, uri: str | os.PathLike) -> str:
    """Copy a local directory's files to ``uri`` (each file atomically); → ``uri``."""
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            write_bytes(join(uri, path.relative_to(local_dir).as_posix()), path.read_bytes())
    return str(uri)


def download_dir(uri: str | os.PathLike, local_dir: str | os.PathLike | None = None) -> Path:
    """Make the directory at ``uri`` available locally; a local URI is returned as is.

    Remote directories are copied into ``local_dir`` (a new temporary directory by default).
    """
    if not is_remote(uri):
        return Path(str(uri).removeprefix("file://"))
    fs, root = filesystem(uri)
    target = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp(prefix="hsivar-"))
    target.mkdir(parents=True, exist_ok=True)
    for path in fs.find(root):
        rel = posixpath.relpath(path, root)
        dst = target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with fs.open(path, "rb") as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out)
    return target


def pyarrow_filesystem(uri: str | os.PathLike) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for Ray Train's ``storage_path``; S3 uses the environment's endpoint and the
    timeouts and retry attempts of :data:`S3_DEFAULTS`."""
    import pyarrow.fs as pafs

    s = str(uri)
    if s.startswith("s3://"):
        endpoint = s3_endpoint()
        kwargs: dict[str, Any] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs |= {"endpoint_override": host, "scheme": scheme}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        kwargs |= {"connect_timeout": _s3_setting(S3_CONNECT_TIMEOUT_ENV),
                   "request_timeout": _s3_setting(S3_READ_TIMEOUT_ENV),
                   "retry_strategy": pafs.AwsStandardS3RetryStrategy(int(_s3_setting(S3_MAX_ATTEMPTS_ENV)))}
        return pafs.S3FileSystem(**kwargs), s.removeprefix("s3://")
    return pafs.LocalFileSystem(), str(Path(s.removeprefix("file://")).absolute())
