"""Model URIs: where a published model comes from, and which version it is.

A published model is a directory with ``config.json`` + ``model.safetensors``
(:mod:`hsivar.publish`). A model URI names one: a local directory, ``file://``, an ``s3://`` prefix,
or the MLflow registry — ``models:/NAME/VERSION``, ``models:/NAME/latest`` or ``models:/NAME@ALIAS``.
In MLflow a published model is logged as the artifacts of a run under
:data:`PUBLISHED_ARTIFACT_PATH` and registered from there, so every registry URI resolves to the same
two files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from hsivar.config import ModelConfig
from hsivar.publish import CONFIG_FILE, WEIGHTS_FILE, read_config
from hsivar.restore import Restorer
from hsivar_platform import storage

PUBLISHED_ARTIFACT_PATH = "published_model"
"""Artifact path of the published model inside an MLflow run (what the registry versions point at)."""


def resolve_model(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory holding ``config.json`` and ``model.safetensors`` for a model URI.

    Args:
        uri: local path, ``file://``, ``s3://…`` prefix, or ``models:/NAME/VERSION`` /
            ``models:/NAME@ALIAS`` (MLflow registry; tracking URI from ``MLFLOW_TRACKING_URI``).
        cache_dir: where remote models are copied (a new temporary directory by default).
    Raises:
        FileNotFoundError: nothing usable at ``uri`` (the message names it and what is missing).
    """
    s = str(uri)
    if s.startswith("models:/"):
        import mlflow
        from mlflow.exceptions import MlflowException

        dst = str(cache_dir) if cache_dir else None
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=s, dst_path=dst))
        except MlflowException as exc:
            raise FileNotFoundError(f"{s}: not in the model registry ({exc.message})") from None
        if not (local / CONFIG_FILE).is_file() and (local / PUBLISHED_ARTIFACT_PATH / CONFIG_FILE).is_file():
            local = local / PUBLISHED_ARTIFACT_PATH
    else:
        local = storage.download_dir(s, cache_dir)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (local / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{s}: not a published model directory (missing {', '.join(missing)})")
    return local


def load_restorer(uri: str | os.PathLike, device: str = "cpu", compiled: bool = False) -> Restorer:
    """A :class:`~hsivar.restore.Restorer` for the published model at ``uri`` (see :func:`resolve_model`);
    ``compiled``: CUDA graphs on a GPU, compiled decoding steps on a CPU (:class:`~hsivar.restore.Restorer`)."""
    return Restorer.from_published(resolve_model(uri), device=device, compiled=compiled)


def model_config(uri: str) -> ModelConfig:
    """The model config of the published model at ``uri``, reading only its ``config.json`` where possible."""
    if storage.is_remote(uri) and not uri.startswith("models:/"):
        with tempfile.TemporaryDirectory(prefix="hsivar-cfg-") as tmp:
            Path(tmp, CONFIG_FILE).write_bytes(storage.read_bytes(storage.join(uri, CONFIG_FILE)))
            cfg, _ = read_config(tmp)
        return cfg
    cfg, _ = read_config(resolve_model(uri))
    return cfg


def _registry_version(name: str, ref: str) -> str:
    """The version number registry reference ``ref`` (``latest``, ``@alias`` or a number) of model ``name`` names."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if ref.startswith("@"):
        return str(client.get_model_version_by_alias(name, ref[1:]).version)
    if ref == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise FileNotFoundError(f"models:/{name}/latest: the registry has no version of {name!r}")
        return str(max(int(v.version) for v in versions))
    return ref


def _split_registry_uri(uri: str) -> tuple[str, str]:
    """``models:/NAME/REF`` or ``models:/NAME@ALIAS`` → (NAME, REF or ``@ALIAS``)."""
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, "@" + alias
    name, _, version = ref.rpartition("/")
    return name, version


def pin_model_uri(uri: str) -> str:
    """A model URI that keeps naming the same weights: ``models:/NAME/latest`` and ``models:/NAME@ALIAS``
    become ``models:/NAME/<version>`` (a job's workers then load what its driver resolved, even if the alias
    moves meanwhile); other URIs are returned as they are.

    Raises:
        FileNotFoundError: the registry has no such model, version or alias (the message names it).
    """
    if not uri.startswith("models:/"):
        return uri
    from mlflow.exceptions import MlflowException

    name, ref = _split_registry_uri(uri)
    try:
        return f"models:/{name}/{_registry_version(name, ref)}"
    except MlflowException as exc:
        raise FileNotFoundError(f"{uri}: not in the model registry ({exc.message})") from None


def model_version(uri: str, local: Path | None = None) -> str:
    """The version a model URI names, the same for every job that reads it: the registry version number for
    ``models:/`` URIs (``latest`` and aliases resolved; the reference itself when the registry cannot be
    reached); for a remote directory a digest of its ``config.json`` and the weights' ETag or size (nothing
    is downloaded); for a local directory (or ``local``, where a remote one was copied to, when the URI is
    local) the first 12 hex digits of the weights' sha256."""
    if uri.startswith("models:/"):
        name, ref = _split_registry_uri(uri)
        try:
            return _registry_version(name, ref)
        except Exception:  # the reference itself is still a useful answer when the registry is unreachable
            return ref.lstrip("@")
    if storage.is_remote(uri):
        digest = hashlib.sha256()
        fs, path = storage.filesystem(storage.join(uri, WEIGHTS_FILE))
        info = fs.info(path)
        digest.update(storage.read_bytes(storage.join(uri, CONFIG_FILE)))
        digest.update(str(info.get("ETag") or info.get("size")).encode())
        return digest.hexdigest()[:12]
    return storage.sha256((local or resolve_model(uri)) / WEIGHTS_FILE)[:12]
