"""Named model presets (:func:`preset`) and default band centres (:func:`default_wavelengths`).

* ``tiny``  — CPU tests and the embedded demo: 32×32 tiles, a 16×16 latent, 8 scales, a 2-block
  transformer of width 64.
* ``small`` — one GPU: 128×128 tiles, the full 10-scale schedule on a 16×16 latent, a depth-8 transformer.
* ``paper`` — the shapes of the HSI-VAR paper: VQ-VAE ch 160, ch_mult (1,1,2,2,4), V 4096, Cvae 32,
  patch_nums (1,2,3,4,5,6,8,10,13,16) for 256×256×31; transformer depth 16, width 1024.

Each preset exists for every model family (``family``, :data:`hsivar.config.FAMILIES`): the same VQ-VAE,
transformer width and depth, task classifier and fusion head, so that families compare at one budget. RestoreVAR
and VarFormer condition by cross-attention alone (no aligned condition); RestoreVAR adds its latent refiner
transformer (tiny: width 64, depth 2; small: 256, 4; paper: RestoreVAR's 384, 12), VarFormer its U-Net restorer
(first-level width tiny 32, small and paper 64; one / two NAF blocks per level).

``hsivar info --preset NAME [--family F] --json`` prints a preset's parameter counts and FLOPs per cube.
"""

from __future__ import annotations

from typing import Literal, get_args

from hsivar.config import (
    FAMILIES,
    DAGConfig,
    FusionConfig,
    LRTConfig,
    ModelConfig,
    RefinerConfig,
    TransformerConfig,
    VarFormerConfig,
    VQVAEConfig,
)

__all__ = ["PRESETS", "PresetName", "default_wavelengths", "preset"]


PresetName = Literal["tiny", "small", "paper"]
"""A preset name; see the module docstring."""
PRESETS: tuple[PresetName, ...] = get_args(PresetName)
"""The preset names accepted by :func:`preset`."""


def default_wavelengths(bands: int, start_nm: float = 400.0, stop_nm: float = 700.0) -> tuple[float, ...]:
    """``bands`` evenly spaced band centres in nm from ``start_nm`` to ``stop_nm`` (31 bands → 400, 410, …, 700).

    One band gets the middle of the range.
    """
    if bands == 1:
        return ((start_nm + stop_nm) / 2,)
    step = (stop_nm - start_nm) / (bands - 1)
    return tuple(round(start_nm + i * step, 6) for i in range(bands))


_LRT = {"tiny": LRTConfig(width=64, depth=2, heads=2), "small": LRTConfig(width=256, depth=4, heads=4),
        "paper": LRTConfig()}
_VARFORMER = {"tiny": VarFormerConfig(width=32, blocks=1), "small": VarFormerConfig(width=64, blocks=2),
              "paper": VarFormerConfig(width=64, blocks=2)}


def preset(name: str, bands: int = 31, family: str = "hsivar") -> ModelConfig:
    """Return the model config of preset ``name`` (``tiny``, ``small``, ``paper``) for ``bands`` bands, of model
    ``family`` (``hsivar``, ``restorevar`` or ``varformer``; see the module docstring).

    Raises:
        ValueError: unknown preset name or family.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    cfg = _hsivar_preset(name, bands)
    if family in ("restorevar", "varformer"):
        transformer = cfg.transformer.model_copy(update={"aligned_condition": False})
        cfg = cfg.model_copy(update={"family": family, "lrt": _LRT[name], "varformer": _VARFORMER[name],
                                     "transformer": transformer})
    return cfg


def _hsivar_preset(name: str, bands: int) -> ModelConfig:
    """The HSI-VAR config of preset ``name`` for ``bands`` bands (see :func:`preset`)."""
    wl = default_wavelengths(bands) if bands > 1 else None
    if name == "tiny":
        # 32×32×C tiles, a 16×16 latent (one downsampling), 8 scales (507 tokens), a 2-block transformer.
        vq = VQVAEConfig(
            bands=bands, ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8, z_channels=8,
            vocab_size=128, patch_nums=(1, 2, 3, 4, 6, 8, 11, 16), ssa_window=4, decoder_skips=True,
        )
        tr = TransformerConfig(depth=2, width=64, heads=2, drop_path_rate=0.0, aligned_condition=True)
        return ModelConfig(name="tiny", vqvae=vq, transformer=tr,
                           refiner=RefinerConfig(width=16, blocks=2),
                           fusion=FusionConfig(width=32, blocks=2, unsharp_sigmas=(1.0, 2.0, 4.0)),
                           dag=DAGConfig(classifier_hidden=32), wavelengths=wl, first_estimate=True)
    if name == "small":
        # 128×128×C tiles, 16×16 latent, the paper's 10 scales, a depth-8 transformer.
        vq = VQVAEConfig(bands=bands, ch=64, ch_mult=(1, 2, 2, 4), num_res_blocks=2, z_channels=16,
                         vocab_size=1024, decoder_skips=True)
        tr = TransformerConfig(depth=8, width=512, heads=8, aligned_condition=True)
        return ModelConfig(name="small", vqvae=vq, transformer=tr,
                           refiner=RefinerConfig(width=64, blocks=4),
                           fusion=FusionConfig(width=64, blocks=4, unsharp_sigmas=(1.0, 2.0, 4.0)),
                           wavelengths=wl, first_estimate=True)
    if name == "paper":
        return ModelConfig(name="paper", vqvae=VQVAEConfig(bands=bands), first_estimate=True,
                           transformer=TransformerConfig(depth=16, width=1024, heads=16),
                           refiner=RefinerConfig(width=128, blocks=8), wavelengths=wl)
    raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
