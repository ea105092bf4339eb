"""Model facts for ``hsivar info``: parameters per component, tokens, counted FLOPs per cube.

The model is built on the ``meta`` device (no memory, no compute), so even the paper preset is
described in about a second. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
(2 FLOPs per multiply-add; matmuls, convolutions and attention) over one greedy restoration of
one S×S×C tile: the condition encoder (HSI-VAR's E_con; RestoreVAR's frozen VQ-VAE encoder), task classifier,
K autoregressive steps with the KV cache, refiner (HSI-VAR's NAFNet; RestoreVAR's latent refiner transformer),
decoder (VarFormer's U-Net restorer in its place), fusion head. Every model family is described the same way
(``family`` in the result).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from hsivar.config import ModelConfig
from hsivar.models.base import RestorationModel
from hsivar.models.build import build_model


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: RestorationModel) -> dict[str, int]:
    """Parameters per component and ``params_total`` (``condition_encoder``: HSI-VAR's E_con + P, RestoreVAR's and
    VarFormer's condition projections and start token; ``refiner``: HSI-VAR's NAFNet, RestoreVAR's LRT;
    ``restorer``: VarFormer's U-Net)."""
    vq = model.vqvae
    ssa = _count(vq.decoder.ssa) if vq.decoder.ssa is not None else 0
    parts = {name: sum(p.numel() for p in params) for name, params in model.part_parameters().items()}
    counts = {
        "vqvae_encoder": _count(vq.encoder),
        "vqvae_decoder": _count(vq.decoder) - ssa,
        "ssa": ssa,
        "quantizer": _count(vq.quantize) + _count(vq.quant_conv) + _count(vq.post_quant_conv),
        "condition_encoder": parts["condition_encoder"],
        "dag": _count(model.dag),
        "transformer": _count(model.var),
        "refiner": parts["refiner"],
        "restorer": parts["restorer"],
        "fusion": _count(model.fusion) if model.fusion is not None else 0,
    }
    counts["params_total"] = _count(model)
    return counts


# FlopCounterMode names modules by class path relative to the modules entered; group them by part.
_FLOP_PARTS = {"condition_encoder": ("Encoder",), "transformer": ("Block", "Linear"),
               "quantizer": ("PhiSelector",), "refiner": ("Refiner", "LatentRefinerTransformer"),
               "decoder": ("Decoder", "PriorUNet"),
               "fusion": ("OutputFusion",)}


def count_restore_flops(model: RestorationModel, batch: int = 1) -> dict[str, int]:
    """Forward FLOPs of one greedy restoration of ``batch`` tiles: ``total`` and per part (``other``: the rest)."""
    C, S = model.cfg.vqvae.bands, model.cfg.vqvae.image_size
    device = next(model.parameters()).device
    x = torch.zeros(batch, C, S, S, device=device)
    counter = FlopCounterMode(display=False, depth=1)
    with counter, torch.no_grad():
        model.restore(x, task="auto")
    per_module = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    out = {"total": int(counter.get_total_flops())}
    for part, names in _FLOP_PARTS.items():
        out[part] = int(sum(per_module.get(n, 0) for n in names))
    out["other"] = out["total"] - sum(out[p] for p in _FLOP_PARTS)
    return out


def model_info(cfg: ModelConfig) -> dict[str, Any]:
    """Everything ``hsivar info`` prints, as one JSON-able dict."""
    with torch.device("meta"):
        model = build_model(cfg).eval()
    flops = count_restore_flops(model)
    vq = cfg.vqvae
    info: dict[str, Any] = {
        "preset": cfg.name,
        "family": cfg.family,
        "cube_shape": list(cfg.cube_shape),
        "patch_nums": list(vq.patch_nums),
        "tokens_per_scale": list(vq.tokens_per_scale),
        "tokens": int(sum(vq.tokens_per_scale)),
        "condition_tokens": vq.latent_size**2,
        "vocab_size": vq.vocab_size,
        "tasks": list(cfg.dag.tasks),
        "transformer": {"depth": cfg.transformer.depth, "width": cfg.transformer.width,
                        "heads": cfg.transformer.heads},
        "params": parameter_counts(model),
        "tflops_per_cube": flops["total"] / 1e12,
        "tflops_by_part": {k: v / 1e12 for k, v in flops.items() if k != "total"},
    }
    info["params_total"] = info["params"]["params_total"]
    return info
