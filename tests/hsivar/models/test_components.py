"""Condition encoder, DAG, refiner, SSA and the fusion head behave as specified at initialisation and under use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from hsivar.config import FusionConfig, ModelConfig
from hsivar.models.condition import alignment_loss
from hsivar.models.fusion import MATRIX_SIDE
from hsivar.models.hsivar import HSIVAR, to_model_range
from hsivar.models.vqvae import VQVAE
from hsivar.presets import preset
from hsivar.tasks import DEFAULT_TASKS
from hsivar.training import param_groups, trainable_parameters


def test_condition_encoder_starts_as_a_copy_of_the_encoder(tiny_model: HSIVAR) -> None:
    x = to_model_range(torch.rand(2, tiny_model.cfg.bands, 32, 32))
    with torch.no_grad():
        assert not torch.allclose(tiny_model.cond.encode(x), tiny_model.vqvae.encode(x))
        tiny_model.init_condition_encoder()
        c, f = tiny_model.cond.encode(x), tiny_model.vqvae.encode(x)
    assert torch.equal(c, f)
    assert alignment_loss(c, f) == 0
    n = tiny_model.cfg.vqvae.latent_size ** 2
    assert tiny_model.cond.prefix(c).shape == (2, n, tiny_model.cfg.transformer.width)
    # a copy, not shared storage: training E_con leaves E alone
    assert tiny_model.cond.encoder.conv_in.weight.data_ptr() != tiny_model.vqvae.encoder.conv_in.weight.data_ptr()


def test_dag_embeddings_mixtures_and_auto(tiny_model: HSIVAR) -> None:
    dag = tiny_model.dag
    c = torch.rand(3, *tiny_model.cfg.cube_shape)  # degraded tiles in [0, 1]
    one = dag.weights("blur", c)
    n = len(DEFAULT_TASKS)
    assert one.shape == (3, n) and torch.equal(one[0], torch.eye(n)[DEFAULT_TASKS.index("blur")])
    with torch.no_grad():
        d_blur = dag.embed(one)
        expected = dag.task_embed[DEFAULT_TASKS.index("blur")] + dag.lambdas[DEFAULT_TASKS.index("blur")] * dag.basic
        assert torch.allclose(d_blur[0], expected)
        # a mixture is the linear combination of its parts
        mix = dag.weights({"gaussian": 3.0, "blur": 1.0}, c)
        d_mix = dag.embed(mix)
        d_g = dag.embed(dag.weights("gaussian", c))
        assert torch.allclose(d_mix, 0.75 * d_g + 0.25 * d_blur, atol=1e-6)
        auto = dag.weights("auto", c)
    assert torch.allclose(auto.sum(-1), torch.ones(3)) and (auto > 0).all()
    with pytest.raises(ValueError, match="unknown task 'noise'"):
        dag.weights("noise", c)
    with pytest.raises(ValueError, match="sum to zero"):
        dag.weights({"blur": 0.0}, c)


def test_refiner_starts_at_zero_and_learns(tiny_model: HSIVAR) -> None:
    h, C = tiny_model.cfg.vqvae.latent_size, tiny_model.cfg.transformer.width
    n = h * h
    z, idx = torch.randn(2, n, C), torch.randint(0, tiny_model.cfg.vqvae.vocab_size, (2, n))
    res = tiny_model.refine(z, idx)
    assert res.shape == (2, tiny_model.cfg.vqvae.z_channels, h, h)
    assert torch.equal(res, torch.zeros_like(res))
    target = torch.randn_like(res)
    opt = torch.optim.Adam(tiny_model.refiner.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = (tiny_model.refine(z, idx) - target).abs().mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.8 * first


def test_adding_ssa_leaves_a_trained_decoder_unchanged() -> None:
    cfg = preset("tiny", bands=8).vqvae
    torch.manual_seed(0)
    plain = VQVAE(cfg.model_copy(update={"ssa": False})).eval()
    with torch.no_grad():  # stand-in for training: move every decoder weight off its initialisation
        for p in plain.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    with_ssa = VQVAE(cfg).eval()
    missing, unexpected = with_ssa.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("decoder.ssa.") for k in missing)
    f = torch.randn(2, cfg.z_channels, cfg.latent_size, cfg.latent_size)
    with torch.no_grad():
        assert torch.equal(with_ssa.decode(f), plain.decode(f))
        # once σ and γ move, SSA changes the output: it is not dead code
        for block in with_ssa.decoder.ssa:
            block.sigma.fill_(0.5)
            block.gamma.fill_(0.5)
        assert not torch.allclose(with_ssa.decode(f), plain.decode(f))


def test_decoder_skips_start_at_zero_and_carry_the_degraded_cube() -> None:
    """Zero-initialised skips leave the decoder's output unchanged; once trained, E_con's per-level
    features of the degraded cube reach the output; restore passes them and stage 1 leaves them alone."""
    cfg = preset("tiny", bands=8)
    cfg = cfg.model_copy(update={"vqvae": cfg.vqvae.model_copy(update={"decoder_skips": True})})
    torch.manual_seed(0)
    model = HSIVAR(cfg).eval()
    lq = torch.rand(2, 8, 32, 32)
    c, feats = model.cond.encode_with_features(to_model_range(lq))
    assert [f.shape[1:] for f in feats] == [(cfg.vqvae.ch * m, 32 // 2**i, 32 // 2**i)
                                            for i, m in enumerate(cfg.vqvae.ch_mult)]
    assert torch.equal(c, model.cond.encode(to_model_range(lq)))
    with torch.no_grad():
        assert torch.equal(model.vqvae.decode(c, feats), model.vqvae.decode(c))
        out = model.restore(lq, task="gaussian")
        assert out.skips is not None and len(out.skips) == len(cfg.vqvae.ch_mult)
        for conv in model.vqvae.decoder.skips:
            conv.weight.normal_(std=0.1)
        assert not torch.allclose(model.vqvae.decode(c, feats), model.vqvae.decode(c))
    stage1 = set(map(id, trainable_parameters(model, "vqvae")))
    stage3 = set(map(id, trainable_parameters(model, "decoder")))
    skips = set(map(id, model.vqvae.decoder.skips.parameters()))
    assert skips.isdisjoint(stage1) and skips <= stage3



def test_output_fusion_starts_as_the_decoder_and_sees_the_degraded_tile() -> None:
    """An untrained fusion head returns the decoder's output; once its output conv moves, the restored
    tile depends on the degraded pixels and the task weights; only stage 3 trains it, at its own lr."""
    cfg = preset("tiny", bands=8).model_copy(update={"first_estimate": False})
    assert cfg.fusion.width > 0
    torch.manual_seed(0)
    model = HSIVAR(cfg).eval()
    plain = HSIVAR(cfg.model_copy(update={"fusion": FusionConfig(width=0)})).eval()
    assert plain.fusion is None
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fusion.")})
    lq = torch.rand(2, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.restore(lq, task="blur").cube, plain.restore(lq, task="blur").cube)
        decoded = torch.rand(2, 8, 32, 32) * 2 - 1
        w = torch.eye(len(DEFAULT_TASKS))[:2]
        model.fusion.gate.weight[:, 0] = 1.0  # gate fully open for the first task: the input passes through
        assert torch.allclose(model.output(lq, decoded, w)[0], lq[0]) and \
            torch.equal(model.output(lq, decoded, w)[1], (decoded[1] + 1) / 2)
        model.fusion.gate.weight.zero_()
        model.fusion.ending.weight.normal_(std=0.05)
        y = model.output(lq, decoded, w)
        assert y.shape == lq.shape
        assert not torch.allclose(y, model.output(lq.flip(-1), decoded, w))  # the degraded pixels matter
        assert not torch.allclose(y, model.output(lq, decoded, w.flip(0)))  # and so does the task
        assert torch.equal(plain.output(lq, decoded, w), (decoded + 1) / 2)
    fusion = set(map(id, model.fusion.parameters()))
    ids = {s: set(map(id, trainable_parameters(model, s))) for s in model.cfg.stages}
    assert fusion <= ids["decoder"] and fusion.isdisjoint(ids["vqvae"] | ids["var"])
    groups = param_groups(model, trainable_parameters(model, "decoder"), lr=1e-3, head_lr=1e-2)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2, 1e-2 * cfg.fusion.gate_lr_scale]
    assert set(map(id, groups[1]["params"])) | set(map(id, groups[2]["params"])) == fusion
    assert {id(p) for p in groups[2]["params"]} == {id(model.fusion.gate.weight), id(model.fusion.unsharp.weight)}
    assert len(param_groups(model, trainable_parameters(model, "decoder"), lr=1e-3)) == 1


def test_a_model_with_a_first_estimate_starts_from_it() -> None:
    """first_estimate: E_con reads x0 (not lq), an untrained head returns x0 exactly, and once the gate closes the
    decoder's output and the degraded tile matter; the classifier still reads lq."""
    cfg = preset("tiny", bands=8)
    assert cfg.first_estimate
    torch.manual_seed(0)
    model = HSIVAR(cfg).eval()
    lq, x0 = torch.rand(2, 8, 32, 32), torch.rand(2, 8, 32, 32)
    decoded = torch.rand(2, 8, 32, 32) * 2 - 1
    w = torch.eye(len(DEFAULT_TASKS))[:2]
    with torch.no_grad():
        assert torch.equal(model.output(lq, decoded, w, x0), x0)
        assert torch.equal(model.condition_input(lq, x0), x0) and torch.equal(model.condition_input(lq, None), lq)
        full = model.restore(lq, task="blur", estimate01=x0)
        assert torch.allclose(full.cube, x0.clamp(0, 1))
        a, b = model.autoregress(lq, "auto", estimate01=x0), model.autoregress(lq, "auto", estimate01=x0.flip(-1))
        assert torch.equal(a.task_weights, b.task_weights)  # the classifier reads lq only
        assert not torch.equal(a.latent, b.latent)  # the condition reads x0
        model.fusion.gate.weight.zero_()
        assert torch.allclose(model.output(lq, decoded, w, x0), (decoded + 1) / 2)


