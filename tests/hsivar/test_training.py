"""The three stages' losses train, and a tiny model overfits a handful of cubes end to end."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from hsivar.losses import ssim_per_band
from hsivar.metrics import psnr
from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset
from hsivar.tasks import DEFAULT_TASKS
from hsivar.training import fit, held_out_logs, stage3_task_weights, stage_loss, token_path_image, trainable_parameters

STAGES = preset("tiny").stages  # HSI-VAR's three


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_loss_backward_and_step(stage: str, smooth_cubes: Callable, noisy_batch: Callable,
                                           train_stage: Callable) -> None:
    """A finite loss, gradients on the stage's parameters, nothing else moved (the ``train_stage`` fixture)."""
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=8))
    _, logs = train_stage(model, stage, noisy_batch(smooth_cubes(2, 8, 32, seed=1), 30, seed=2))
    assert {"loss"} <= set(logs[-1])


def test_stage_parameter_sets_partition_the_model() -> None:
    """Each stage trains its own modules; the task classifier trains in the stages of dag.classifier_stages."""
    model = HSIVAR(preset("tiny", bands=8))
    ids = {s: set(map(id, trainable_parameters(model, s))) for s in STAGES}
    classifier = set(map(id, model.dag.classifier_parameters()))
    assert classifier and all(classifier <= ids[s] for s in STAGES)
    assert (ids["vqvae"] - classifier).isdisjoint(ids["var"])
    cfg = preset("tiny", bands=8)
    only_var = HSIVAR(cfg.model_copy(update={"dag": cfg.dag.model_copy(update={"classifier_stages": ("var",)})}))
    var_ids = {s: set(map(id, trainable_parameters(only_var, s))) for s in STAGES}
    var_classifier = set(map(id, only_var.dag.classifier_parameters()))
    assert var_classifier <= var_ids["var"] and var_classifier.isdisjoint(var_ids["vqvae"] | var_ids["decoder"])
    assert var_ids["vqvae"].isdisjoint(var_ids["var"])
    ssa = set(map(id, model.vqvae.decoder.ssa.parameters()))
    assert ssa <= ids["decoder"] and ssa.isdisjoint(ids["vqvae"])
    cond = set(map(id, model.cond.parameters()))
    assert cond <= ids["var"]


def test_stage3_restores_a_fraction_of_tiles_with_the_classifier_weights(smooth_cubes: Callable,
                                                                         noisy_batch: Callable) -> None:
    """loss.stage3_auto: per tile, the classifier's softmax (auto mode) or the true task; the token half
    (autoregress) plus refine, decode and output is restore."""
    cfg = preset("tiny", bands=8)
    torch.manual_seed(0)
    model = HSIVAR(cfg).eval()
    batch = noisy_batch(smooth_cubes(8, 8, 32, seed=1), 30, seed=2)
    with torch.no_grad():
        auto = torch.softmax(model.dag.classify(batch.lq), -1)
    gen = torch.Generator().manual_seed(0)
    w = stage3_task_weights(model, batch, gen)
    is_auto = torch.isclose(w, auto).all(-1)
    is_true = torch.isclose(w, batch.task_weights).all(-1)
    assert (is_auto | is_true).all() and is_auto.any() and is_true.any()
    for frac, expected in ((0.0, batch.task_weights), (1.0, auto)):
        m = HSIVAR(cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"stage3_auto": frac})})).eval()
        m.load_state_dict(model.state_dict())
        assert torch.allclose(stage3_task_weights(m, batch, gen), expected)
    with torch.no_grad():
        tokens = model.autoregress(batch.lq[:2], task="gaussian")
        full = model.restore(batch.lq[:2], task="gaussian")
        latent = tokens.latent + model.refine(tokens.hidden_last, tokens.idx[-1])
        cube = model.output(batch.lq[:2], model.vqvae.decode(latent, tokens.skips), tokens.task_weights).clamp(0, 1)
    assert tokens.cube.numel() == 0 and torch.equal(full.latent, latent) and torch.equal(full.cube, cube)
    # stage 3 also trains the classifier (dag.classifier_stages): its CE is in the loss
    trainable_parameters(model, "decoder")
    res = stage_loss(model.train(), "decoder", batch, gen)
    res.loss.backward()
    assert {"task_ce", "task_acc", "psnr"} <= set(res.logs)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.dag.head[-1].parameters())


