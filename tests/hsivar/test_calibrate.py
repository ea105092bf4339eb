"""Calibration after training: the per-family trust in the learned correction and the calibrated uncertainty, fitted
through the restoration path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsivar.calibrate import CalibrationExample, calibrate
from hsivar.degrade import degrade_for_test
from hsivar.metrics import psnr, sam
from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset
from hsivar.restore import Restorer
from hsivar.synth import make_cube
from hsivar.tasks import DEFAULT_TASKS


def _model() -> HSIVAR:
    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=8)).eval()
    with torch.no_grad():
        model.fusion.ending.bias.fill_(0.03)  # a correction that only adds error
    return model


def test_the_chosen_trust_is_never_worse_than_the_first_estimate_in_psnr_or_sam() -> None:
    restorer = Restorer(_model())
    clean = make_cube(seed=2, size=32, bands=8)[0]
    examples = [CalibrationExample(degrade_for_test(clean, t, lvl)[0], clean, t, lvl)
                for t, lvl in (("inpaint", 0.8), ("sr", 2), ("gaussian", 50))]
    fit = calibrate(restorer, examples)
    assert fit.examples == {**dict.fromkeys(DEFAULT_TASKS, 0), "inpaint": 1, "sr": 1, "gaussian": 1}
    assert restorer.cfg.fusion.trust == fit.trust and set(fit.scores) == {"inpaint", "sr", "gaussian"}
    assert fit.trust[DEFAULT_TASKS.index("bandmiss")] == 1.0  # no example: left alone
    for ex in examples:
        i = DEFAULT_TASKS.index(ex.task)
        scored = {}
        for tau in (0.0, fit.trust[i]):
            restorer.model.set_trust(tuple(tau if j == i else 1.0 for j in range(len(DEFAULT_TASKS))))
            out = restorer.restore(ex.degraded, ex.task, value_range=(0.0, 1.0)).cube
            scored[tau] = (psnr(out, ex.clean), sam(out, ex.clean))
        (p0, a0), (p1, a1) = scored[0.0], scored[fit.trust[i]]
        assert p1 >= p0 - 1e-6 and a1 <= a0 + 1e-6  # restored again: as good as x0 in both metrics
        assert fit.scores[ex.task]["chosen"][0] >= fit.scores[ex.task]["first_estimate"][0]
    assert fit.trust[DEFAULT_TASKS.index("inpaint")] < 0.5  # a constant offset on the missing voxels is mostly dropped


def test_a_correction_is_trusted_only_when_its_gain_clears_the_spread() -> None:
    """The rule of _choose: a correction that helps every example is taken whole; one whose mean gain rests on a
    single example (the others slightly worse) is not, though its mean PSNR beats the first estimate's."""
    from hsivar.calibrate import _choose, _Restored

    rng = np.random.default_rng(0)
    clean = [rng.uniform(0.2, 0.8, (4, 16, 16)) for _ in range(4)]
    noise = [rng.normal(0, 0.05, c.shape) for c in clean]
    ex = [CalibrationExample(c.astype(np.float32), c.astype(np.float32), "gaussian", 30) for c in clean]
    steady = [_Restored(e, c + n, c + 0.5 * n) for e, c, n in zip(ex, clean, noise)]
    assert _choose(steady)[0] == 1.0
    lucky = [_Restored(e, c + n, c + (0.05 if i == 0 else 1.1) * n)
             for i, (e, c, n) in enumerate(zip(ex, clean, noise))]
    tau, scores = _choose(lucky)
    assert tau == 0.0 and scores["full"][0] > scores["first_estimate"][0]
    # one band scored (bandmiss with one band missing): SAM is 0 but where clipping bites, so its mean gain sits
    # exactly one standard error from zero (here 1e-17 above it in floating point); a clear PSNR gain is still taken
    wide = [rng.uniform(0.2, 0.8, (4, 30, 30)) for _ in range(4)]
    wide_noise = [rng.normal(0, 0.05, c.shape) for c in wide]
    single = [CalibrationExample(c.astype(np.float32), c.astype(np.float32), "bandmiss", 0.1, np.eye(4, dtype=bool)[1])
              for c in wide]
    one_band = [_Restored(e, c + n, c + 0.5 * n) for e, c, n in zip(single, wide, wide_noise)]
    one_band[0].r0[1, 0, 0] = -1.0  # clipped to 0: 90° on 1 of 900 pixels at τ = 0, 0° once corrected
    assert _choose(one_band)[0] == 1.0


