"""Start HSI-VAR from the released VAR checkpoints (``vae_ch160v4096z32.pth``, ``var_d16.pth``).

Nothing is downloaded: users pass local paths (the files are on the VAR project's model page).
Checkpoints are read with ``torch.load(..., weights_only=True)`` (or as safetensors), never
unpickled with arbitrary code.

**VQ-VAE** — every tensor maps one to one (same names) except the two that touch the bands.
VAR's RGB channels are given band centres R 640, G 550, B 460 nm; a band at λ gets linear
interpolation weights a(λ) over the two neighbouring RGB centres (clamped to the nearest centre
outside 460–640 nm), so Σ_j a_cj = 1 per band.

* ``encoder.conv_in`` (O, 3, k, k) → (O, C, k, k): ``W'_c = Σ_j a_cj · W_j / Σ_c' a_c'j`` — each RGB
  filter is spread over the bands that replace it, so a grey cube (all bands equal) gives exactly
  the activation VAR gives the grey RGB image. If some RGB centre gets no weight at all (e.g. every
  band is NIR), the filters are averaged instead: ``W'_c = (Σ_j W_j) / C``, still grey-exact.
* ``decoder.conv_out`` (3, I, k, k) and its bias → (C, I, k, k): ``W'_c = Σ_j a_cj · W_j``, so a
  decoded grey image becomes a flat spectrum.

**Transformer** — HSI-VAR keeps VAR-d16's word embedding, level embedding (its 10 scale rows; the
condition-prefix row starts fresh), attention (qkv, q/v biases, per-head temperature, projection),
MLPs and head. It drops AdaLN (``ada_lin``, ``head_nm.ada_lin``: our blocks are plain pre-LN with
unit LayerNorm affine), the absolute positions (``pos_start``, ``pos_1LC``: replaced by 2D RoPE),
the mask and level buffers, and the class table, whose null row (1000) initialises d_basic.
E_con is then copied from the converted encoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hsivar.models.hsivar import HSIVAR

RGB_CENTRES_NM: tuple[float, float, float] = (640.0, 550.0, 460.0)  # VAR's channel order R, G, B
VAR_NULL_CLASS = 1000
_VAR_DROPPED_PREFIXES = ("pos_start", "pos_1LC", "lvl_1L", "attn_bias_for_masking", "head_nm.ada_lin")


class ConversionError(ValueError):
    """A checkpoint does not fit the target model (the message names the tensor and both shapes)."""


@dataclass
class ConversionReport:
    """What a conversion did with each tensor."""

    loaded: list[str] = field(default_factory=list)  # target keys filled from the checkpoint
    adapted: list[str] = field(default_factory=list)  # target keys filled after a band adaptation
    dropped: list[str] = field(default_factory=list)  # checkpoint keys HSI-VAR does not use
    fresh: list[str] = field(default_factory=list)  # target keys left at their initialisation


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt`` (``weights_only=True``) or ``.safetensors``.

    A ``{"model": state_dict}`` / ``{"state_dict": ...}`` wrapper is unwrapped.

    Raises:
        FileNotFoundError: with instructions on where to get the file.
        ConversionError: the file holds no tensor dict.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: checkpoint not found. Download the VAR release files (vae_ch160v4096z32.pth, "
            "var_d16.pth) from the VAR project's model page on a machine with internet access and "
            "pass their local paths; hsivar never downloads weights itself."
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    obj = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{p}: expected a dict of tensors (a state dict)")
    return obj


def spectral_weights(wavelengths_nm: Sequence[float]) -> np.ndarray:
    """Interpolation weights a (C, 3) of each band over VAR's (R, G, B) centres; rows sum to 1."""
    centres = np.array(RGB_CENTRES_NM)
    order = np.argsort(centres)  # B, G, R by wavelength
    a = np.zeros((len(wavelengths_nm), 3))
    for c, lam in enumerate(wavelengths_nm):
        lam = float(np.clip(lam, centres.min(), centres.max()))
        hot = np.eye(3)[order]
        a[c] = [np.interp(lam, centres[order], hot[:, j]) for j in range(3)]
    return a


def adapt_conv_in(weight: torch.Tensor, a: np.ndarray) -> torch.Tensor:
    """RGB input conv (O, 3, k, k) → C-band (O, C, k, k), grey-preserving; see the module docstring."""
    col = a.sum(axis=0)
    if np.any(col <= 0):
        return weight.sum(dim=1, keepdim=True).expand(-1, a.shape[0], -1, -1) / a.shape[0]
    m = torch.tensor(a / col, dtype=weight.dtype, device=weight.device)  # (C, 3)
    return torch.einsum("cj,ojhw->ochw", m, weight)


