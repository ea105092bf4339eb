"""Next-scale transformer: block causality, KV-cache equivalence, decoding determinism."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch._dynamo.utils import counters

from hsivar.models.hsivar import HSIVAR
from hsivar.models.var import Sampling, SelfAttention, sample_tokens


def _inputs(model: HSIVAR, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    C, vq = model.cfg.transformer.width, model.cfg.vqvae
    prefix = torch.randn(batch, model.var.num_prefix, C, generator=g)
    d = torch.randn(batch, C, generator=g)
    x = torch.randn(batch, model.var.L - 1, vq.z_channels, generator=g)
    return prefix, d, x


def test_logits_of_a_scale_ignore_later_scales(tiny_model: HSIVAR) -> None:
    prefix, d, x = _inputs(tiny_model)
    patch_nums = tiny_model.cfg.vqvae.patch_nums
    with torch.no_grad():
        logits, _ = tiny_model.var(prefix, d, x)
        start = 0  # position in the logits (L entries) where each scale begins
        for k, p in enumerate(patch_nums[:-1]):
            end = start + p * p
            x2 = x.clone()
            x2[:, end - 1:] += torch.randn_like(x2[:, end - 1:])  # inputs of scales k+1 … K change
            logits2, _ = tiny_model.var(prefix, d, x2)
            assert torch.equal(logits[:, :end], logits2[:, :end]), f"scale {k} saw a later scale"
            assert not torch.allclose(logits[:, end:], logits2[:, end:])
            start = end


def test_prefix_does_not_see_the_task_token(tiny_model: HSIVAR) -> None:
    """The condition prefix is level −1: changing d changes every logit but no prefix hidden state."""
    prefix, d, x = _inputs(tiny_model)
    var = tiny_model.var
    with torch.no_grad():
        h1 = var.embed_sequence(prefix, d, x)
        h2 = var.embed_sequence(prefix, d + 1, x)
        for b in var.blocks:
            h1 = b(h1, var.rope_cos, var.rope_sin, var.mask)
            h2 = b(h2, var.rope_cos, var.rope_sin, var.mask)
    n = var.num_prefix
    assert torch.equal(h1[:, :n], h2[:, :n])
    assert not torch.allclose(h1[:, n:], h2[:, n:])


def test_aligned_condition_reaches_the_matching_place_of_every_scale(tiny_cfg) -> None:
    """Perturbing the top-left prefix token moves the SOS and the top-left token of every scale's
    input embedding (the prefix grid area-pooled to p_k×p_k), nothing else; off, no input moves."""
    assert tiny_cfg.transformer.aligned_condition
    off_cfg = tiny_cfg.model_copy(update={
        "transformer": tiny_cfg.transformer.model_copy(update={"aligned_condition": False})})
    for cfg, on in ((tiny_cfg, True), (off_cfg, False)):
        torch.manual_seed(0)
        var = HSIVAR(cfg).eval().var
        prefix, d, x = _inputs(HSIVAR(cfg))
        prefix2 = prefix.clone()
        prefix2[:, 0] += 1.0  # latent cell (0, 0)
        with torch.no_grad():
            e1 = var.embed_sequence(prefix, d, x)[:, var.num_prefix:]
            e2 = var.embed_sequence(prefix2, d, x)[:, var.num_prefix:]
        moved = (e1 - e2).abs().amax(dim=(0, 2)) > 0  # (L,) which token positions changed
        expected = torch.zeros_like(moved)
        if on:
            start = 0
            for p in cfg.vqvae.patch_nums:
                expected[start] = True  # the top-left cell of each scale (the SOS for p = 1)
                start += p * p
        assert torch.equal(moved, expected)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_q_and_k_processed_together_equal_each_on_its_own(autocast: bool, attention_both_ways: Callable) -> None:
    """q and k go through normalisation, temperature and rotation as one tensor (half the kernels a step): the
    output and the cached keys (values and dtype) equal the one-at-a-time reference bit for bit."""
    torch.manual_seed(0)
    a = SelfAttention(64, 4, 0.0, 0.0).eval()
    with torch.no_grad():
        for t in (a.q_bias, a.v_bias, a.scale_mul_1H11):
            t.normal_()
    out, k, ref, ref_k = attention_both_ways(a, torch.randn(2, 9, 64), torch.randn(9, 8), autocast)
    assert torch.equal(out, ref)
    assert k.dtype == ref_k.dtype == (torch.bfloat16 if autocast else torch.float32) and torch.equal(k, ref_k)


def test_kv_cached_decoding_equals_masked_full_forward(tiny_model: HSIVAR) -> None:
    prefix, d, _ = _inputs(tiny_model)
    q = tiny_model.vqvae.quantize
    with torch.no_grad():
        gen = tiny_model.var.generate(prefix, d, q)
        x = q.idx_to_var_input(gen.idx)
        logits, hidden = tiny_model.var(prefix, d, x)
    # greedy tokens of the cached run are the argmax of the full run at every position
    assert torch.equal(logits.argmax(-1), torch.cat(gen.idx, 1))
    n_last = gen.idx[-1].shape[1]
    assert torch.allclose(hidden[:, -n_last:], gen.hidden_last, atol=1e-5)
    # and the per-step logits match too: recompute them from the cache scale by scale
    var = tiny_model.var
    with torch.no_grad():
        var.set_kv_caching(True)
        tokens, pos, cached = var.embed_sequence(prefix, d, None), 0, []
        for si, p in enumerate(tiny_model.cfg.vqvae.patch_nums):
            h = var.step(tokens, pos)[:, -p * p:]
            pos += tokens.shape[1]
            cached.append(var.head(h))
            if si + 1 < len(gen.idx):
                start = sum(pp * pp for pp in tiny_model.cfg.vqvae.patch_nums[1:si + 1])
                nxt = x[:, start:start + tiny_model.cfg.vqvae.patch_nums[si + 1] ** 2]
                tokens = var.next_scale_tokens(prefix, nxt, si + 1)
        var.set_kv_caching(False)
    assert torch.allclose(torch.cat(cached, 1), logits, atol=1e-5)
    assert all(b.attn.cached_k is None for b in var.blocks)


def test_recomputing_without_cache_gives_the_same_decoding(tiny_model: HSIVAR) -> None:
    prefix, d, _ = _inputs(tiny_model)
    q = tiny_model.vqvae.quantize
    cached = tiny_model.var.generate(prefix, d, q)
    full = tiny_model.var.generate(prefix, d, q, kv_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached.idx, full.idx))
    assert torch.allclose(cached.hidden_last, full.hidden_last, atol=1e-5)


def test_compiled_steps_decode_the_same_tokens_and_can_be_switched_off(tiny_model: HSIVAR) -> None:
    """The compiled decoding path (one graph per scale; CUDA graphs on a GPU) traced on the CPU with dynamo's eager
    backend: the same tokens and hidden states as the eager steps, at two batch sizes and with sampling."""
    q = tiny_model.vqvae.quantize
    var = tiny_model.var
    s = Sampling(greedy=False, top_k=20, top_p=0.9)
    runs = []
    for batch in (1, 3):
        prefix, d, _ = _inputs(tiny_model, batch=batch)
        sampled = var.generate(prefix, d, q, s, torch.Generator().manual_seed(3))
        runs.append((prefix, d, var.generate(prefix, d, q), sampled))
    torch._dynamo.reset()
    counters.clear()
    var.compile_steps(mode=None, backend="eager")
    try:
        for prefix, d, greedy, sampled in runs:
            for ref, out in ((greedy, var.generate(prefix, d, q)),
                             (sampled, var.generate(prefix, d, q, s, torch.Generator().manual_seed(3)))):
                assert all(torch.equal(a, b) for a, b in zip(ref.idx, out.idx))
                assert torch.allclose(ref.hidden_last, out.hidden_last, atol=1e-6)
        # every scale of both batch sizes was compiled (the steps did run through dynamo), none fell back
        assert counters["stats"]["unique_graphs"] >= 2 * len(tiny_model.cfg.vqvae.patch_nums)
    finally:
        var.compile_steps(False)
        torch._dynamo.reset()
    assert var._compiled_step is None
    assert all(b.attn.cached_k is None for b in var.blocks)


@pytest.mark.slow
def test_compiled_steps_keep_a_graph_per_scale_for_every_batch_size_asked_for(tiny_model: HSIVAR) -> None:
    """compile_steps(batch_sizes=n): dynamo keeps one graph per scale for n batch sizes (more than its default
    limit of 8 graphs per function allows), so none of them falls back to eager steps."""
    q, var = tiny_model.vqvae.quantize, tiny_model.var
    sizes = (1, 2, 3, 4, 5)
    inputs = [_inputs(tiny_model, batch=b)[:2] for b in sizes]
    torch._dynamo.reset()
    counters.clear()
    var.compile_steps(mode=None, backend="eager", batch_sizes=len(sizes))
    try:
        outs = [var.generate(prefix, d, q) for prefix, d in inputs]
        assert counters["stats"]["unique_graphs"] >= len(sizes) * len(tiny_model.cfg.vqvae.patch_nums)
    finally:
        var.compile_steps(False)
        torch._dynamo.reset()
    eager = var.generate(*inputs[-1], q)
    assert all(torch.equal(a, b) for a, b in zip(eager.idx, outs[-1].idx))


def test_greedy_is_deterministic_and_sampling_is_seeded(tiny_model: HSIVAR) -> None:
    prefix, d, _ = _inputs(tiny_model)
    q = tiny_model.vqvae.quantize
    a = tiny_model.var.generate(prefix, d, q)
    b = tiny_model.var.generate(prefix, d, q)
    assert all(torch.equal(i, j) for i, j in zip(a.idx, b.idx))
    s = Sampling(greedy=False, top_k=20, top_p=0.9)
    r1 = tiny_model.var.generate(prefix, d, q, s, torch.Generator().manual_seed(7))
    r2 = tiny_model.var.generate(prefix, d, q, s, torch.Generator().manual_seed(7))
    r3 = tiny_model.var.generate(prefix, d, q, s, torch.Generator().manual_seed(8))
    assert all(torch.equal(i, j) for i, j in zip(r1.idx, r2.idx))
    assert not all(torch.equal(i, j) for i, j in zip(r1.idx, r3.idx))


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.tensor([[[4.0, 3.0, 2.0, 1.0, 0.0]]]).expand(1, 2000, 5)
    g = torch.Generator().manual_seed(0)
    top2 = sample_tokens(logits, Sampling(greedy=False, top_k=2), g)
    assert set(top2.unique().tolist()) == {0, 1}
    # softmax mass of token 0 is 0.636, of tokens 0 and 1: 0.87 → top_p 0.8 keeps exactly these two
    top_p = sample_tokens(logits, Sampling(greedy=False, top_p=0.8), g)
    assert set(top_p.unique().tolist()) == {0, 1}
    assert torch.equal(sample_tokens(logits, Sampling(), None), torch.zeros(1, 2000, dtype=torch.long))


def test_classifier_free_guidance_option_runs_a_doubled_batch(tiny_model: HSIVAR) -> None:
    lq = torch.rand(2, tiny_model.cfg.bands, 32, 32)
    with torch.no_grad():  # make the unconditional pass clearly different from the conditional one
        tiny_model.dag.task_embed.mul_(100)
        tiny_model.var.head.weight.mul_(50)
    dag = tiny_model.restore(lq, task="gaussian")
    cfg = tiny_model.restore(lq, task="gaussian", guidance="cfg", cfg_scale=3.0)
    assert cfg.cube.shape == dag.cube.shape
    # scale 1 has t = 0 (no guidance), later scales differ once guided
    assert torch.equal(cfg.idx[0], dag.idx[0])
    assert any(not torch.equal(a, b) for a, b in zip(cfg.idx[1:], dag.idx[1:]))