def test_the_trust_stops_where_the_angle_is_least() -> None:
    """A correction that takes off a brightness error (no angle) but adds spectral noise of its own: the PSNR gains
    up to τ ≈ 0.9, the angle only up to τ ≈ 0.3 and is still better than the first estimate's up to τ ≈ 0.6. Past
    the angle's least more correction trades angle for PSNR, so τ stops there."""
    from hsivar.calibrate import TRUST_GRID, _choose, _Restored

    rng = np.random.default_rng(5)
    pairs = []
    for _ in range(6):
        c = rng.uniform(0.2, 0.8, (8, 24, 24))
        x0 = c * (1 + rng.normal(0, 0.1, (1, 24, 24))) + rng.normal(0, 0.01, c.shape)  # brightness per pixel
        full = c + rng.normal(0, 0.015, c.shape)  # spectral noise, 1.5 × the first estimate's
        ex = CalibrationExample(c.astype(np.float32), c.astype(np.float32), "inpaint", 0.8)
        pairs.append(_Restored(ex, x0, full))
    tau, scores = _choose(pairs)
    angle = [np.mean([sam(np.clip(r.r0 + t * (r.r1 - r.r0), 0, 1), r.ex.clean) for r in pairs]) for t in TRUST_GRID]
    least = TRUST_GRID[int(np.argmin(angle))]
    assert 0.2 <= least <= 0.4 and tau == least
    assert angle[TRUST_GRID.index(0.5)] < angle[0]  # still better than the first estimate's there: taken before
    assert scores["first_estimate"][0] < scores["chosen"][0] < scores["full"][0]


def test_bandmiss_examples_are_scored_on_their_band_mask() -> None:
    restorer = Restorer(_model())
    clean = make_cube(seed=3, size=32, bands=8)[0]
    degraded, rec = degrade_for_test(clean, "bandmiss", 0.3)
    fit = calibrate(restorer, [CalibrationExample(degraded, clean, "bandmiss", 0.3, rec.band_mask)])
    first = fit.scores["bandmiss"]["first_estimate"]
    assert np.isfinite(first[0])  # the kept bands alone would score an infinite PSNR


def test_a_model_without_a_first_estimate_gets_an_uncertainty_and_keeps_its_trust() -> None:
    cfg = preset("tiny", bands=8)
    torch.manual_seed(0)
    restorer = Restorer(HSIVAR(cfg.model_copy(update={"first_estimate": False})))
    clean = make_cube(seed=2, size=32, bands=8)[0]
    fit = calibrate(restorer, [CalibrationExample(degrade_for_test(clean, "gaussian", 50)[0], clean, "gaussian", 50)])
    assert fit.trust == (1.0,) * len(DEFAULT_TASKS) and fit.scores == {}
    assert restorer.calibrated and len(restorer.cfg.uncertainty.coefficients) == len(DEFAULT_TASKS)
    with pytest.raises(ValueError, match="no example"):
        calibrate(restorer, [])


