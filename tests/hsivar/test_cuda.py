"""The CUDA paths: bf16-autocast training of every stage, restoration on the GPU, published weights on CUDA.

CI has no GPU, so these skip there; they run on a lent GPU machine (docs/benchmarks.md records where and
when). Tiny shapes, as everywhere else: what they check is that the device and precision paths compute the
same function as the CPU path, not speed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hsivar.models.base import RestoreOutput
from hsivar.models.build import build_model
from hsivar.models.graphs import GraphedRestore
from hsivar.models.hsivar import HSIVAR
from hsivar.models.var import Sampling
from hsivar.presets import preset
from hsivar.publish import save_published
from hsivar.restore import Restorer
from hsivar.training import Batch, prepare_stage, stage_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BANDS = 8


def _to(batch: Batch, device: str) -> Batch:
    return Batch(batch.hq.to(device), batch.lq.to(device), batch.task_weights.to(device))


def _train(model: HSIVAR, stage: str, batch: Batch, steps: int, bf16: bool) -> list[float]:
    """AdamW steps of one stage on one batch (as hsivar_platform.train runs them); → the losses."""
    params = prepare_stage(model, stage)
    opt = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            result = stage_loss(model, stage, batch, gen)
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), f"{stage}: non-finite gradients"
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        losses.append(float(result.loss.detach()))
    model.eval()
    return losses


def test_the_three_stages_train_in_sequence_under_bf16_autocast(smooth_cubes: Callable, noisy_batch: Callable) -> None:
    """Stage 1 → 2 → 3 on one model under bf16 autocast: finite gradients, each stage's loss falls."""
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=BANDS)).cuda()
    batch = _to(noisy_batch(smooth_cubes(8, BANDS, 32, seed=1), 30, seed=2), "cuda")
    for stage, steps in zip(model.cfg.stages, (100, 60, 30)):
        losses = _train(model, stage, batch, steps, bf16=True)
        assert np.isfinite(losses).all()
        assert np.mean(losses[-5:]) < losses[0], f"{stage}: loss {losses[0]:.4f} → {np.mean(losses[-5:]):.4f}"


def test_a_bf16_step_matches_the_fp32_step_on_cuda(smooth_cubes: Callable, noisy_batch: Callable) -> None:
    """The stage losses under autocast are the fp32 losses to bf16 precision (the quantiser stays fp32)."""
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=BANDS)).cuda().train()
    batch = _to(noisy_batch(smooth_cubes(4, BANDS, 32, seed=3), 30, seed=4), "cuda")
    for stage in ("vqvae", "var"):
        prepare_stage(model, stage)
        with torch.no_grad():
            fp32 = stage_loss(model, stage, batch, torch.Generator().manual_seed(0)).loss
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = stage_loss(model, stage, batch, torch.Generator().manual_seed(0)).loss
        assert bf16.dtype == torch.float32 and torch.isfinite(bf16)
        assert float(bf16) == pytest.approx(float(fp32), rel=0.05), stage


def test_restoration_on_cuda_agrees_with_the_cpu(tmp_path: Path, smooth_cubes: Callable, noisy_batch: Callable,
                                                 switched_on: Callable) -> None:
    """A published model restores a 48×40 cube on CUDA (fp32 and bf16) as it does on the CPU.

    The model is trained for stages 1 and 2 first: an untrained transformer's logits are near ties, and
    bf16 rounding flips its argmax tokens (2.9 % mean error on an H100), which says nothing about the path.
    On a trained tiny model bench/precision.py measured bf16 within 0.005 dB of fp32 on every family.
    """
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=BANDS)).cuda()
    batch = _to(noisy_batch(smooth_cubes(8, BANDS, 48, seed=5)[:, :, :32, :32], 30, seed=6), "cuda")
    for stage in ("vqvae", "var"):
        _train(model, stage, batch, 150, bf16=False)
    switched_on(model)  # else the untrained head returns x0, and sampling could not change the cube
    published = save_published(model.cpu(), tmp_path / "model", stage="decoder")
    clean = smooth_cubes(8, BANDS, 48, seed=5)[0, :, :, :40]  # the training cubes' scene, 48×40
    noisy = noisy_batch(clean[None], 30, seed=7).lq[0]
    cube = noisy.numpy() * 1000  # source units
    ref = Restorer.from_published(published).restore(cube, task="gaussian")
    fp32 = Restorer(Restorer.from_published(published, device="cuda").model, "cuda", bf16=False)
    out32 = fp32.restore(cube, task="gaussian")
    out16 = Restorer.from_published(published, device="cuda").restore(cube, task="gaussian")  # bf16 default
    assert out32.cube.shape == out16.cube.shape == ref.cube.shape == cube.shape
    scale = float(cube.max() - cube.min())
    err32 = np.abs(out32.cube - ref.cube).mean() / scale
    err16 = np.abs(out16.cube - ref.cube).mean() / scale
    print(f"mean |cuda − cpu| / range: fp32 {err32:.2e}, bf16 {err16:.2e}")
    assert np.isfinite(out16.cube).all() and err32 < 1e-3 and err16 < 1e-2, (err32, err16)
    # seeded sampling on the device: the same seed gives the same cube, another seed another one
    r = Restorer.from_published(published, device="cuda")
    a = r.restore(cube, task="gaussian", samples=2, seed=3, sampling=Sampling(greedy=False, top_k=8))
    b = r.restore(cube, task="gaussian", samples=2, seed=3, sampling=Sampling(greedy=False, top_k=8))
    c = r.restore(cube, task="gaussian", samples=2, seed=4, sampling=Sampling(greedy=False, top_k=8))
    np.testing.assert_array_equal(a.cube, b.cube)
    assert a.std is not None and not np.array_equal(a.cube, c.cube)


