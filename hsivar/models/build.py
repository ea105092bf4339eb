"""Build the model of a config's family (``ModelConfig.family``): the one place that maps a family to its class."""

from __future__ import annotations

from hsivar.config import ModelConfig
from hsivar.models.base import RestorationModel
from hsivar.models.hsivar import HSIVAR
from hsivar.models.restorevar import RestoreVAR
from hsivar.models.varformer import VarFormer


def build_model(cfg: ModelConfig) -> RestorationModel:
    """A fresh model of ``cfg.family`` (``hsivar``: :class:`HSIVAR`, ``restorevar``: :class:`RestoreVAR`,
    ``varformer``: :class:`VarFormer`) built from ``cfg``, in training mode like any new ``nn.Module``."""
    if cfg.family == "hsivar":
        return HSIVAR(cfg)
    if cfg.family == "restorevar":
        return RestoreVAR(cfg)
    if cfg.family == "varformer":
        return VarFormer(cfg)
    raise ValueError(f"unknown model family {cfg.family!r}")
