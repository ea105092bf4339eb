"""Published model format: ``model.safetensors`` + ``config.json`` in one directory.

Nothing is ever unpickled: weights are safetensors, the config is JSON validated by
:class:`hsivar.config.ModelConfig`. ``config.json`` also records the format version, the stage
that produced the weights and free-form metadata (run id, data, metrics).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hsivar.config import ModelConfig
from hsivar.io.location import resolve_location, staged, write_bytes_atomic
from hsivar.models.base import RestorationModel
from hsivar.models.build import build_model

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelFileError(ValueError):
    """A published model directory is missing, incomplete or inconsistent (the message says which)."""


def save_published(model: RestorationModel, directory: str | os.PathLike, *, stage: str = "decoder",
                   metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors + JSON config into ``directory`` (created); → the directory.

    Both files are written under temporary names and renamed, weights first, so a reader never sees
    a config that points at half-written weights.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with staged([resolve_location(out / WEIGHTS_FILE)]) as (tmp,):
        save_file(tensors, tmp)
    doc = {"format_version": FORMAT_VERSION, "stage": stage, "metadata": metadata or {},
           "model": model.cfg.model_dump(mode="json")}
    write_bytes_atomic(out / CONFIG_FILE, json.dumps(doc, indent=2).encode())
    return out


RETIRED_FIELDS: dict[str, tuple[str, ...]] = {"dag": ("blur_width",), "loss": ("blur_width",)}
"""Config fields of earlier versions that no longer exist, per section; dropped when a model is read, so models
published before still load. ``blur_width``: the learned blur-width head, replaced by the classical blind
estimate (:func:`hsivar.deblur.blur_width`)."""

RETIRED_WEIGHTS: tuple[str, ...] = ("dag.width_head.",)
"""Weight-name prefixes of retired modules (see :data:`RETIRED_FIELDS`), dropped when a model is loaded."""


def _without_retired(model_doc: Any) -> Any:
    """The ``model`` section of a config document without the :data:`RETIRED_FIELDS` (other values unchanged)."""
    if not isinstance(model_doc, dict):
        return model_doc
    out = dict(model_doc)
    for section, names in RETIRED_FIELDS.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in names}
    return out


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """Read and validate ``config.json``; → (model config, the whole document).

    Raises:
        ModelFileError: missing file, bad JSON, unknown format version or an invalid config.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: no {CONFIG_FILE}; a published model is a directory holding "
                             f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: not valid JSON ({e})") from e
    if doc.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format_version {doc.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:
        cfg = ModelConfig.model_validate(_without_retired(doc["model"]))
    except Exception as e:  # pydantic's ValidationError, KeyError
        raise ModelFileError(f"{path}: invalid model config: {e}") from e
    return cfg, doc


def load_published(directory: str | os.PathLike,
                   device: str | torch.device = "cpu") -> tuple[RestorationModel, dict[str, Any]]:
    """Build the model from ``config.json`` and load ``model.safetensors`` strictly; → (model in eval mode, doc).

    Raises:
        ModelFileError: missing/corrupt files, or weights that do not match the config.
    """
    cfg, doc = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"{weights}: missing weights file")
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own error types on truncated/corrupt files
        raise ModelFileError(f"{weights}: unreadable safetensors file ({e})") from e
    model = build_model(cfg)
    state = {k: v for k, v in state.items() if not k.startswith(RETIRED_WEIGHTS)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{weights}: weights do not match {CONFIG_FILE}: {e}") from e
    return model.to(device).eval(), doc