def test_ssim_per_band_is_one_for_identical_and_drops_with_noise(smooth_cubes: Callable) -> None:
    x = smooth_cubes(2, 5, 32, seed=0)
    assert torch.allclose(ssim_per_band(x, x), torch.ones(2, 5), atol=1e-5)
    noise = 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert (ssim_per_band(x, (x + noise).clamp(0, 1)) < 0.9).all()


def test_ssim_stays_float32_under_bf16_autocast(smooth_cubes: Callable) -> None:
    """Its variances are differences of close local means; in bf16 they cancel to noise (stage 1 and 3 diverged
    under bf16 autocast on an H100 until SSIM ran in float32)."""
    x = smooth_cubes(2, 4, 32, seed=8)
    y = (x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)
    ref = ssim_per_band(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim_per_band(x, y)
        naive = F.conv2d(x * x, torch.full((4, 1, 11, 11), 1 / 121), groups=4)  # what autocast does to a conv
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-6)
    assert naive.dtype == torch.bfloat16  # so the guard in ssim_per_band is what keeps SSIM exact


@pytest.fixture(scope="module")
def overfit_run(smooth_cubes: Callable, noisy_batch: Callable) -> dict:
    """Train all three stages of a tiny 8-band model on 4 noisy cubes (about 50 s on 2 idle cores)."""
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=8))
    hq = smooth_cubes(4, 8, 32, seed=0)
    batch = noisy_batch(hq, 50, seed=1)
    s1 = list(fit(model, "vqvae", [batch], steps=60, lr=2e-3))
    s2 = list(fit(model, "var", [batch], steps=100, lr=3e-3))
    s3 = list(fit(model, "decoder", [batch], steps=5, lr=2e-4))
    return {"model": model, "batch": batch, "s1": s1, "s2": s2, "s3": s3}


def test_overfit_stage1_reconstructs(overfit_run: dict) -> None:
    s1 = overfit_run["s1"]
    assert s1[-1].logs["psnr"] > s1[0].logs["psnr"] + 8


def test_overfit_stage2_cross_entropy_falls_well_below_its_start(overfit_run: dict) -> None:
    s2 = overfit_run["s2"]
    # measured: CE 4.85 → 2.44, accuracy 0.02 → 0.26 (the codebook's ~50 live codes per scale make
    # memorising 4 cubes' 520 tokens a real task, not a lookup of one or two codes)
    assert s2[-1].logs["ce"] < 0.6 * s2[0].logs["ce"]
    assert s2[-1].logs["acc"] > s2[0].logs["acc"] + 0.15


def test_overfit_autoregressive_restoration_beats_the_degraded_input(overfit_run: dict) -> None:
    model, batch = overfit_run["model"], overfit_run["batch"]
    noisy = psnr(batch.lq, batch.hq)
    restored = model.restore(batch.lq, task="gaussian", estimate01=batch.x0).cube
    assert psnr(restored, batch.hq) > noisy + 3, (psnr(restored, batch.hq), noisy)
    # the refiner's continuous residual helps on top of the discrete tokens: it changes the output and raises
    # PSNR, with no tolerance for a loss (measured, seeded: 30.268 dB refined vs 30.255 dB without, noisy 14.85)
    unrefined = model.restore(batch.lq, task="gaussian", refine=False, estimate01=batch.x0).cube
    assert not torch.equal(restored, unrefined)
    assert psnr(restored, batch.hq) > psnr(unrefined, batch.hq), (psnr(restored, batch.hq), psnr(unrefined, batch.hq))
    # the task classifier learnt the (single) training task
    auto = model.restore(batch.lq, task="auto", estimate01=batch.x0)
    assert (auto.task_weights.argmax(-1) == DEFAULT_TASKS.index("gaussian")).all()


