"""Converter for the released VAR checkpoints: every tensor of the real manifests lands, bands adapt exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hsivar.config import ModelConfig, VQVAEConfig
from hsivar.models.convert import (
    ConversionError,
    ConversionReport,
    convert_transformer,
    convert_vqvae,
    init_from_var,
    load_checkpoint,
    spectral_weights,
)
from hsivar.models.hsivar import HSIVAR
from hsivar.models.vqvae import VQVAE
from hsivar.presets import default_wavelengths, preset

REF = Path(__file__).parent / "data" / "var_reference"


def _manifest(name: str) -> dict[str, torch.Tensor]:
    """Tensors on the meta device with exactly the shapes of a released checkpoint's manifest."""
    shapes = json.loads((REF / name).read_text())
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def test_released_checkpoints_fit_the_paper_preset_for_31_bands() -> None:
    cfg = preset("paper", bands=31)
    with torch.device("meta"):
        model = HSIVAR(cfg)
    target = model.state_dict()
    report = ConversionReport()
    vae = convert_vqvae(_manifest("vae_ch160v4096z32.keys.json"), target, cfg.wavelengths, report)
    var = convert_transformer(_manifest("var_d16.keys.json"), target, report)
    converted = {**vae, **var}
    assert all(tuple(v.shape) == tuple(target[k].shape) for k, v in converted.items())
    # every VQ-VAE tensor of ours except SSA (new in HSI-VAR) comes from the release
    vq_keys = {k for k in target if k.startswith("vqvae.") and ".ssa." not in k}
    assert vq_keys <= set(converted)
    assert "vqvae.encoder.conv_in.weight" in report.adapted and "vqvae.decoder.conv_out.weight" in report.adapted
    # the transformer keeps everything but AdaLN and absolute positions; our pre-LN affine parameters
    # are new (VAR's LayerNorms have none) and start at the identity
    var_keys = {k for k in target if k.startswith("var.")}
    new_ln = {k for k in var_keys if ".ln1." in k or ".ln2." in k or k.startswith("var.head_nm.")}
    assert var_keys - new_ln <= set(converted) and new_ln.isdisjoint(converted)
    assert "blocks.0.ada_lin.1.weight" in report.dropped and "pos_1LC" in report.dropped
    assert "head_nm.ada_lin.1.weight" in report.dropped and "dag.basic" in converted
    assert model.load_state_dict({**target, **converted}, strict=True, assign=True) is not None


def test_band_adaptation_is_exact_for_grey_cubes(tmp_path: Path) -> None:
    """A grey 31-band cube encodes like the grey RGB image; a grey latent decodes to a flat spectrum."""
    meta = json.loads((REF / "meta.json").read_text())
    kw = dict(ch=meta["ch"], ch_mult=tuple(meta["ch_mult"]), num_res_blocks=meta["num_res_blocks"],
              z_channels=meta["z_channels"], vocab_size=meta["vocab_size"], patch_nums=tuple(meta["patch_nums"]),
              ssa=False)
    rgb = VQVAE(VQVAEConfig(bands=3, **kw)).eval()
    rgb.load_state_dict(load_file(REF / "vqvae.safetensors"))
    ckpt = tmp_path / "vae.pth"
    torch.save({"model": rgb.state_dict()}, ckpt)  # a plain tensor dict, wrapped as some releases are

    cfg = ModelConfig(vqvae=VQVAEConfig(bands=31, **kw), transformer=preset("tiny").transformer,
                      refiner=preset("tiny").refiner)
    model = HSIVAR(cfg).eval()
    report = init_from_var(model, vae_path=ckpt)
    assert len(report.adapted) == 3 and report.fresh  # transformer etc. stay fresh without var_path
    grey = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        f_rgb = rgb.encode(grey.expand(-1, 3, -1, -1))
        f_hsi = model.vqvae.encode(grey.expand(-1, 31, -1, -1))
        assert torch.allclose(f_hsi, f_rgb, atol=1e-5)
        assert torch.equal(model.cond.encode(grey.expand(-1, 31, -1, -1)), f_hsi)  # E_con copied from E
        out_rgb = rgb.decode(f_rgb)
        out_hsi = model.vqvae.decode(f_rgb)
    a = torch.tensor(spectral_weights(default_wavelengths(31)), dtype=torch.float32)
    assert torch.allclose(out_hsi, torch.einsum("cj,bjhw->bchw", a, out_rgb), atol=1e-5)
    assert torch.allclose(a.sum(1), torch.ones(31))


def test_transformer_conversion_from_a_file(tmp_path: Path) -> None:
    cfg = preset("tiny", bands=8)
    model = HSIVAR(cfg)
    C, L = cfg.transformer.width, sum(p * p for p in cfg.vqvae.patch_nums)
    state = {"word_embed.weight": torch.randn(C, cfg.vqvae.z_channels), "word_embed.bias": torch.randn(C),
             "class_emb.weight": torch.randn(1001, C), "lvl_embed.weight": torch.randn(10, C),
             "pos_start": torch.randn(1, 1, C), "pos_1LC": torch.randn(1, L, C),
             "head_nm.ada_lin.1.weight": torch.randn(2 * C, C), "head.weight": torch.randn(128, C),
             "head.bias": torch.randn(128)}
    for i in range(cfg.transformer.depth):
        p = f"blocks.{i}."
        state |= {p + "attn.mat_qkv.weight": torch.randn(3 * C, C), p + "attn.q_bias": torch.randn(C),
                  p + "attn.v_bias": torch.randn(C), p + "attn.zero_k_bias": torch.zeros(C),
                  p + "attn.scale_mul_1H11": torch.randn(1, 2, 1, 1), p + "attn.proj.weight": torch.randn(C, C),
                  p + "attn.proj.bias": torch.randn(C), p + "ffn.fc1.weight": torch.randn(4 * C, C),
                  p + "ffn.fc1.bias": torch.randn(4 * C), p + "ffn.fc2.weight": torch.randn(C, 4 * C),
                  p + "ffn.fc2.bias": torch.randn(C), p + "ada_lin.1.weight": torch.randn(6 * C, C)}
    path = tmp_path / "var.pth"
    torch.save(state, path)
    prefix_row = model.var.lvl_embed.weight[-1].detach().clone()
    report = init_from_var(model, var_path=path)
    assert torch.equal(model.var.blocks[1].attn.mat_qkv.weight, state["blocks.1.attn.mat_qkv.weight"])
    assert torch.equal(model.dag.basic, state["class_emb.weight"][1000])
    K = len(cfg.vqvae.patch_nums)
    assert torch.equal(model.var.lvl_embed.weight[:K], state["lvl_embed.weight"][:K])
    assert torch.equal(model.var.lvl_embed.weight[-1], prefix_row)  # condition level stays fresh
    assert "blocks.0.ada_lin.1.weight" in report.dropped

    state["head.weight"] = torch.randn(64, C)
    torch.save(state, path)
    with pytest.raises(ConversionError, match=r"var.head.weight: checkpoint shape \(64, 64\) != model shape"):
        init_from_var(model, var_path=path)


def test_missing_checkpoint_says_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads weights"):
        load_checkpoint(tmp_path / "vae_ch160v4096z32.pth")