@pytest.mark.parametrize("bf16", [False, True])
def test_q_and_k_processed_together_equal_each_on_its_own_on_cuda(bf16: bool, attention_both_ways: Callable) -> None:
    """On a GPU autocast runs the norm in fp32, so q and k are fp32 after it: the pair processed as one tensor still
    equals the one-at-a-time reference bit for bit, the cached keys in the same dtype."""
    from hsivar.models.var import SelfAttention

    torch.manual_seed(0)
    a = SelfAttention(1024, 16, 0.0, 0.0).cuda().eval()
    with torch.no_grad():
        for t in (a.q_bias, a.v_bias, a.scale_mul_1H11):
            t.normal_()
    x, angles = torch.randn(4, 25, 1024, device="cuda"), torch.randn(25, 32, device="cuda")
    out, k, ref, ref_k = attention_both_ways(a, x, angles, bf16)
    assert torch.equal(out, ref)
    assert k.dtype == ref_k.dtype and torch.equal(k, ref_k)


def test_low_precision_group_norms_are_about_as_accurate_as_autocasts_fp32_norms_on_cuda(
        vqvae_norms_both_ways: Callable) -> None:
    """CUDA autocast runs group_norm in fp32; the VQ-VAE's norms keep bf16 activations in bf16 instead (statistics
    in fp32 inside the kernel): against the fp32 model they land about as close as autocast's policy does."""
    for low, policy in vqvae_norms_both_ways("cuda"):
        assert low <= 0.05 and low <= 1.5 * policy + 0.005


def test_kv_cache_gives_the_same_tokens_on_cuda() -> None:
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=BANDS)).cuda().eval()
    lq = torch.rand(4, BANDS, 32, 32, device="cuda")
    cached = model.restore(lq, task="blur", kv_cache=True)
    full = model.restore(lq, task="blur", kv_cache=False)
    for a, b in zip(cached.idx, full.idx):
        assert (a == b).float().mean() > 0.99


def _agreement(a: RestoreOutput, b: RestoreOutput) -> tuple[float, float]:
    """(share of equal tokens over every scale, max |Δ| of the restored tiles and of the decoder's output)."""
    same = torch.cat([(x == y).flatten() for x, y in zip(a.idx, b.idx)]).float().mean()
    diff = max(float((a.cube.float() - b.cube.float()).abs().max()),
               float((a.decoded.float() - b.decoded.float()).abs().max()) if a.decoded is not None else 0.0)
    return float(same), diff


