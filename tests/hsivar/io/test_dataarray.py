"""Cubes as xarray DataArrays (:mod:`hsivar.io.dataarray`): files written by ``write_cube`` come back with their
coords (bands, wavelengths, map coordinates) and attrs (crs, transform, nodata), a window / band subset with its
own coordinates, and back through ``to_cube`` to ``write_cube``; ``Restorer.restore`` takes and gives DataArrays."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import xarray as xr
from affine import Affine

from hsivar.io import CubeError, CubeMeta, write_cube
from hsivar.io.dataarray import DIMS, from_cube, open_dataarray, to_cube, with_cube
from hsivar.models.hsivar import HSIVAR
from hsivar.restore import Restorer

if TYPE_CHECKING:  # the fixture's type (pytest imports conftest itself)
    from .conftest import Reference


def _missing(shape: tuple[int, int, int]) -> np.ndarray:
    """(C, H, W) bool: band 3 a bad band, and a 2 x 4 block of pixels not observed in every band (what both a
    GeoTIFF, one mask for the good bands + bbl, and an HDF5 file can hold)."""
    missing = np.zeros(shape, bool)
    missing[3] = True
    missing[:, 2:4, 5:9] = True
    return missing


def _meta(ref: Reference) -> CubeMeta:
    """The reference metadata with FWHM (nm) and missing entries."""
    return dataclasses.replace(ref.meta(), fwhm=[10.0 + i for i in range(ref.shape[0])], missing=_missing(ref.shape))


def _check_reference(da: xr.DataArray, ref: Reference, path: Path, fmt: str) -> None:
    """``da`` is the reference cube as read from ``path``: values, coords and attrs."""
    meta = _meta(ref)
    assert da.dims == DIMS and da.dtype == np.float32 and da.name == "cube"
    np.testing.assert_array_equal(da.values, ref.cube)
    assert list(da.band.values) == ref.names
    np.testing.assert_array_equal(da.wavelength.values, ref.wavelengths)
    assert da.wavelength.dims == ("band",) and da.wavelength.attrs["units"] == "nm"
    np.testing.assert_array_equal(da.fwhm.values, meta.fwhm)
    # pixel centres of 10 m pixels whose top-left corner is (500000, 4000000)
    np.testing.assert_array_equal(da.x.values, 500_005.0 + 10.0 * np.arange(ref.shape[2]))
    np.testing.assert_array_equal(da.y.values, 3_999_995.0 - 10.0 * np.arange(ref.shape[1]))
    assert da.attrs["transform"] == tuple(ref.transform)[:6]
    assert da.attrs["crs"] == "EPSG:32633" and da.attrs["nodata"] == -1.0
    assert da.attrs["format"] == fmt and da.attrs["source"] == str(path) and da.attrs["dtype"] == "float32"
    assert da.missing.dims == DIMS and da.missing.dtype == bool
    np.testing.assert_array_equal(da.missing.values, meta.missing)


@pytest.mark.parametrize("name,fmt", [("cube.tif", "geotiff"), ("cube.h5", "hdf5")])
def test_round_trip_through_a_file(ref: Reference, tmp_path: Path, name: str, fmt: str) -> None:
    path = tmp_path / name
    write_cube(path, ref.cube, _meta(ref))
    da = open_dataarray(path)
    _check_reference(da, ref, path, fmt)

    cube, meta = to_cube(da)
    expected = _meta(ref)
    assert cube.shape == ref.shape and cube.dtype == np.float32
    for field in ("wavelengths", "band_names", "crs", "transform", "nodata"):
        assert getattr(meta, field) == getattr(expected, field), field
    assert meta.format == fmt and meta.dtype == "float32" and meta.extras["source"] == str(path)
    assert meta.fwhm == expected.fwhm
    np.testing.assert_array_equal(meta.missing, expected.missing)

    again = tmp_path / f"again{path.suffix}"
    write_cube(again, *to_cube(da))  # a DataArray written as it is
    back = open_dataarray(again)
    xr.testing.assert_identical(back, da.assign_attrs(source=str(again)))

    # every attribute and coordinate survives netCDF (no None attributes, no objects in attrs)
    netcdf = xr.open_dataarray(io.BytesIO(da.to_netcdf()))
    xr.testing.assert_equal(netcdf, da)
    assert to_cube(netcdf)[1] == meta


def test_window_and_band_subset_have_their_own_coordinates(ref: Reference, tmp_path: Path) -> None:
    path = tmp_path / "cube.tif"
    write_cube(path, ref.cube, _meta(ref))
    da = open_dataarray(path, window=(2, 3, 5, 6), bands=[5, 2])
    whole = open_dataarray(path)
    np.testing.assert_array_equal(da.values, ref.cube[[5, 2], 2:7, 3:9])
    assert list(da.band.values) == ["band 5", "band 2"]
    np.testing.assert_array_equal(da.wavelength.values, [600.0, 480.0])
    np.testing.assert_array_equal(da.x.values, 500_035.0 + 10.0 * np.arange(6))  # columns 3..8
    np.testing.assert_array_equal(da.y.values, 3_999_975.0 - 10.0 * np.arange(5))  # rows 2..6
    assert da.attrs["transform"] == (10.0, 0.0, 500_030.0, 0.0, -10.0, 3_999_980.0)
    np.testing.assert_array_equal(da.missing.values, _missing(ref.shape)[[5, 2], 2:7, 3:9])
    # the same block cut from the whole cube has the same labels, and to_cube places it the same
    xr.testing.assert_identical(whole.sel(band=["band 5", "band 2"]).isel(y=slice(2, 7), x=slice(3, 9)),
                                da.assign_attrs(transform=whole.attrs["transform"]))
    assert to_cube(whole.isel(y=slice(2, 7), x=slice(3, 9)))[1].transform == da.attrs["transform"]


def test_unnamed_bands_keep_their_source_indices(ref: Reference, tmp_path: Path) -> None:
    path = tmp_path / "cube.npy"
    write_cube(path, ref.cube)
    da = open_dataarray(path, window=(1, 2, 3, 4), bands=[6, 1, 4])
    assert list(da.band.values) == [6, 1, 4] and "wavelength" not in da.coords and "missing" not in da.coords
    np.testing.assert_array_equal(da.y.values, np.arange(3))  # no transform: pixel indices of the cube read
    np.testing.assert_array_equal(da.x.values, np.arange(4))
    assert "crs" not in da.attrs and "transform" not in da.attrs and da.attrs["format"] == "npy"
    cube, meta = to_cube(da)
    np.testing.assert_array_equal(cube, ref.cube[[6, 1, 4], 1:4, 2:6])
    assert meta.band_names is None and meta.transform is None and meta.missing is None


def test_slices_and_strides_are_written_at_their_place(ref: Reference, tmp_path: Path) -> None:
    da = from_cube(ref.cube, ref.meta())
    T = ref.transform
    # every other column: 20 m pixels centred on the columns kept, the first one on column 0's centre
    assert to_cube(da.isel(x=slice(None, None, 2)))[1].transform == (20.0, 0.0, 499_995.0, 0.0, -10.0, 4_000_000.0)
    flipped = da.isel(y=slice(None, None, -1))  # south-up: the transform flips with it (row 0 = the last row)
    assert to_cube(flipped)[1].transform == tuple(T @ Affine.translation(0, 12) @ Affine.scale(1, -1))[:6]
    assert to_cube(flipped)[1].transform == (10.0, 0.0, 500_000.0, 0.0, 10.0, 3_999_880.0)
    part = da.isel(y=slice(4, 9), x=slice(1, 15, 3))
    write_cube(tmp_path / "part.tif", *to_cube(part))
    back = open_dataarray(tmp_path / "part.tif")
    xr.testing.assert_equal(back, part)  # same values and map coordinates

    with pytest.raises(CubeError, match="'x' coordinates are not evenly spaced"):
        to_cube(da.isel(x=[0, 1, 5]))
    _, meta = to_cube(da.isel(x=[0, 1, 5]).drop_attrs())  # without a transform nothing is placed
    assert meta.transform is None


def test_a_rotated_transform_gives_pixel_indices(ref: Reference) -> None:
    rotated = tuple(ref.transform @ Affine.rotation(30))[:6]
    da = from_cube(ref.cube, dataclasses.replace(ref.meta(), transform=rotated))
    np.testing.assert_array_equal(da.x.values, np.arange(ref.shape[2]))
    np.testing.assert_array_equal(da.y.values, np.arange(ref.shape[1]))
    assert to_cube(da)[1].transform == rotated
    moved = to_cube(da.isel(y=slice(3, None), x=slice(2, None)))[1].transform
    assert moved == pytest.approx(tuple(Affine(*rotated) @ Affine.translation(2, 3))[:6])


def test_dims_in_any_order_and_wrong_dims(ref: Reference) -> None:
    da = from_cube(ref.cube, _meta(ref))
    cube, meta = to_cube(da.transpose("y", "x", "band"))
    np.testing.assert_array_equal(cube, ref.cube)
    np.testing.assert_array_equal(meta.missing, _missing(ref.shape))
    with pytest.raises(CubeError, match=r"dims \('channel', 'y', 'x'\); expected exactly 'band', 'y', 'x'"):
        to_cube(da.rename(band="channel"))
    with pytest.raises(CubeError, match=r"dims \('time', 'band', 'y', 'x'\)"):
        to_cube(da.expand_dims("time"))
    with pytest.raises(CubeError, match=r"dims \('band', 'y'\)"):
        to_cube(da.isel(x=0))
    with pytest.raises(CubeError, match="expected an xarray.DataArray, got Dataset; pick one variable"):
        to_cube(da.to_dataset())  # type: ignore[arg-type]
    with pytest.raises(CubeError, match=r"not a cube: 2-D array of shape \(8, 16\)"):
        from_cube(ref.cube[:, 0], ref.meta())
    with pytest.raises(CubeError, match="meta.wavelengths has 8 entries for a 2-band cube"):
        from_cube(ref.cube[:2], ref.meta())
    with pytest.raises(CubeError, match=r"values of shape \(8, 16\) for a DataArray of shape \(8, 12, 16\)"):
        with_cube(da, ref.cube[:, 0])


def test_restorer_takes_and_gives_dataarrays(tiny_model: HSIVAR) -> None:
    """A DataArray in any dims order: restored like its values with its nodata and missing entries, and given
    back with its dims, coords (less ``missing``) and attrs."""
    c, h, w = 8, 32, 40
    cube = np.random.default_rng(1).uniform(100.0, 900.0, (c, h, w)).astype(np.float32)
    missing = np.zeros(cube.shape, bool)
    missing[2] = True
    cube[2] = 1e6  # garbage in the bad band: never enters the normalisation
    cube[:, 0, :4] = -1.0  # nodata
    meta = CubeMeta(bands=c, wavelengths=[400.0 + 40 * i for i in range(c)], crs="EPSG:32633",
                    transform=(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0), nodata=-1.0, missing=missing)
    da = from_cube(cube, meta).transpose("y", "x", "band")
    restorer = Restorer(tiny_model)

    out = restorer.restore(da, "inpaint")
    expected = restorer.restore(cube, "inpaint", nodata=-1.0, missing=missing)
    assert isinstance(out.cube, xr.DataArray) and out.cube.dims == ("y", "x", "band")
    np.testing.assert_array_equal(out.cube.transpose(*DIMS).values, expected.cube)
    xr.testing.assert_identical(out.cube.coords.to_dataset(), da.drop_vars("missing").coords.to_dataset())
    assert out.cube.attrs == da.attrs and out.std is None
    assert (out.cube.values[0, :4] == -1.0).all()  # nodata written back as nodata
    _, restored_meta = to_cube(out.cube)
    assert restored_meta.missing is None and restored_meta.transform == meta.transform

    sampled = restorer.restore(da, "gaussian", samples=2)
    assert isinstance(sampled.std, xr.DataArray) and sampled.std.name == "std"
    assert sampled.std.dims == da.dims and sampled.std.shape == da.shape
    xr.testing.assert_identical(sampled.std.coords.to_dataset(), out.cube.coords.to_dataset())


def test_xarray_is_not_imported_by_hsivar() -> None:
    """hsivar.io and hsivar.restore do not import xarray (only hsivar.io.dataarray does)."""
    code = "import sys, hsivar.io, hsivar.restore; assert 'xarray' not in sys.modules, 'xarray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
