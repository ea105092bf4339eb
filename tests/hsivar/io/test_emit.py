"""EMIT L2A RFL products (:mod:`hsivar.io.emit`): small real NetCDF4 files written by ``write_demo`` in the product's
layout, read back through :func:`hsivar.io.read_cube` / :func:`hsivar.io.cube_shape`, the GLT round trip and the
malformed cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from hsivar.io import cube_shape, detect_format, output_name, read_cube, split_listing
from hsivar.io.emit import NODATA, orthorectify, read_glt, write_demo

C, H, W = 12, 20, 24
WAVELENGTHS = np.linspace(400.0, 2500.0, C)  # band 5 (1354.5 nm) lies in the 1325-1435 nm water window


@pytest.fixture(scope="module")
def truth() -> tuple[np.ndarray, np.ndarray]:
    """The reflectance written (C, H, W) and the (H, W) pixels flagged as missing."""
    rng = np.random.default_rng(7)
    cube = rng.uniform(0.0, 1.0, size=(C, H, W)).astype(np.float32)
    missing = np.zeros((H, W), bool)
    missing[2:4, 5:9] = True
    return cube, missing


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory, truth: tuple[np.ndarray, np.ndarray]) -> Path:
    """A demo product (read-only for the tests: copy it before changing it)."""
    cube, missing = truth
    return write_demo(tmp_path_factory.mktemp("emit"), cube, WAVELENGTHS, missing=missing)


@pytest.fixture
def copy(product: Path, tmp_path: Path) -> Path:
    """A private copy of the demo product, under the same name."""
    return Path(shutil.copy(product, tmp_path / product.name))


def test_name_and_detection(product: Path) -> None:
    assert product.name == "EMIT_L2A_RFL_001_20220903T163129_2224611_012.nc"
    assert detect_format(product) == "emit"
    assert detect_format("s3://bucket/emit/" + product.name) == "emit"
    assert output_name(product.name) == product.name[:-3] + ".tif"
    assert split_listing([str(product)]) == ([str(product)], [])
    assert cube_shape(product) == (C, H, W)


def test_values_and_metadata(product: Path, truth: tuple[np.ndarray, np.ndarray]) -> None:
    cube, missing = truth
    got, meta = read_cube(product)
    assert got.dtype == np.float32 and got.shape == (C, H, W)
    np.testing.assert_array_equal(got[:, ~missing], cube[:, ~missing])  # float32 as stored: exact
    assert (got[:, missing] == NODATA).all()  # flagged pixels are nodata in every band
    assert meta.nodata == -9999.0 and meta.dtype == "float32"
    assert meta.format == "emit" and meta.layout == "chw"
    np.testing.assert_allclose(meta.wavelengths, WAVELENGTHS, rtol=1e-6)  # stored float32
    np.testing.assert_allclose(meta.fwhm, np.gradient(WAVELENGTHS), rtol=1e-6)
    assert meta.crs is None and meta.transform is None  # the swath is not north-up
    assert meta.extras["scale"] == 1.0 and meta.extras["offset"] == 0.0
    product_facts = meta.extras["product"]
    assert product_facts["sensor"] == "EMIT" and product_facts["level"] == "L2A"
    assert product_facts["version"] == "001"
    assert product_facts["datetime"] == "2022-09-03T16:31:29Z"
    assert (product_facts["orbit"], product_facts["scene"]) == ("2224611", "012")


def test_bad_band_is_missing(product: Path) -> None:
    _, meta = read_cube(product)
    assert meta.missing is not None and meta.missing.shape == (C, H, W)
    np.testing.assert_array_equal(meta.missing.all(axis=(1, 2)), np.arange(C) == 5)
    assert not meta.missing[np.arange(C) != 5].any()
    with h5py.File(product, "r") as f:
        assert f["sensor_band_parameters/good_wavelengths"][()].tolist() == [1] * 5 + [0] + [1] * 6
    _, meta = read_cube(product, bands=[0, 1, 2])
    assert meta.missing is None


def test_window_and_bands(product: Path) -> None:
    full, _ = read_cube(product)
    block, meta = read_cube(product, window=(3, 5, 10, 12))
    np.testing.assert_array_equal(block, full[:, 3:13, 5:17])
    assert meta.transform is None and meta.extras["window"] == (3, 5, 10, 12)
    sub, meta = read_cube(product, bands=[7, 2, 5], window=(0, 1, 4, 6))
    np.testing.assert_array_equal(sub, full[[7, 2, 5], 0:4, 1:7])
    np.testing.assert_allclose(meta.wavelengths, WAVELENGTHS[[7, 2, 5]], rtol=1e-6)
    assert meta.missing is not None and meta.missing.all(axis=(1, 2)).tolist() == [False, False, True]


def test_ortho_grid_and_glt(product: Path) -> None:
    glt, crs, transform = read_glt(product)
    assert glt.dtype == np.int32 and glt.ndim == 3 and glt.shape[0] == 2
    assert CRS.from_wkt(crs) == CRS.from_epsg(4326)
    with h5py.File(product, "r") as f:
        gt = f.attrs["geotransform"]
        np.testing.assert_array_equal(glt[0], f["location/glt_x"][()])
        np.testing.assert_array_equal(glt[1], f["location/glt_y"][()])
        lon, lat = f["location/lon"][()], f["location/lat"][()]
    assert Affine(*transform) == Affine.from_gdal(*gt)
    facts = read_cube(product, bands=[0])[1].extras["product"]
    assert facts["crs"] == crs and tuple(facts["transform"]) == transform
    assert facts["glt_shape"] == list(glt.shape[1:])
    # Every filled ortho cell takes the swath pixel whose footprint holds its centre.
    valid = (glt[0] > 0) & (glt[1] > 0)
    assert valid.sum() > H * W // 2 and (~valid).any()  # a rotated swath leaves empty corners
    rows, cols = np.nonzero(valid)
    a, b, c, d, e, f = transform
    x, y = a * (cols + 0.5) + b * (rows + 0.5) + c, d * (cols + 0.5) + e * (rows + 0.5) + f
    px, py = glt[0][valid] - 1, glt[1][valid] - 1
    distance = np.hypot(x - lon[py, px], y - lat[py, px])
    assert distance.max() <= abs(transform[0]) * np.sqrt(0.5) + 1e-12


def test_orthorectify_round_trip(product: Path) -> None:
    cube, _ = read_cube(product)
    glt, _, _ = read_glt(product)
    ortho = orthorectify(cube, glt)
    assert ortho.shape == (C, *glt.shape[1:]) and ortho.dtype == np.float32
    valid = (glt[0] > 0) & (glt[1] > 0)
    np.testing.assert_array_equal(ortho[:, valid], cube[:, glt[1][valid] - 1, glt[0][valid] - 1])
    assert (ortho[:, ~valid] == NODATA).all()


def test_orthorectify_conventions() -> None:
    cube = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    glt = np.array([[[1, -4, 0], [-9999, 2, 4]], [[1, -3, 2], [1, 0, 3]]], dtype=np.int32)
    out = orthorectify(cube, glt, nodata=-1.0)
    np.testing.assert_array_equal(out[:, 0, 0], cube[:, 0, 0])
    np.testing.assert_array_equal(out[:, 0, 1], cube[:, 2, 3])  # negative: filled from |value|
    np.testing.assert_array_equal(out[:, 1, 2], cube[:, 2, 3])
    assert (out[:, 0, 2] == -1).all() and (out[:, 1, 0] == -1).all() and (out[:, 1, 1] == -1).all()
    with pytest.raises(ValueError, match="outside the 3 x 4 swath"):
        orthorectify(cube, np.full((2, 1, 1), 5, np.int32))
    with pytest.raises(ValueError, match="glt must be"):
        orthorectify(cube, glt[0])


def test_demo_index_and_few_bands(tmp_path: Path) -> None:
    cube = np.full((3, 4, 5), 0.25, np.float32)
    path = write_demo(tmp_path, cube, [500.0, 600.0, 700.0], index=3)
    assert path.name == "EMIT_L2A_RFL_001_20220903T163202_2224611_015.nc"
    got, meta = read_cube(path)
    np.testing.assert_array_equal(got, cube)
    assert meta.missing is None  # fewer than 8 bands: none marked bad
    assert meta.extras["product"]["datetime"] == "2022-09-03T16:32:02Z"
    assert not list(tmp_path.glob(".*"))  # no temporaries left behind


def test_remote_read(product: Path, memfs) -> None:
    uri = "memory://scenes/" + product.name
    memfs.pipe(uri, product.read_bytes())
    local, _ = read_cube(product, window=(1, 2, 5, 6))
    remote, meta = read_cube(uri, window=(1, 2, 5, 6))
    np.testing.assert_array_equal(remote, local)
    assert meta.extras["source"] == uri
    np.testing.assert_array_equal(read_glt(uri)[0], read_glt(product)[0])


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda f: f.__delitem__("reflectance"), "no 'reflectance' variable"),
        (lambda f: f.__delitem__("sensor_band_parameters/wavelengths"), "no 'sensor_band_parameters/wavelengths'"),
        (lambda f: f.__delitem__("sensor_band_parameters"), "no 'sensor_band_parameters/wavelengths'"),
    ],
)
def test_missing_variables(copy: Path, raises_naming, damage, match: str) -> None:
    with h5py.File(copy, "r+") as f:
        damage(f)
    with raises_naming(copy, match):
        read_cube(copy)
    with raises_naming(copy, match):
        cube_shape(copy)


@pytest.mark.parametrize("name", ["wavelengths", "fwhm", "good_wavelengths"])
def test_band_parameters_not_one_per_band(copy: Path, raises_naming, name: str) -> None:
    with h5py.File(copy, "r+") as f:
        group = f["sensor_band_parameters"]
        values = group[name][()]
        del group[name]
        group.create_dataset(name, data=values[:-1])
    with raises_naming(copy, rf"'sensor_band_parameters/{name}' has {C - 1} values .* for the {C} bands"):
        read_cube(copy)


def test_reflectance_not_3d(copy: Path, raises_naming) -> None:
    with h5py.File(copy, "r+") as f:
        del f["reflectance"]
        f.create_dataset("reflectance", data=np.zeros((H, W), np.float32))
    with raises_naming(copy, "not a cube"):
        read_cube(copy)


def test_truncated(copy: Path, raises_naming) -> None:
    data = copy.read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    with raises_naming(copy, "truncated file"):
        read_cube(copy)
    with raises_naming(copy, "truncated file"):
        read_glt(copy)


def test_not_hdf5(tmp_path: Path, raises_naming) -> None:
    path = tmp_path / "EMIT_L2A_RFL_001_20220903T163129_2224611_012.nc"
    path.write_bytes(b"CDF\x01" + b"\x00" * 60)  # a classic netCDF-3 header: not what EMIT ships
    with raises_naming(path, "not a NetCDF4"):
        read_cube(path)


@pytest.mark.parametrize("what", ["location/glt_x", "geotransform", "spatial_ref"])
def test_missing_glt(copy: Path, raises_naming, what: str) -> None:
    with h5py.File(copy, "r+") as f:
        if "/" in what:
            del f[what]
        else:
            del f.attrs[what]
    with raises_naming(copy, f"no geometry lookup table: {what} missing"):
        read_glt(copy)
    _, meta = read_cube(copy)  # the swath still reads; the missing ortho grid is reported
    assert "crs" not in meta.extras["product"] and what in meta.extras["warnings"][0]


def test_read_glt_no_file(tmp_path: Path, raises_naming) -> None:
    path = tmp_path / "EMIT_L2A_RFL_001_20220903T163129_2224611_099.nc"
    with raises_naming(path, "no such file"):
        read_glt(path)


def test_readable_as_netcdf(product: Path) -> None:
    """The demo is NetCDF4 as EMIT ships it: dimensions, groups and attributes as netCDF readers see them."""
    import xarray as xr
    with xr.open_dataset(product, engine="h5netcdf") as ds:
        assert ds["reflectance"].dims == ("downtrack", "crosstrack", "bands")
        assert ds.attrs["time_coverage_start"] == "2022-09-03T16:31:29+0000"
    with xr.open_dataset(product, engine="h5netcdf", group="location") as loc:
        assert loc["glt_x"].dims == ("ortho_y", "ortho_x") and loc["lat"].dims == ("downtrack", "crosstrack")