def test_a_held_out_check_is_the_stage_loss_in_eval_mode_and_the_token_path_image(overfit_run: dict) -> None:
    """held_out_logs: the stage's loss and logs without dropout or gradient, the same at every call, the model's mode
    kept; token_path_image: what the tokens alone reconstruct, (B, C, S, S) in [0, 1] — both far better after the
    overfit stages than for an untrained model, so they measure the stages' progress."""
    model, batch = overfit_run["model"], overfit_run["batch"]
    torch.manual_seed(0)
    fresh = HSIVAR(preset("tiny", bands=8))
    model.train()
    try:
        logs = held_out_logs(model, "var", batch)
        assert logs == held_out_logs(model, "var", batch) and model.training
        assert {"loss", "ce", "acc", "acc_s0", "refiner_l1"} <= set(logs)
        assert logs["ce"] < 0.6 * held_out_logs(fresh, "var", batch)["ce"]
        img = token_path_image(model, batch)
        assert model.training and img.shape == batch.hq.shape and 0 <= float(img.min()) <= float(img.max()) <= 1
        assert psnr(img, batch.hq) > psnr(token_path_image(fresh, batch), batch.hq) + 5
    finally:
        model.eval()


def test_stage1_reads_no_first_estimate(smooth_cubes: Callable, noisy_batch: Callable) -> None:
    """needs_estimate: only stages var and decoder read x0, so the data pipeline computes it only for them; stage 1
    of a first-estimate model gives the same loss without it."""
    from dataclasses import replace

    from hsivar.training import needs_estimate

    cfg = preset("tiny", bands=8)
    assert [needs_estimate(cfg, s) for s in STAGES] == [False, True, True]
    assert not needs_estimate(cfg.model_copy(update={"first_estimate": False}), "decoder")
    torch.manual_seed(0)
    model = HSIVAR(cfg).eval()
    batch = noisy_batch(smooth_cubes(4, 8, 32, seed=1), 30, seed=2)
    with torch.no_grad():
        with_x0 = stage_loss(model, "vqvae", batch, torch.Generator().manual_seed(0)).loss
        without = stage_loss(model, "vqvae", replace(batch, x0=None, kept=None), torch.Generator().manual_seed(0)).loss
    assert torch.equal(with_x0, without)


@pytest.mark.parametrize(("task", "level"), [("haze", 1.0), ("lowlight", 0.1)])
def test_a_training_example_of_haze_or_low_light_starts_from_the_estimate_restoration_computes(
        task: str, level: float) -> None:
    """The record tells what the cube does not show (haze, the exposure), as the user or ``Restorer.observe`` does at
    restoration; the example's first estimate is the classical one with those facts, and nothing counts as kept."""
    import numpy as np

    from hsivar.degrade import Observation, degrade_for_test
    from hsivar.estimate import first_estimate
    from hsivar.synth import make_cube
    from hsivar.training import example_estimate

    clean = make_cube(seed=2, size=32, bands=8)[0]
    lq, rec = degrade_for_test(clean, task, level)
    x0, kept = example_estimate(lq, rec)
    told = Observation.from_record(rec)
    expected = first_estimate(lq, Observation.detect(lq).replaced(haze=told.haze, exposure=told.exposure))
    np.testing.assert_array_equal(x0, expected)
    assert (told.haze, told.exposure) == ((True, None) if task == "haze" else (False, level))
    assert not kept.any() and psnr(torch.from_numpy(x0), torch.from_numpy(clean)) > psnr(
        torch.from_numpy(lq), torch.from_numpy(clean)) + 3
