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


def test_restoration_on_cuda_agrees_with_the_cpu(tmp_path: Path, smooth_cubes: Callable, noisy_batch: Callable) -> None:
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


def test_kv_cache_gives_the_same_tokens_on_cuda() -> None:
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=BANDS)).cuda().eval()
    lq = torch.rand(4, BANDS, 32, 32, device="cuda")
    cached = model.restore(lq, task="blur", kv_cache=True)
    full = model.restore(lq, task="blur", kv_cache=False)
    for a, b in zip(cached.idx, full.idx):
        assert (a == b).float().mean() > 0.99