def adapt_conv_out(weight: torch.Tensor, bias: torch.Tensor, a: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB output conv (3, I, k, k) + bias (3,) → (C, I, k, k) + (C,): band c = Σ_j a_cj·RGB_j."""
    m = torch.tensor(a, dtype=weight.dtype, device=weight.device)
    return torch.einsum("cj,jihw->cihw", m, weight), m @ bias


def _put(target: dict[str, torch.Tensor], out: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    if key not in target:
        raise ConversionError(f"target model has no tensor {key!r}")
    if tuple(target[key].shape) != tuple(value.shape):
        raise ConversionError(f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(target[key].shape)}")
    out[key] = value


def convert_vqvae(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                  wavelengths_nm: Sequence[float] | None, report: ConversionReport) -> dict[str, torch.Tensor]:
    """VAR VQ-VAE state dict → ``vqvae.*`` entries of our model's ``target`` state dict."""
    out: dict[str, torch.Tensor] = {}
    bands = target["vqvae.encoder.conv_in.weight"].shape[1]
    rgb = sd["encoder.conv_in.weight"].shape[1]
    if bands != rgb:
        if rgb != 3:
            raise ConversionError(f"band adaptation needs a 3-channel checkpoint, got {rgb} channels")
        if wavelengths_nm is None or len(wavelengths_nm) != bands:
            raise ConversionError(f"{bands}-band target needs {bands} band centres (nm) to adapt the RGB convs")
        a = spectral_weights(wavelengths_nm)
        sd = dict(sd)
        sd["encoder.conv_in.weight"] = adapt_conv_in(sd["encoder.conv_in.weight"], a)
        sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"] = adapt_conv_out(
            sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"], a)
        report.adapted += ["vqvae.encoder.conv_in.weight", "vqvae.decoder.conv_out.weight",
                           "vqvae.decoder.conv_out.bias"]
    for k, v in sd.items():
        key = f"vqvae.{k}"
        if key not in target:
            report.dropped.append(k)
            continue
        _put(target, out, key, v)
        if key not in report.adapted:
            report.loaded.append(key)
    return out


def convert_transformer(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                        report: ConversionReport) -> dict[str, torch.Tensor]:
    """VAR transformer state dict → ``var.*`` and ``dag.basic`` entries of ``target``."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith(_VAR_DROPPED_PREFIXES) or ".ada_lin." in k or k.endswith("zero_k_bias"):
            report.dropped.append(k)
        elif k == "class_emb.weight":
            _put(target, out, "dag.basic", v[VAR_NULL_CLASS])
            report.loaded.append("dag.basic")
        elif k == "lvl_embed.weight":
            ours = target["var.lvl_embed.weight"].clone()
            n = min(v.shape[0], ours.shape[0] - 1)  # the last row of ours is the condition prefix level
            if v.shape[1] != ours.shape[1]:
                raise ConversionError(f"lvl_embed.weight: width {v.shape[1]} != model width {ours.shape[1]}")
            ours[:n] = v[:n]
            out["var.lvl_embed.weight"] = ours
            report.adapted.append("var.lvl_embed.weight")
        else:
            _put(target, out, f"var.{k}", v)
            report.loaded.append(f"var.{k}")
    return out


def init_from_var(model: HSIVAR, vae_path: str | os.PathLike | None = None,
                  var_path: str | os.PathLike | None = None) -> ConversionReport:
    """Load converted VAR weights into ``model`` in place and copy E into E_con; → what was done.

    Uses ``model.cfg.wavelengths`` (or evenly spaced 400–700 nm) to adapt the band convs.
    """
    from hsivar.presets import default_wavelengths

    target = model.state_dict()
    report = ConversionReport()
    new: dict[str, torch.Tensor] = {}
    if vae_path is not None:
        wl = model.cfg.wavelengths or default_wavelengths(model.cfg.bands)
        new.update(convert_vqvae(load_checkpoint(vae_path), target, wl, report))
    if var_path is not None:
        new.update(convert_transformer(load_checkpoint(var_path), target, report))
    target.update({k: v.to(target[k].dtype) for k, v in new.items()})
    model.load_state_dict(target, strict=True)
    if vae_path is not None:
        model.init_condition_encoder()
    report.fresh = sorted(k for k in target if k not in new and not k.startswith("cond."))
    return report
