"""Entries a file marks as not observed (CubeMeta.missing): ENVI bbl, GeoTIFF internal masks and bbl tags, HDF5 /
.mat mask datasets and bad band lists — read from real files written by the formats' own libraries, written back
by write_cube, and clear errors for masks of the wrong shape."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import scipy.io

from hsivar.io import CubeMeta, band_missing, cube_shape, read_cube, write_cube


def _spatial(shape: tuple[int, int, int]) -> np.ndarray:
    """An (H, W) mask, nonzero = observed: a 3 x 5 hole and a dead column."""
    _, h, w = shape
    observed = np.ones((h, w), np.uint8)
    observed[2:5, 3:8] = 0
    observed[:, w - 2] = 0
    return observed


def test_envi_bbl_and_data_ignore_value(ref, tmp_path: Path, raises_naming) -> None:
    cube = ref.cube.copy()
    cube[0, 0, :3] = -1.0  # nodata voxels: meta.nodata, not meta.missing
    cube[6] = np.nan  # a bad band may hold anything
    hdr = ref.write_envi(tmp_path / "scene.img", cube, "bil",
                         "data ignore value = -1\nbbl = {1, 1, 0, 1, 1, 1, 0, 1}\n")
    values, meta = read_cube(hdr)  # NaN in a bad band is not refused
    assert meta.nodata == -1.0
    expected = np.zeros(ref.shape, bool)
    expected[[2, 6]] = True
    np.testing.assert_array_equal(meta.missing, expected)
    np.testing.assert_array_equal(values[:6], cube[:6])

    _, sub = read_cube(hdr, window=(1, 2, 4, 5), bands=[6, 0, 2])
    assert sub.missing.shape == (3, 4, 5) and sub.missing[[0, 2]].all() and not sub.missing[1].any()
    _, clean = read_cube(hdr, bands=[0, 1])
    assert clean.missing is None

    bad = ref.write_envi(tmp_path / "short.img", ref.cube, "bsq", "bbl = {1, 0, 1}\n")
    with raises_naming(bad, r"bad band list \(bbl\) has 3 entries for 8 bands"):
        read_cube(bad)


def test_geotiff_internal_mask_and_bbl_tag(ref, tmp_path: Path) -> None:
    path = tmp_path / "masked.tif"
    observed = _spatial(ref.shape)
    c, h, w = ref.shape
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=c, dtype="float32", nodata=-1.0,
        crs="EPSG:32633", transform=ref.transform,
    ) as ds:  # fmt: skip
        ds.write(ref.cube)
        ds.write_mask(observed * 255)
        ds.update_tags(bbl="1,1,1,0,1,1,1,1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masked.tif"]  # internal: no .msk sidecar
    cube, meta = read_cube(path)
    np.testing.assert_array_equal(cube, ref.cube)
    expected = np.broadcast_to(observed == 0, ref.shape).copy()
    expected[3] = True
    np.testing.assert_array_equal(meta.missing, expected)
    assert meta.nodata == -1.0 and meta.crs == "EPSG:32633"

    _, sub = read_cube(path, window=(2, 3, 4, 6), bands=[3, 1])
    np.testing.assert_array_equal(sub.missing, expected[[3, 1], 2:6, 3:9])

    plain = tmp_path / "plain.tif"
    ref.write_geotiff(plain, ref.cube, nodata=-1.0, crs="EPSG:32633", transform=ref.transform)
    assert read_cube(plain)[1].missing is None  # a nodata mask only: nodata, not missing


def test_hdf5_mask_dataset_attribute_and_bbl(ref, tmp_path: Path, raises_naming) -> None:
    observed = _spatial(ref.shape)
    per_pixel = tmp_path / "pixels.h5"
    with h5py.File(per_pixel, "w") as f:
        f.create_dataset("data/cube", data=ref.cube)
        f.create_dataset("data/mask", data=observed)  # (H, W): every band
        f["data/cube"].attrs["bbl"] = np.array([1, 0, 1, 1, 1, 1, 1, 1], np.uint8)
    cube, meta = read_cube(per_pixel)
    np.testing.assert_array_equal(cube, ref.cube)
    expected = np.broadcast_to(observed == 0, ref.shape).copy()
    expected[1] = True
    np.testing.assert_array_equal(meta.missing, expected)

    per_entry = tmp_path / "entries.h5"
    entries = np.random.default_rng(1).random(ref.shape) > 0.2  # nonzero = observed
    with h5py.File(per_entry, "w") as f:
        f.create_dataset("cube", data=ref.cube)
        f.create_dataset("quality/valid", data=entries.astype(np.uint8))  # 3-D, never taken for the cube
        f["cube"].attrs["mask"] = "/quality/valid"
        f.create_dataset("bbl", data=np.ones(8))
    _, meta = read_cube(per_entry)
    np.testing.assert_array_equal(meta.missing, ~entries)
    _, sub = read_cube(per_entry, window=(3, 1, 5, 7), bands=[5, 2])
    np.testing.assert_array_equal(sub.missing, ~entries[[5, 2], 3:8, 1:8])

    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f.create_dataset("cube", data=ref.cube)
        f.create_dataset("mask", data=np.ones((12, 15), np.uint8))
    for read in (read_cube, cube_shape):
        with raises_naming(wrong, r"mask 'mask' has shape \(12, 15\); expected the cube's shape \(8, 12, 16\) "
                                  r"or \(12, 16\)"):
            read(wrong)


def test_mat_v5_and_v73_mask_variables(ref, tmp_path: Path, raises_naming) -> None:
    hwc = ref.cube.transpose(1, 2, 0)
    entries = np.random.default_rng(2).random(ref.shape) > 0.3
    v5 = tmp_path / "v5.mat"
    scipy.io.savemat(v5, {"hsi": hwc, "mask": entries.transpose(1, 2, 0), "bbl": np.array([[1, 1, 1, 1, 1, 0, 1, 1]])})
    cube, meta = read_cube(v5)
    np.testing.assert_array_equal(cube, ref.cube)
    expected = ~entries
    expected[5] = True
    np.testing.assert_array_equal(meta.missing, expected)
    assert meta.extras["dataset"] == "hsi"  # the 3-D mask is not taken for the cube

    v73 = tmp_path / "v73.mat"
    observed = _spatial(ref.shape).astype(np.float64)
    ref.write_mat73(v73, hsi=hwc, mask=observed)  # MATLAB's H x W, stored reversed
    cube, meta = read_cube(v73)
    np.testing.assert_array_equal(cube, ref.cube)
    np.testing.assert_array_equal(meta.missing, np.broadcast_to(observed == 0, ref.shape))

    wrong = tmp_path / "wrong.mat"
    scipy.io.savemat(wrong, {"hsi": hwc, "mask": np.ones((16, 12))})
    with raises_naming(wrong, r"mask 'mask' has shape \(16, 12\)"):
        read_cube(wrong)


@pytest.mark.parametrize("name", ["c.h5", "c.mat", "c.tif", "c.hdr"])
def test_write_cube_stores_missing_entries(ref, tmp_path: Path, name: str, raises_naming) -> None:
    bands_only = band_missing([1, 6], ref.shape)
    spatial = bands_only | (_spatial(ref.shape) == 0)[None]
    for missing in (bands_only, spatial):
        path = tmp_path / name
        if name == "c.hdr" and missing is spatial:
            with raises_naming(path, "ENVI holds whole bad bands only"):
                write_cube(path, ref.cube, CubeMeta(bands=8, missing=missing))
            continue
        write_cube(path, ref.cube, CubeMeta(bands=8, missing=missing))
        cube, meta = read_cube(path)
        np.testing.assert_array_equal(cube, ref.cube)
        np.testing.assert_array_equal(meta.missing, missing)
    differing = bands_only.copy()
    differing[0, 0, 0] = True
    if name == "c.tif":
        with raises_naming(tmp_path / "d.tif", "one mask for all its bands"):
            write_cube(tmp_path / "d.tif", ref.cube, CubeMeta(bands=8, missing=differing))
    with raises_naming(tmp_path / name, r"meta.missing has shape \(8, 12\)"):
        write_cube(tmp_path / name, ref.cube, CubeMeta(bands=8, missing=np.zeros((8, 12), bool)))


def test_band_missing_checks_indices() -> None:
    assert band_missing([0, 2], (3, 2, 2))[[0, 2]].all()
    with pytest.raises(ValueError, match=r"bad band indices \[3\] out of range for 3 bands"):
        band_missing([3], (3, 2, 2))
