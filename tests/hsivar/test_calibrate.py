"""Per-family trust: the least-squares share of the learned correction, fitted through the restoration path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsivar.calibrate import CalibrationExample, calibrate_trust
from hsivar.degrade import degrade_for_test
from hsivar.metrics import psnr, sam
from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset
from hsivar.restore import Restorer
from hsivar.synth import make_cube
from hsivar.tasks import TASKS


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
    fit = calibrate_trust(restorer, examples)
    assert fit.examples == {**dict.fromkeys(TASKS, 0), "inpaint": 1, "sr": 1, "gaussian": 1}
    assert restorer.cfg.fusion.trust == fit.trust and set(fit.scores) == {"inpaint", "sr", "gaussian"}
    assert fit.trust[TASKS.index("bandmiss")] == 1.0  # no example: left alone
    for ex in examples:
        i = TASKS.index(ex.task)
        scored = {}
        for tau in (0.0, fit.trust[i]):
            restorer.model.set_trust(tuple(tau if j == i else 1.0 for j in range(len(TASKS))))
            out = restorer.restore(ex.degraded, ex.task, value_range=(0.0, 1.0)).cube
            scored[tau] = (psnr(out, ex.clean), sam(out, ex.clean))
        (p0, a0), (p1, a1) = scored[0.0], scored[fit.trust[i]]
        assert p1 >= p0 - 1e-6 and a1 <= a0 + 1e-6  # restored again: as good as x0 in both metrics
        assert fit.scores[ex.task]["chosen"][0] >= fit.scores[ex.task]["first_estimate"][0]
    assert fit.trust[TASKS.index("inpaint")] < 0.5  # a constant offset on the missing voxels is mostly dropped


def test_bandmiss_examples_are_scored_on_their_band_mask() -> None:
    restorer = Restorer(_model())
    clean = make_cube(seed=3, size=32, bands=8)[0]
    degraded, rec = degrade_for_test(clean, "bandmiss", 0.3)
    fit = calibrate_trust(restorer, [CalibrationExample(degraded, clean, "bandmiss", 0.3, rec.band_mask)])
    first = fit.scores["bandmiss"]["first_estimate"]
    assert np.isfinite(first[0])  # the kept bands alone would score an infinite PSNR


def test_calibration_needs_a_first_estimate_model() -> None:
    cfg = preset("tiny", bands=8)
    model = HSIVAR(cfg.model_copy(update={"first_estimate": False}))
    with pytest.raises(ValueError, match="first estimate"):
        calibrate_trust(Restorer(model), [])
