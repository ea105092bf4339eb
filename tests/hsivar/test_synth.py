"""Synthetic demo cubes: determinism, range, effective rank, sensor variants, make-demo CLI."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hsivar import synth as S
from hsivar.cli import build_app

APP = build_app()


def test_library_is_real_and_large() -> None:
    lib = S.reflectance_library()
    assert lib.reflectance.shape == (343, lib.wavelengths.size)
    assert set(lib.sources) == {"rawtoaces", "cie2017", "colorchecker", "cie_tcs", "nist_cqs"}
    assert lib.reflectance.min() >= 0 and 0.5 < lib.reflectance.max() < 2
    assert lib.wavelengths[0] == 380 and (lib.measured_max_nm >= 780).all()


def test_determinism_shape_and_range() -> None:
    a = S.synthesize(3, 24)
    b = S.synthesize(3, 24)
    c = S.synthesize(4, 24)
    assert a.cube.tobytes() == b.cube.tobytes() and a.info() == b.info()
    assert not np.array_equal(a.cube, c.cube)
    assert a.cube.shape == (31, 24, 24) and a.cube.dtype == np.float32
    assert a.cube.min() == 0.0 and a.cube.max() == 1.0
    np.testing.assert_allclose(a.wavelengths, np.arange(400, 701, 10))
    assert a.value_max > a.value_min >= 0
    assert a.image in S.IMAGES and len(a.endmembers) == 32
    json.dumps(a.info())
    cube, wl = S.make_cube(3, 24)
    np.testing.assert_array_equal(cube, a.cube)
    np.testing.assert_array_equal(wl, a.wavelengths)
    assert S.make_cube((1, 2, 3), (12, 20), 8)[0].shape == (8, 12, 20)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_effective_rank_lower_bound(seed: int) -> None:
    cube = S.synthesize(seed, 32).cube
    # Measured over 40 seeds at 32 px: 5-7 singular values hold 99.9 % of the energy.
    assert S.effective_rank(cube, 0.999) >= 5
    assert S.entropy_effective_rank(cube) > 2.5
    assert S.effective_rank(cube, 0.99) < S.effective_rank(cube, 0.999) <= S.effective_rank(cube, 0.9999)


def test_effective_rank_definitions() -> None:
    r = np.random.default_rng(0)
    rank1 = np.einsum("c,hw->chw", r.random(31), r.random((16, 16)))
    assert S.effective_rank(rank1) == 1 and S.entropy_effective_rank(rank1) == pytest.approx(1.0, abs=1e-3)
    rank3 = np.einsum("ck,khw->chw", r.random((31, 3)), r.random((3, 16, 16)))
    assert S.effective_rank(rank3, 0.999999) == 3
    assert S.effective_rank(np.zeros((4, 3, 3))) == 0


def test_sensor_variants() -> None:
    ls = S.synthesize(0, 16, sensor="landsat8")
    assert ls.cube.shape == (6, 16, 16) and ls.sensor == "landsat8" and ls.response == "box"
    np.testing.assert_allclose(ls.wavelengths, S.SENSORS["landsat8"].centres_nm)
    assert ls.band_names[-1] == "B5_nir" and ls.extrapolated_bands == (5,)  # NIR past 780 nm
    s2 = S.synthesize(0, 16, sensor="sentinel2")
    assert s2.cube.shape == (6, 16, 16) and s2.extrapolated_bands == ()
    assert s2.cube.min() == 0 and s2.cube.max() == 1
    custom = S.synthesize(0, 16, wavelengths=[450, 550, 650], fwhm=20)
    assert custom.cube.shape == (3, 16, 16) and custom.response == "gaussian"
    with pytest.raises(ValueError, match="1600 nm"):
        S.synthesize(0, 16, wavelengths=[550, 1600])
    with pytest.raises(ValueError, match="unknown sensor"):
        S.synthesize(0, 16, sensor="modis")
    with pytest.raises(ValueError, match="at most one"):
        S.synthesize(0, 16, bands=6, sensor="landsat8")


def test_single_band_is_panchromatic() -> None:
    s = S.synthesize(0, 16, bands=1)
    assert s.cube.shape == (1, 16, 16) and s.response == "box" and s.fwhm[0] == 300


def test_make_demo_cli_npy(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["data", "make-demo", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "16"]
    res = CliRunner().invoke(APP, args)
    assert res.exit_code == 0, res.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert files == ["test/cube_0000.npy", "train/cube_0000.npy", "train/cube_0001.npy", "val/cube_0000.npy"]
    cube = np.load(out / "train" / "cube_0001.npy")
    assert cube.shape == (31, 16, 16) and cube.dtype == np.float32 and cube.min() >= 0 and cube.max() <= 1
    # Cube i of split s uses seed (seed, s, i): reproducible one by one.
    np.testing.assert_array_equal(cube, S.synthesize((0, 0, 1), 16).cube)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 2, "val": 1, "test": 1} and len(manifest["cubes"]) == 4
    assert manifest["cubes"][0]["wavelengths"][0] == 400
    assert "4 cube(s)" in res.output
    # All cubes differ (no split shares a seed).
    cubes = [np.load(out / f) for f in files]
    assert len({c.tobytes() for c in cubes}) == 4


def test_make_demo_cli_sensor_h5_and_errors(tmp_path: Path) -> None:
    from hsivar.io import read_cube

    out = tmp_path / "ls8"
    args = ["data", "make-demo", str(out), "--sensor", "landsat8", "--n-train", "1", "--n-val", "0", "--n-test", "0"]
    res = CliRunner().invoke(APP, [*args, "--size", "16", "--format", "h5", "--seed", "5"])
    assert res.exit_code == 0, res.output
    cube, meta = read_cube(str(out / "train" / "cube_0000.h5"))
    assert cube.shape == (6, 16, 16)
    np.testing.assert_allclose(meta.wavelengths, S.SENSORS["landsat8"].centres_nm)
    np.testing.assert_array_equal(cube, S.synthesize((5, 0, 0), 16, sensor="landsat8").cube)
    bad = CliRunner().invoke(APP, ["data", "make-demo", str(out), "--bands", "8", "--sensor", "landsat8"])
    assert bad.exit_code != 0 and "either --bands or --sensor" in bad.output
    bad = CliRunner().invoke(APP, ["data", "make-demo", str(out), "--format", "gif"])
    assert bad.exit_code != 0 and "unknown format" in bad.output