@pytest.mark.parametrize("family", ["hsivar", "restorevar", "varformer"])
@pytest.mark.parametrize("bf16", [False, True])
def test_a_graphed_restoration_equals_the_eager_one(family: str, bf16: bool, switched_on: Callable) -> None:
    """Every family's greedy restoration replayed from a CUDA graph (task auto, a named task, a mixture; with a first
    estimate; DAG and CFG guidance) gives the eager restoration's tokens and tiles, on new inputs each replay; a named
    task and a mixture share one graph (their weights are an input). Under bf16 the graphs read bf16 copies of the
    weights, and the model keeps its fp32 ones. Every gated path is switched on (the ``switched_on`` fixture)."""
    torch.manual_seed(0)
    model = switched_on(build_model(preset("tiny", bands=BANDS, family=family))).cuda().eval()
    graphed = GraphedRestore(model)
    guidances = ("dag", "cfg") if family == "hsivar" else ("dag",)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cuda", enabled=False)
    for seed, (task, guidance) in enumerate([(t, g) for t in ("auto", "blur", {"sr": 1.0, "inpaint": 1.0})
                                             for g in guidances]):
        for replay in range(2):  # the first call records, the second replays with other tiles
            gen = torch.Generator(device="cuda").manual_seed(10 * seed + replay)
            lq = torch.rand(3, BANDS, 32, 32, device="cuda", generator=gen)
            x0 = (lq + 0.05 * torch.rand(lq.shape, device="cuda", generator=gen)).clamp(0, 1)
            with ctx, torch.no_grad():
                eager = model.restore(lq, task, guidance=guidance, estimate01=x0)
                out = graphed(lq, task, guidance=guidance, estimate01=x0)
            same, diff = _agreement(eager, out)
            print(f"{family} bf16={bf16} {task} {guidance} replay {replay}: tokens {same:.4f}, max |Δ| {diff:.2e}")
            assert same == 1.0 and diff <= 1e-5, (task, guidance, replay, same, diff)
            assert torch.equal(eager.task_weights, out.task_weights)
    assert len(graphed.recorded) == 2 * len(guidances)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    copies = graphed._copies.get(torch.bfloat16, {})
    assert bool(copies) == bf16 and all(p.dtype == torch.bfloat16 for p in copies.values())
    assert not {id(m) for m, _ in copies} & {id(m) for m in model.vqvae.quantize.modules()}


def test_graphs_without_weight_copies_equal_the_eager_ones(switched_on: Callable) -> None:
    """The recording with autocast's own casts inside the graph gives the eager restoration too."""
    torch.manual_seed(0)
    model = switched_on(HSIVAR(preset("tiny", bands=BANDS))).cuda().eval()
    graphed = GraphedRestore(model, low_precision_weights=False)
    for seed in range(2):
        lq = torch.rand(2, BANDS, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
            same, diff = _agreement(model.restore(lq, "auto"), graphed(lq, "auto"))
        assert same == 1.0 and diff <= 1e-5, (seed, same, diff)
    assert not graphed._copies


def test_a_batch_without_its_own_graph_is_padded_into_a_bigger_one(switched_on: Callable) -> None:
    """Past max_graphs, a batch replays through the smallest recorded batch size that holds it, padded with its last
    tile: its tiles come out as the eager restoration of the padded batch gives them. A batch larger than every
    recorded one runs eagerly."""
    torch.manual_seed(0)
    model = switched_on(HSIVAR(preset("tiny", bands=BANDS))).cuda().eval()
    graphed = GraphedRestore(model, max_graphs=1)
    lq = torch.rand(6, BANDS, 32, 32, device="cuda")
    with torch.no_grad():
        graphed(lq[:4], "gaussian")
        for n in (1, 3, 6):
            padded = torch.cat([lq[:n], lq[n - 1:n].expand(max(4 - n, 0), -1, -1, -1)])
            eager = model.restore(padded, "gaussian")
            eager = RestoreOutput(eager.cube[:n], eager.task_weights[:n], [i[:n] for i in eager.idx],
                                  eager.latent[:n], eager.hidden_last[:n], None, decoded=eager.decoded[:n])
            same, diff = _agreement(eager, graphed(lq[:n], "gaussian"))
            assert same == 1.0 and diff <= 1e-5, (n, same, diff)
    assert [k.batch for k in graphed.recorded] == [4]


def test_the_restorer_compiled_on_cuda_replays_graphs_with_the_eager_cube(smooth_cubes: Callable,
                                                                         noisy_batch: Callable,
                                                                         switched_on: Callable) -> None:
    """Restorer(compiled=True) on CUDA restores a whole cube (several batches of tiles, blended) from CUDA graphs,
    as the eager Restorer does; sampled decoding stays eager and seeded."""
    torch.manual_seed(0)
    model = switched_on(HSIVAR(preset("tiny", bands=BANDS))).eval()
    clean = smooth_cubes(1, BANDS, 80, seed=8)[0]
    cube = noisy_batch(clean[None], 30, seed=9).lq[0].numpy()
    eager = Restorer(model, "cuda")
    ref = eager.restore(cube, task="auto", batch_size=4)
    graphed = Restorer(model, "cuda", compiled=True)
    out = graphed.restore(cube, task="auto", batch_size=4)
    assert graphed.graphs is not None and sorted(k.batch for k in graphed.graphs.recorded) == [1, 4]
    assert np.abs(out.cube - ref.cube).max() <= 1e-5 * np.abs(ref.cube).max()
    sampling = Sampling(greedy=False, top_k=8)
    a = graphed.restore(cube, task="gaussian", samples=2, seed=3, sampling=sampling)
    b = eager.restore(cube, task="gaussian", samples=2, seed=3, sampling=sampling)
    np.testing.assert_array_equal(a.cube, b.cube)
