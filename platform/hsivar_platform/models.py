"""Where published models come from: a local directory, ``file://``, ``s3://`` or the MLflow registry.

A published model is a directory with ``config.json`` + ``model.safetensors``
(:mod:`hsivar.publish`). In MLflow it is logged as the artifacts of a run under
:data:`PUBLISHED_ARTIFACT_PATH` and registered from there, so ``models:/NAME/VERSION`` and
``models:/NAME@ALIAS`` resolve to the same two files.
"""

from __future__ import annotations

import os
from pathlib import Path

from hsivar.publish import CONFIG_FILE, WEIGHTS_FILE
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

        dst = str(cache_dir) if cache_dir else None
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=s, dst_path=dst))
        if not (local / CONFIG_FILE).is_file() and (local / PUBLISHED_ARTIFACT_PATH / CONFIG_FILE).is_file():
            local = local / PUBLISHED_ARTIFACT_PATH
    else:
        local = storage.download_dir(s, cache_dir)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (local / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{s}: not a published model directory (missing {', '.join(missing)})")
    return local


def load_restorer(uri: str | os.PathLike, device: str = "cpu") -> Restorer:
    """A :class:`~hsivar.restore.Restorer` for the published model at ``uri`` (see :func:`resolve_model`)."""
    return Restorer.from_published(resolve_model(uri), device=device)
