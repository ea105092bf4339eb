"""``hsivar calibrate``: a published model calibrated on validation cubes after the fact, published as a copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hsivar_platform.cli import build_app
from typer.testing import CliRunner

from hsivar.publish import CONFIG_FILE, WEIGHTS_FILE, load_published, save_published
from hsivar.synth import make_cube


def test_calibrate_publishes_a_calibrated_copy_with_the_same_weights(published_tiny: Path, tmp_path: Path) -> None:
    model, _ = load_published(published_tiny)
    model.set_uncertainty(None)  # as a model published before calibrated uncertainty existed
    model.set_sharp_width(None)  # and before the sharp blur width
    old = save_published(model, tmp_path / "old", metadata={"run": "r1"})
    val = tmp_path / "val"
    val.mkdir()
    for i in range(2):
        np.save(val / f"cube_{i}.npy", make_cube(seed=10 + i, size=32, bands=8)[0].astype(np.float32))
    out = tmp_path / "calibrated"
    r = CliRunner().invoke(build_app(), ["calibrate", "--model", str(old), "--data", str(val), "--out", str(out),
                                         "--levels", "middle"])
    assert r.exit_code == 0, r.output
    assert "12 example(s) from 2 cube(s)" in r.output and "within 2σ" in r.output
    assert (out / WEIGHTS_FILE).read_bytes() == (old / WEIGHTS_FILE).read_bytes()  # weights untouched
    calibrated, doc = load_published(out)
    unc = calibrated.cfg.uncertainty
    assert unc is not None and len(unc.coefficients) == len(calibrated.cfg.dag.tasks)
    assert calibrated.cfg.fusion.trust == model.cfg.fusion.trust  # kept without --fit-trust
    assert calibrated.cfg.sharp_width is not None  # what the sharp cubes read
    assert f"read when sharp: {calibrated.cfg.sharp_width:.2f} px" in r.output
    assert f"deconvolves best: {calibrated.cfg.fit_width_scale:.2f}" in r.output  # fitted on the blur examples
    assert doc["metadata"]["run"] == "r1" and doc["metadata"]["calibrated_from"] == str(old)
    assert doc["metadata"]["calibration_examples"] == 12
    assert json.loads((old / CONFIG_FILE).read_text())["model"]["uncertainty"] is None  # the input is unchanged

    same = CliRunner().invoke(build_app(), ["calibrate", "--model", str(old), "--data", str(val), "--out",
                                            str(old) + "/"])
    assert same.exit_code == 2 and "own location" in same.output
    none = CliRunner().invoke(build_app(), ["calibrate", "--model", str(old), "--data", str(tmp_path / "nothing"),
                                            "--out", str(tmp_path / "x")])
    assert none.exit_code == 2 and "nothing" in none.output

    refit = CliRunner().invoke(build_app(), ["calibrate", "--model", str(old), "--data", str(val), "--out",
                                             str(tmp_path / "refit"), "--levels", "middle", "--fit-trust"])
    assert refit.exit_code == 0, refit.output
    trust = load_published(tmp_path / "refit")[0].cfg.fusion.trust
    assert "trust in the learned correction per family" in refit.output and "trust" not in r.output
    for task, tau in zip(calibrated.cfg.dag.tasks, trust):
        assert f"{task} {tau:.2f}" in refit.output