def test_the_calibrated_error_bar_covers_held_out_entries_and_travels_with_the_published_model(tmp_path) -> None:
    from hsivar.publish import load_published, save_published

    restorer = Restorer(_model())
    cubes = [make_cube(seed=s, size=32, bands=8)[0] for s in (4, 5, 6)]
    examples = [CalibrationExample(degrade_for_test(c, t, lvl, index=k)[0], c, t, lvl)
                for k, c in enumerate(cubes[:2]) for t, lvl in (("gaussian", 50), ("inpaint", 0.8))]
    fit = calibrate(restorer, examples)
    assert len(fit.restored) == len(examples)  # the blind restorations validation scores instead of restoring
    for ex, blind in zip(examples, fit.restored):
        np.testing.assert_array_equal(blind, restorer.restore(ex.degraded, "auto", value_range=(0.0, 1.0)).cube)
    for t in ("gaussian", "inpaint"):
        assert 0.94 <= fit.coverage[t]["cover_2sigma"] <= 0.96  # the conformal scale, on the fit's own entries
    assert fit.examples["sr"] == 0 and fit.uncertainty[DEFAULT_TASKS.index("sr")] == tuple(
        max(fit.uncertainty[DEFAULT_TASKS.index(t)][j] for t in ("gaussian", "inpaint")) for j in range(5))
    held_out = cubes[2]
    degraded = degrade_for_test(held_out, "gaussian", 50, index=9)[0]
    out = restorer.restore(degraded, "gaussian", value_range=(0.0, 1.0))  # one greedy decoding
    assert out.std_calibrated and out.std is not None and out.std.shape == held_out.shape
    share = float(np.mean(np.abs(out.cube - held_out) <= 2 * out.std))
    assert 0.85 <= share <= 1.0, share
    from hsivar.deblur import sharp_width

    assert fit.sharp_width == restorer.cfg.sharp_width == sharp_width(ex.clean for ex in examples) > 0
    save_published(restorer.model, tmp_path / "m")
    loaded, _ = load_published(tmp_path / "m")
    assert loaded.cfg.uncertainty == restorer.cfg.uncertainty and loaded.cfg.sharp_width == fit.sharp_width
    again = Restorer(loaded).restore(degraded, "gaussian", value_range=(0.0, 1.0))
    np.testing.assert_array_equal(again.std, out.std)


def test_tau_zero_without_the_model_equals_the_model_at_tau_zero() -> None:
    from hsivar.calibrate import _restore
    from hsivar.degrade import observation_of_level

    restorer = Restorer(_model())
    clean = make_cube(seed=7, size=40, bands=8)[0]  # two tiles a side: blended
    n = len(DEFAULT_TASKS)
    for task, level in (("sr", 4), ("blur", 15), ("gaussian", 70)):
        degraded = degrade_for_test(clean, task, level)[0]
        got = _restore(restorer, CalibrationExample(degraded, clean, task, level)).r0
        restorer.model.set_trust((0.0,) * n)
        want = restorer.restore(degraded, task, value_range=(0.0, 1.0),
                                observation=observation_of_level(task, level, degraded.shape)).cube
        restorer.model.set_trust((1.0,) * n)
        np.testing.assert_allclose(got, want, atol=1e-5)  # x0 clamped to [0, 1] like every output, then consistent


def test_the_ratio_to_the_fit_blur_width_is_fitted_on_the_blur_examples_and_travels_with_the_model(tmp_path) -> None:
    """Calibration sets the ratio to the data fit's blur width that deconvolves its blur examples best
    (``cfg.fit_width_scale``), blind restoration multiplies the width it refines by it, and the published model
    carries it; without a blur example it stays 1."""
    from hsivar.deblur import blind_width, fit_width_scale
    from hsivar.publish import load_published, save_published

    restorer = Restorer(_model())
    cubes = [make_cube(seed=s, size=48, bands=8)[0] for s in (11, 12)]
    blurred = [degrade_for_test(c, "blur", k, index=i)[0] for i, (c, k) in enumerate(zip(cubes, (9, 15)))]
    examples = [CalibrationExample(y, c, "blur", k) for y, c, k in zip(blurred, cubes, (9, 15))]
    examples.append(CalibrationExample(degrade_for_test(cubes[0], "gaussian", 50)[0], cubes[0], "gaussian", 50))
    fit = calibrate(restorer, examples)
    expected = fit_width_scale(zip(blurred, cubes))
    assert expected is not None and fit.fit_width_scale == restorer.cfg.fit_width_scale == expected
    prep = restorer.observe(restorer.prepare(blurred[0], 8, value_range=(0.0, 1.0)), "blur")
    assert prep.observation.blur_sigma == pytest.approx(blind_width(blurred[0], fit_scale=expected))
    save_published(restorer.model, tmp_path / "m")
    assert load_published(tmp_path / "m")[0].cfg.fit_width_scale == expected
    other = Restorer(_model())
    assert calibrate(other, examples[2:]).fit_width_scale is None and other.cfg.fit_width_scale == 1.0
    other.model.set_fit_width_scale(0.97)  # fitted before, on data that told: a calibration that cannot tell keeps it
    assert calibrate(other, examples[2:]).fit_width_scale is None and other.cfg.fit_width_scale == 0.97
