"""The VarFormer family: the frozen prior's per-scale residuals, the U-Net restorer with DAE and AFT, its stages,
publication and the Restorer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hsivar.config import ModelConfig
from hsivar.models.build import build_model
from hsivar.models.prior_unet import AFT, DAE
from hsivar.models.varformer import VarFormer
from hsivar.presets import preset
from hsivar.restore import Restorer

BANDS = 8


@pytest.fixture
def vf_cfg() -> ModelConfig:
    """The tiny preset of the VarFormer family, 8 bands."""
    return preset("tiny", bands=BANDS, family="varformer")


@pytest.fixture
def vf_model(vf_cfg: ModelConfig) -> VarFormer:
    """A seeded tiny VarFormer, its cross-attention gains and its AFT output projections opened, so that the
    condition and the prior change the result."""
    torch.manual_seed(0)
    model = build_model(vf_cfg).eval()
    assert isinstance(model, VarFormer)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b in model.var.blocks:
            b.cross.gain.fill_(0.5)
        for aft in model.restorer.aft:
            aft.proj.weight.copy_(0.1 * torch.randn(aft.proj.weight.shape, generator=g))
    return model


def _tiles(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, BANDS, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_per_scale_residuals_add_up_to_the_greedy_latent(vf_model: VarFormer) -> None:
    out = vf_model.autoregress(_tiles())
    K, vq = len(vf_model.cfg.vqvae.patch_nums), vf_model.cfg.vqvae
    assert out.scales is not None and out.scales.shape == (2, K, vq.z_channels, vq.latent_size, vq.latent_size)
    assert torch.allclose(out.scales.sum(dim=1), out.latent, atol=1e-5)
    assert vf_model.cfg.stages == ("vqvae", "var", "decoder")


def test_the_restorer_reads_the_prior_and_replaces_the_vqvae_decoder(vf_model: VarFormer) -> None:
    """The U-Net's output depends on the per-scale residuals (through DAE and AFT); the VQ-VAE decoder plays no
    part (changing its weights leaves the restoration as it was)."""
    x = _tiles()
    out = vf_model.restore(x, task="gaussian")
    assert out.cube.shape == x.shape and torch.equal(out.latent, vf_model.autoregress(x, task="gaussian").latent)
    prior = vf_model.autoregress(x, task="gaussian")
    with torch.no_grad():
        a = vf_model.restorer(x, prior.scales)
        b = vf_model.restorer(x, torch.zeros_like(prior.scales))
        assert not torch.allclose(a, b)
        for p in vf_model.vqvae.decoder.parameters():
            p.add_(0.1)
    assert torch.equal(vf_model.restore(x, task="gaussian").cube, out.cube)
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        vf_model.restore(x, guidance="cfg")


def test_dae_is_a_per_pixel_convex_mix_and_aft_starts_as_the_identity() -> None:
    torch.manual_seed(0)
    h, p = torch.rand(2, 16, 8, 8), torch.rand(2, 16, 8, 8) + 2.0
    mixed = DAE(16)(h, p)
    assert torch.all(mixed >= h.min(dim=1, keepdim=True).values.min() - 1e-6)
    assert torch.all(mixed <= p.max() + 1e-6) and not torch.allclose(mixed, h)
    aft = AFT(16, stride=4, groups=8)
    assert torch.equal(aft(h, p), h)  # proj starts at zero: the block passes features through


@pytest.mark.parametrize("stage", ["vqvae", "var", "decoder"])
def test_each_stage_trains_its_own_parts(stage: str, vf_cfg: ModelConfig, smooth_cubes: Callable,
                                         noisy_batch: Callable, train_stage: Callable) -> None:
    """Each stage trains its parameters and nothing else; the U-Net trains only in stage decoder, where the prior
    (VQ-VAE and transformer) stays frozen."""
    torch.manual_seed(0)
    model = build_model(vf_cfg)
    ids, _ = train_stage(model, stage, noisy_batch(smooth_cubes(2, BANDS, 32, seed=1), 30, seed=2))
    unet = set(map(id, model.restorer.parameters()))
    prior = set(map(id, model.var.parameters())) | set(map(id, model.vqvae.encoder.parameters()))
    assert (unet <= ids) == (stage == "decoder")
    if stage == "decoder":
        assert prior.isdisjoint(ids)


def test_published_varformer_round_trips_and_restores_whole_cubes(vf_model: VarFormer, tmp_path: Path) -> None:
    from hsivar.publish import load_published, save_published

    save_published(vf_model, tmp_path / "vf", stage="decoder")
    loaded, doc = load_published(tmp_path / "vf")
    assert isinstance(loaded, VarFormer) and doc["model"]["family"] == "varformer"
    cube = np.random.default_rng(0).random((BANDS, 40, 44)).astype(np.float32)
    a = Restorer(vf_model).restore(cube, task="auto")
    b = Restorer(loaded).restore(cube, task="auto")
    assert a.cube.shape == cube.shape and np.array_equal(a.cube, b.cube)
