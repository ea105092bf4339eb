"""Build the model of a config's family (``ModelConfig.family``): the one place that maps a family to its class."""

from __future__ import annotations

from hsivar.config import ModelConfig
from hsivar.models.base import RestorationModel
from hsivar.models.hsivar import HSIVAR
from hsivar.models.restorevar import RestoreVAR


def build_model(cfg: ModelConfig) -> RestorationModel:
    """A fresh model of ``cfg.family`` (``hsivar``: :class:`HSIVAR`, ``restorevar``: :class:`RestoreVAR`) built
    from ``cfg``, in training mode like any new ``nn.Module``."""
    if cfg.family == "hsivar":
        return HSIVAR(cfg)
    if cfg.family == "restorevar":
        return RestoreVAR(cfg)
    raise ValueError(f"unknown model family {cfg.family!r}")
