"""A training stage's state: checkpoints, the EMA of the weights, the LR schedule, initial weights.

A checkpoint directory (one per ``train.checkpoint_every`` steps, under the stage's Ray Train storage)
holds the model weights (safetensors), the optimizer / scheduler / step / data position
(``torch.save`` of tensors and primitives only, read back with ``weights_only=True``), the EMA shadows,
each rank's RNG state and the resolved pipeline config.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hsivar.models.base import RestorationModel
from hsivar.publish import load_published
from hsivar_platform import storage

CKPT_WEIGHTS = "model.safetensors"
CKPT_STATE = "train_state.pt"
CKPT_CONFIG = "pipeline_config.json"
CKPT_CRITIC = "critic.safetensors"
CKPT_EMA = "ema.safetensors"


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"



class EMA:
    """Exponential moving average of a list of parameters (the stage's trainable ones)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.params, self.decay = list(params), decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow ← decay·shadow + (1 − decay)·param."""
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Shadow tensors by position ("0", "1", …)."""
        return {str(i): s.detach().cpu().contiguous() for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the shadows saved by :meth:`state_dict`."""
        for i, s in enumerate(self.shadow):
            s.copy_(state[str(i)])

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily swap the EMA weights into the parameters."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(steps - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def load_init_weights(model: RestorationModel, uri: str) -> dict[str, Any]:
    """Load published weights (local, file://, s3:// directory) into ``model``; → the published doc.

    The configs must agree in everything but ``loss`` (training objectives only: a stage may start from weights
    trained with other loss weights, e.g. a decoder fine-tune with ``loss.gan``).

    Raises:
        ValueError: the published model's config differs from ``model.cfg`` (naming the URI).
    """
    with tempfile.TemporaryDirectory(prefix="hsivar-init-") as tmp:
        local = storage.download_dir(uri, tmp)
        src, doc = load_published(local)
    a, b = src.cfg.model_dump(exclude={"loss"}), model.cfg.model_dump(exclude={"loss"})
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"{uri}: published model config differs from the pipeline's in {', '.join(diff)}")
    model.load_state_dict(src.state_dict(), strict=True)
    return doc


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, *, rank: int, model: RestorationModel, opt: torch.optim.Optimizer,
                    sched: Any, ema: EMA | None, step: int, data_pos: dict[str, int], gen: torch.Generator,
                    pipeline: dict[str, Any], critic: torch.nn.Module | None = None) -> None:
    """Write this rank's part of a checkpoint into ``directory`` (Ray merges the ranks' files).

    Rank 0: model weights (safetensors), optimizer/scheduler/step/data position (tensors and primitives
    only), EMA shadows, the stage's discriminator (``critic``, safetensors) when it trains one, the resolved
    pipeline config. Every rank: its RNG state.
    """
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(gen), directory / _rng_file(rank))
    if rank != 0:
        return
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(directory / CKPT_WEIGHTS))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "data": data_pos},
               directory / CKPT_STATE)
    if ema is not None:
        save_file(ema.state_dict(), str(directory / CKPT_EMA))
    if critic is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in critic.state_dict().items()},
                  str(directory / CKPT_CRITIC))
    (directory / CKPT_CONFIG).write_text(json.dumps(pipeline, indent=1))


def load_checkpoint(directory: Path, *, rank: int, model: RestorationModel, opt: torch.optim.Optimizer, sched: Any,
                    ema: EMA | None, gen: torch.Generator,
                    critic: torch.nn.Module | None = None) -> tuple[int, dict[str, int]]:
    """Restore a checkpoint written by :func:`save_checkpoint` (nothing is unpickled beyond tensors and
    primitives: ``torch.load(weights_only=True)``); → (step, data position).

    Raises:
        ValueError: the stage trains a discriminator (``critic``) and the checkpoint holds none (it was written
            with ``loss.gan.weight`` 0; its optimizer state could not match).
    """
    if critic is not None:
        if not (directory / CKPT_CRITIC).is_file():
            raise ValueError(f"{directory}: the checkpoint holds no discriminator, but this run trains one "
                             "(loss.gan.weight > 0): resume with the config it was written with, or start a new run")
        critic.load_state_dict(load_file(str(directory / CKPT_CRITIC)), strict=True)
    model.load_state_dict(load_file(str(directory / CKPT_WEIGHTS)), strict=True)
    state = torch.load(directory / CKPT_STATE, map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None and (directory / CKPT_EMA).is_file():
        ema.load_state_dict(load_file(str(directory / CKPT_EMA)))
    rng = directory / _rng_file(rank)
    if rng.is_file():
        _set_rng_state(torch.load(rng, map_location="cpu", weights_only=True), gen)
    return int(state["step"]), dict(state.get("data", {}))