def test_fusion_unsharp_masks_add_each_tasks_amount_of_every_band_detail() -> None:
    """Σ_j a_j (lq − G_σj ∗ lq): Gaussian details of every band (reflect padding), amounts mixed by the task."""
    cfg = preset("tiny", bands=8).model_copy(update={"first_estimate": False})
    sigmas = cfg.fusion.unsharp_sigmas
    assert len(sigmas) >= 2
    torch.manual_seed(0)
    fusion = HSIVAR(cfg).fusion.eval()
    lq = torch.rand(2, 8, 32, 32)
    details = fusion.details(lq)
    assert details.shape == (2, len(sigmas), 8, 32, 32) and details.dtype == torch.float32
    for j, sigma in enumerate(sigmas):  # against scipy's Gaussian filter, truncated at 3σ, reflecting at the edge
        ref = lq.numpy() - gaussian_filter(lq.numpy(), (0, 0, sigma, sigma), mode="mirror", truncate=3.0)
        assert np.allclose(details[:, j].numpy(), ref, atol=1e-5)
    wide = torch.rand(1, 2, 72, 80)  # sides above MATRIX_SIDE: two 1-D convolutions, the same sums
    assert max(wide.shape[-2:]) > MATRIX_SIDE >= 32
    for j, sigma in enumerate(sigmas):
        ref = wide.numpy() - gaussian_filter(wide.numpy(), (0, 0, sigma, sigma), mode="mirror", truncate=3.0)
        assert np.allclose(fusion.details(wide)[:, j].numpy(), ref, atol=1e-5)
    flat = torch.full((1, 8, 32, 32), 0.3)
    assert fusion.details(flat).abs().max() < 1e-6  # a flat tile has no detail
    w = torch.zeros(2, len(DEFAULT_TASKS))
    w[0, DEFAULT_TASKS.index("blur")] = 1.0
    w[1, DEFAULT_TASKS.index("blur")], w[1, DEFAULT_TASKS.index("sr")] = 0.25, 0.75
    with torch.no_grad():
        fusion.unsharp.weight[0, DEFAULT_TASKS.index("blur")] = 2.0  # blur: 2 × the finest detail
        fusion.unsharp.weight[1, DEFAULT_TASKS.index("sr")] = -1.0  # sr: minus the next one (a smoothing)
        y01 = torch.rand(2, 8, 32, 32)
        out = fusion(lq, y01, w)  # gate and NAF branch at zero: y = ŷ + Σ a_j details_j
    assert torch.allclose(out[0], y01[0] + 2.0 * details[0, 0], atol=1e-6)
    assert torch.allclose(out[1], y01[1] + 0.5 * details[1, 0] - 0.75 * details[1, 1], atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        FusionConfig(width=8, unsharp_sigmas=(1.0, 0.0))
    with pytest.raises(ValueError, match="3σ"):
        ModelConfig.model_validate({**cfg.model_dump(), "fusion": {"width": 8, "unsharp_sigmas": [11.0]}})


def test_task_classifier_reads_the_degraded_tile() -> None:
    """The auto-mode classifier sees the degraded pixels: a few steps separate noise from inpainting masks."""
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=8))
    dag = model.dag
    g = torch.Generator().manual_seed(1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        clean = torch.rand(n, 8, 1, 1, generator=g).expand(n, 8, 32, 32)  # flat spectra: only the degradation varies
        noisy = clean[: n // 2] + 0.2 * torch.randn(n // 2, 8, 32, 32, generator=g)
        holes = clean[n // 2:] * (torch.rand(n - n // 2, 8, 32, 32, generator=g) > 0.8)
        y = torch.tensor([DEFAULT_TASKS.index("gaussian")] * (n // 2) + [DEFAULT_TASKS.index("inpaint")] * (n - n // 2))
        return torch.cat([noisy, holes]), y

    opt = torch.optim.AdamW(dag.parameters(), lr=3e-3)
    for _ in range(30):
        x, y = batch(8)
        loss = torch.nn.functional.cross_entropy(dag.classify(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch(16)
    with torch.no_grad():
        w = dag.weights("auto", x)
    assert (w.argmax(-1) == y).float().mean() >= 0.9


def test_trust_shrinks_the_correction_towards_the_first_estimate(tmp_path) -> None:
    """y = x0 + τ·(F − x0) with τ = trust · task weights; set_trust records τ in the config, which a published
    model keeps (the weights file does not change)."""
    from hsivar.publish import load_published, save_published

    cfg = preset("tiny", bands=8)
    torch.manual_seed(0)
    model = HSIVAR(cfg).eval()
    with torch.no_grad():
        model.fusion.ending.bias.fill_(0.05)  # a head whose correction is not zero
    lq, x0 = torch.rand(2, 8, 32, 32), torch.rand(2, 8, 32, 32)
    decoded = torch.rand(2, 8, 32, 32) * 2 - 1
    w = torch.zeros(2, len(DEFAULT_TASKS))
    w[0, 0], w[1, 1], w[1, 2] = 1.0, 0.5, 0.5
    with torch.no_grad():
        full = model.output(lq, decoded, w, x0)
        trust = (0.0, 0.5, 1.0, 1.0, 1.0, 1.0)
        model.set_trust(trust)
        shrunk = model.output(lq, decoded, w, x0)
    assert torch.equal(shrunk[0], x0[0])  # τ = 0: the first estimate exactly
    assert torch.allclose(shrunk[1], x0[1] + 0.75 * (full[1] - x0[1]), atol=1e-6)
    assert model.cfg.fusion.trust == trust
    save_published(model, tmp_path / "m", stage="decoder")
    loaded, _ = load_published(tmp_path / "m")
    assert loaded.cfg.fusion.trust == trust and torch.equal(loaded.fusion.trust, torch.tensor(trust))
    with pytest.raises(ValueError, match="trust"):
        model.set_trust((1.5,) * len(DEFAULT_TASKS))
    with pytest.raises(ValueError, match="tasks"):
        model.set_trust((1.0,))


def test_trust_mixes_the_clamped_ends_the_calibration_scores() -> None:
    """The shrink runs between x0 and F clamped to [0, 1]: where F < 0 (dark regions) the output at τ is the mix of
    the two valid cubes, not a value clamped to 0 afterwards; training still gets the gradient of F there."""
    cfg = preset("tiny", bands=8)
    torch.manual_seed(0)
    model = HSIVAR(cfg).eval()
    with torch.no_grad():
        model.fusion.ending.bias.fill_(-0.6)  # a correction that drives the output below 0
    lq, x0 = torch.rand(1, 8, 32, 32) * 0.2, torch.rand(1, 8, 32, 32) * 0.2  # a dark tile
    decoded = torch.rand(1, 8, 32, 32) * 2 - 1
    w = torch.zeros(1, len(DEFAULT_TASKS))
    w[0, DEFAULT_TASKS.index("inpaint")] = 1.0
    with torch.no_grad():
        full = model.output(lq, decoded, w, x0)  # τ = 1
        model.set_trust((0.5,) * len(DEFAULT_TASKS))
        half = model.output(lq, decoded, w, x0)
    assert float(full.min()) == 0.0 and (full == 0).float().mean() > 0.5  # the head's own output is clamped
    assert torch.allclose(half, 0.5 * (x0 + full), atol=1e-6) and bool((half > 0).all())  # not zeroed: mixed
    model.train()
    decoded.requires_grad_(True)
    model.output(lq, decoded, w, x0).sum().backward()
    assert model.fusion.ending.bias.grad is not None and bool((model.fusion.ending.bias.grad != 0).all())


def test_auto_among_some_families_weighs_only_those(tiny_model: HSIVAR) -> None:
    from hsivar.models.dag import AutoAmong

    lq = torch.rand(3, tiny_model.cfg.bands, 32, 32)
    w = tiny_model.dag.weights(AutoAmong(("blur", "sr")), lq)
    allowed = torch.tensor([t in ("blur", "sr") for t in DEFAULT_TASKS])
    assert torch.allclose(w.sum(-1), torch.ones(3)) and bool((w[:, ~allowed] == 0).all())
    auto = tiny_model.dag.weights("auto", lq)[:, allowed]
    assert torch.allclose(w[:, allowed], auto / auto.sum(-1, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="auto among"):
        tiny_model.dag.weights(AutoAmong(("mars",)), lq)
