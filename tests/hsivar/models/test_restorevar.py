"""The RestoreVAR family: cross-attention conditioning, cached decoding equal to the teacher-forced forward, the
latent refiner transformer, its stages, publication and the Restorer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from hsivar.config import ModelConfig
from hsivar.models.build import build_model
from hsivar.models.hsivar import HSIVAR
from hsivar.models.restorevar import RestoreVAR
from hsivar.presets import preset
from hsivar.restore import Restorer
from hsivar.training import fit, trainable_parameters

BANDS = 8


@pytest.fixture
def rv_cfg() -> ModelConfig:
    """The tiny preset of the RestoreVAR family, 8 bands."""
    return preset("tiny", bands=BANDS, family="restorevar")


@pytest.fixture
def rv_model(rv_cfg: ModelConfig) -> RestoreVAR:
    """A seeded tiny RestoreVAR, its zero-initialised gains opened (cross-attention, global embedding) and its LRT
    output switched on, so that every part of the condition path and the refiner changes the result."""
    torch.manual_seed(0)
    model = build_model(rv_cfg).eval()
    assert isinstance(model, RestoreVAR)
    with torch.no_grad():
        model.global_gain.fill_(0.5)
        for b in model.var.blocks:
            b.cross.gain.fill_(0.5)
        model.lrt.proj_out.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    return model


def _tiles(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, BANDS, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_family_builds_its_own_model_and_stages(rv_cfg: ModelConfig) -> None:
    assert isinstance(build_model(preset("tiny", bands=BANDS)), HSIVAR)
    model = build_model(rv_cfg)
    assert isinstance(model, RestoreVAR) and model.var.cross and model.var.num_prefix == 0
    assert rv_cfg.stages == ("vqvae", "var", "refiner", "decoder")
    assert not rv_cfg.transformer.aligned_condition  # RestoreVAR conditions by cross-attention alone
    with pytest.raises(ValueError, match="unknown model family"):
        preset("tiny", family="diffusion")


def test_zero_gains_start_from_the_unconditioned_transformer(rv_cfg: ModelConfig) -> None:
    """At initialisation the cross-attention and global-embedding gains are 0: two different cubes decode to the
    same tokens, and the LRT returns f̂_K unchanged; the opened gains make the tokens depend on the cube."""
    torch.manual_seed(0)
    model = build_model(rv_cfg).eval()
    a, b = model.autoregress(_tiles(1, 0)), model.autoregress(_tiles(1, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.idx, b.idx))
    assert torch.equal(model.continuous_latent(a), a.latent)
    with torch.no_grad():
        for blk in model.var.blocks:
            blk.cross.gain.fill_(1.0)
    c, d = model.autoregress(_tiles(1, 0)), model.autoregress(_tiles(1, 1))
    assert not all(torch.equal(x, y) for x, y in zip(c.idx, d.idx))


def test_cached_decoding_equals_the_teacher_forced_forward(rv_model: RestoreVAR) -> None:
    """Greedy tokens of the KV-cached loop (cross-attention read every step) are the argmax of the masked full
    forward fed those tokens; recomputing without the cache gives the same tokens and hidden states."""
    x = _tiles()
    memory, sos, _ = rv_model.condition(x)
    q = rv_model.vqvae.quantize
    with torch.no_grad():
        gen = rv_model.var.generate(memory, sos, q, keep_hidden=True)
        logits, hidden = rv_model.var(memory, sos, q.idx_to_var_input(gen.idx))
        full = rv_model.var.generate(memory, sos, q, kv_cache=False, keep_hidden=True)
    assert torch.equal(logits.argmax(-1), torch.cat(gen.idx, 1))
    assert gen.hidden is not None and gen.hidden.shape == hidden.shape
    assert torch.allclose(hidden, gen.hidden, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(gen.idx, full.idx))
    assert torch.allclose(full.hidden, gen.hidden, atol=1e-5)


@contextmanager
def _condition_projected_every_scale(model: RestoreVAR) -> Iterator[None]:
    """Within: each block's cross-attention keeps nothing between calls (its cache held off), so it projects the
    condition at every scale, as before the cache."""
    try:
        for b in model.var.blocks:
            b.cross.kv_caching = lambda enable: None
        yield
    finally:
        for b in model.var.blocks:
            b.cross.__dict__.pop("kv_caching", None)


def test_the_condition_keys_and_values_are_computed_once_per_decoding(rv_model: RestoreVAR) -> None:
    """The condition is the same at every scale: with the KV cache, each block's cross-attention projects it once per
    decoding, not once per scale, and decodes exactly (bit for bit) as when it projects it every time; nothing is
    kept after the decoding."""
    x = _tiles()
    memory, sos, _ = rv_model.condition(x)
    q, blocks = rv_model.vqvae.quantize, rv_model.var.blocks
    calls = [0]
    hooks = [b.cross.kv_proj.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for b in blocks]
    try:
        with torch.no_grad():
            once = rv_model.var.generate(memory, sos, q, keep_hidden=True)
            assert calls[0] == len(blocks)
            assert all(b.cross.cached_kv is None and not b.cross.caching for b in blocks)
            calls[0] = 0
            with _condition_projected_every_scale(rv_model):
                every = rv_model.var.generate(memory, sos, q, keep_hidden=True)
            assert calls[0] == len(blocks) * len(rv_model.cfg.vqvae.patch_nums)
    finally:
        for h in hooks:
            h.remove()
    assert all(torch.equal(a, b) for a, b in zip(once.idx, every.idx))
    assert torch.equal(once.hidden, every.hidden) and torch.equal(once.f_hat, every.f_hat)
    # a decoding right after another one of another condition decodes as it does with the condition projected at
    # every scale: nothing is kept from one decoding to the next
    other_memory, other_sos, _ = rv_model.condition(_tiles(seed=5))
    with torch.no_grad():
        rv_model.var.generate(memory, sos, q)
        after = rv_model.var.generate(other_memory, other_sos, q, keep_hidden=True)
        with _condition_projected_every_scale(rv_model):
            alone = rv_model.var.generate(other_memory, other_sos, q, keep_hidden=True)
    assert torch.equal(after.hidden, alone.hidden) and not torch.equal(after.hidden, once.hidden)


def test_compiled_steps_decode_the_same_tokens(rv_model: RestoreVAR) -> None:
    """The compiled decoding path (traced with dynamo's eager backend) takes the condition tokens as an input of
    every step and decodes what the eager steps decode."""
    x = _tiles()
    memory, sos, _ = rv_model.condition(x)
    q, var = rv_model.vqvae.quantize, rv_model.var
    ref = var.generate(memory, sos, q)
    torch._dynamo.reset()
    counters.clear()
    var.compile_steps(mode=None, backend="eager")
    try:
        out = var.generate(memory, sos, q)
        assert counters["stats"]["unique_graphs"] >= len(rv_model.cfg.vqvae.patch_nums)
    finally:
        var.compile_steps(False)
        torch._dynamo.reset()
    assert all(torch.equal(a, b) for a, b in zip(ref.idx, out.idx))


def test_restore_runs_the_lrt_and_refuses_classifier_free_guidance(rv_model: RestoreVAR) -> None:
    x = _tiles()
    out = rv_model.restore(x, task="gaussian")
    plain = rv_model.restore(x, task="gaussian", refine=False)
    assert out.cube.shape == x.shape and out.hidden is not None
    assert torch.equal(plain.latent, rv_model.autoregress(x, task="gaussian").latent)
    assert not torch.allclose(out.latent, plain.latent)  # the LRT moved the greedy latent
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        rv_model.restore(x, guidance="cfg")
    with pytest.raises(ValueError, match="expected tiles"):
        rv_model.restore(torch.rand(1, BANDS + 1, 32, 32))


@pytest.mark.parametrize("stage", ["vqvae", "var", "refiner", "decoder"])
def test_each_stage_trains_its_own_parts(stage: str, rv_cfg: ModelConfig, smooth_cubes: Callable,
                                         noisy_batch: Callable, train_stage: Callable) -> None:
    """Each stage trains its parameters and nothing else: the VQ-VAE encoder stays frozen after stage vqvae
    (RestoreVAR reads the degraded latent from it), the LRT trains only in stage refiner."""
    torch.manual_seed(0)
    model = build_model(rv_cfg)
    ids, logs = train_stage(model, stage, noisy_batch(smooth_cubes(2, BANDS, 32, seed=1), 30, seed=2))
    lrt = set(map(id, model.lrt.parameters()))
    encoder = set(map(id, model.vqvae.encoder.parameters()))
    assert (lrt <= ids) == (stage == "refiner")
    assert encoder.isdisjoint(ids) == (stage != "vqvae")
    if stage == "refiner":
        assert {"l1", "l1_greedy"} <= set(logs[-1])


def test_hsivar_refuses_restorevar_stages(smooth_cubes: Callable, noisy_batch: Callable) -> None:
    model = build_model(preset("tiny", bands=BANDS))
    with pytest.raises(ValueError, match="unknown stage 'refiner' for a hsivar model"):
        trainable_parameters(model, "refiner")


def test_the_lrt_learns_the_clean_latent_from_greedy_outputs(rv_cfg: ModelConfig, smooth_cubes: Callable,
                                                             noisy_batch: Callable) -> None:
    """Stage refiner regresses quant_conv(E(hq)) from the greedy latent: on a fixed batch its L1 falls below the
    greedy latent's own."""
    torch.manual_seed(0)
    model = build_model(rv_cfg)
    batch = noisy_batch(smooth_cubes(4, BANDS, 32, seed=3), 30, seed=4)
    logs = [r.logs for r in fit(model, "refiner", [batch], steps=40, lr=3e-3)]
    assert logs[0]["l1"] == pytest.approx(logs[0]["l1_greedy"], rel=1e-5)  # proj_out starts at zero
    assert logs[-1]["l1"] < 0.7 * logs[-1]["l1_greedy"]


def test_published_restorevar_round_trips_and_restores_whole_cubes(rv_model: RestoreVAR, tmp_path: Path) -> None:
    """save_published → load_published builds the family from config.json (strict weights); the Restorer tiles
    and blends a whole cube through it exactly as through the model in memory."""
    from hsivar.publish import load_published, save_published

    save_published(rv_model, tmp_path / "rv", stage="decoder")
    loaded, doc = load_published(tmp_path / "rv")
    assert isinstance(loaded, RestoreVAR) and doc["model"]["family"] == "restorevar"
    cube = np.random.default_rng(0).random((BANDS, 40, 44)).astype(np.float32)
    a = Restorer(rv_model).restore(cube, task="auto")
    b = Restorer(loaded).restore(cube, task="auto")
    assert a.cube.shape == cube.shape and np.array_equal(a.cube, b.cube)
    assert a.task_weights == b.task_weights
