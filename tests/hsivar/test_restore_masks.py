"""The Restorer honours what a file says was not observed (ENVI bbl and data ignore value, a GeoTIFF internal mask,
HDF5 / .mat mask datasets): read from real files, those entries are synthesised, the observed ones come back bit
for bit; masks of the wrong shape or that leave nothing observed are clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import scipy.io
import torch

from hsivar.io import read_cube
from hsivar.models.hsivar import HSIVAR
from hsivar.restore import NothingToRestore, RestoreInputError, Restorer

GARBAGE = 5000.0  # what unobserved entries hold in the files: far outside the data's range


@pytest.fixture
def tiny_model(head_on_model: HSIVAR) -> HSIVAR:
    """The kept entries must be put back by the restoration path, not survive because an untrained head returns
    x0 (which keeps them): the output head is switched on (conftest)."""
    return head_on_model


@pytest.fixture
def scene(smooth_cubes: Callable[..., torch.Tensor]) -> np.ndarray:
    """A smooth (8, 40, 40) float32 cube in [0, 1000): noise-free, so every observed entry is exact."""
    return (smooth_cubes(1, 8, 40, 7)[0].numpy() * 1000).astype(np.float32)


def _observed_pixels(h: int, w: int) -> np.ndarray:
    """(H, W) uint8, nonzero = observed: a 6 x 9 hole and a dead column."""
    observed = np.ones((h, w), np.uint8)
    observed[10:16, 5:14] = 0
    observed[:, 30] = 0
    return observed


def _write_envi(path: Path, cube: np.ndarray) -> Path:
    """Bands 2 and 5 flagged bad (bbl) and holding garbage, a corner at the data ignore value -9999; → header."""
    data = cube.copy()
    data[[2, 5]] = GARBAGE
    data[:, :3, :3] = -9999.0
    data.astype("<f4").tofile(path)
    hdr = path.with_suffix(".hdr")
    c, h, w = cube.shape
    hdr.write_text(f"ENVI\nsamples = {w}\nlines = {h}\nbands = {c}\nheader offset = 0\nfile type = ENVI Standard\n"
                   "data type = 4\ninterleave = bsq\nbyte order = 0\ndata ignore value = -9999\n"
                   "bbl = {1, 1, 0, 1, 1, 0, 1, 1}\n")
    return hdr


def _write_geotiff(path: Path, cube: np.ndarray) -> Path:
    c, h, w = cube.shape
    observed = _observed_pixels(h, w)
    data = np.where(observed[None] == 0, np.float32(GARBAGE), cube)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=c, dtype="float32", crs="EPSG:32633",
        transform=rasterio.Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0),
    ) as ds:  # fmt: skip
        ds.write(data)
        ds.write_mask(observed * 255)
    return path


def _write_hdf5(path: Path, cube: np.ndarray) -> Path:
    entries = np.random.default_rng(3).random(cube.shape) > 0.25  # inpainting: 25 % of the entries removed
    with h5py.File(path, "w") as f:
        f.create_dataset("cube", data=np.where(entries, cube, np.float32(np.nan)))  # NaN where not observed
        f.create_dataset("mask", data=entries.astype(np.uint8))
    return path


def _write_mat(path: Path, cube: np.ndarray) -> Path:
    c, h, w = cube.shape
    observed = _observed_pixels(h, w)
    data = np.where(observed[None] == 0, np.float32(GARBAGE), cube)
    scipy.io.savemat(path, {"hsi": data.transpose(1, 2, 0), "mask": observed})
    return path


@pytest.mark.parametrize("writer,name", [(_write_envi, "scene.img"), (_write_geotiff, "scene.tif"),
                                         (_write_hdf5, "scene.h5"), (_write_mat, "scene.mat")])
def test_observed_entries_of_a_masked_file_are_bit_exact(tiny_model: HSIVAR, scene: np.ndarray, tmp_path: Path,
                                                         writer: Callable[[Path, np.ndarray], Path],
                                                         name: str) -> None:
    path = writer(tmp_path / name, scene)
    cube, meta = read_cube(path)
    assert meta.missing is not None and meta.missing.any() and not meta.missing.all()
    restorer = Restorer(tiny_model)
    out = restorer.restore(cube, "inpaint", nodata=meta.nodata, missing=meta.missing)
    nodata = cube == meta.nodata if meta.nodata is not None else np.zeros(cube.shape, bool)
    observed = ~meta.missing & ~nodata
    assert out.kept is not None
    np.testing.assert_array_equal(out.kept, observed)  # nothing else was detected as unobserved
    np.testing.assert_array_equal(out.cube[observed], scene[observed])  # bit for bit
    synthesised = meta.missing & ~nodata
    assert np.isfinite(out.cube).all() and not (out.cube[synthesised] == GARBAGE).any()
    assert (out.cube[nodata] == meta.nodata).all()
    assert out.observation is not None and out.observation["missing_fraction"] > 0
    prep = restorer.prepare(cube, 8, nodata=meta.nodata, missing=meta.missing)
    assert prep.lo == float(scene[observed].min())  # the garbage never entered the range
    assert prep.lo + prep.scale == pytest.approx(float(scene[observed].max()))


def test_bad_masks_are_clear_errors(tiny_model: HSIVAR, scene: np.ndarray) -> None:
    restorer = Restorer(tiny_model)
    with pytest.raises(RestoreInputError, match=r"mask of unobserved entries has shape \(8, 40\); the cube has "
                                                r"shape \(8, 40, 40\)"):
        restorer.restore(scene, missing=np.zeros((8, 40), bool))
    with pytest.raises(NothingToRestore, match="leaves no entry observed.*nothing to restore"):
        restorer.restore(scene, missing=np.ones(scene.shape, bool))
    nan = scene.copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(RestoreInputError, match="1 non-finite"):  # only unobserved entries may hold NaN
        restorer.restore(nan, missing=np.zeros(scene.shape, bool))
