"""read_cube / cube_shape on every format: values, metadata, the layout rule, windows and band subsets."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from affine import Affine

from hsivar.io import CubeError, cube_shape, read_cube

# ------------------------------------------------------------------------------------------------
# Reading every format


def test_read_every_format(ref, source: tuple[str, Path]) -> None:
    kind, path = source
    cube, meta = read_cube(path)
    assert cube.dtype == np.float32 and cube.shape == ref.shape
    np.testing.assert_array_equal(cube, ref.cube)
    assert meta.bands == ref.shape[0]
    assert meta.format == {"mat73": "mat"}.get(kind, kind.split("_")[0])
    assert meta.value_range == (float(ref.cube.min()), float(ref.cube.max()))
    assert meta.extras["source"] == str(path)
    if kind == "npy":
        assert meta.wavelengths is None
    else:
        np.testing.assert_allclose(meta.wavelengths, ref.wavelengths)
    if kind in ("geotiff",) or kind.startswith("envi"):
        assert meta.band_names == ref.names
        assert meta.transform == pytest.approx(tuple(ref.transform)[:6])
        assert meta.crs == "EPSG:32633"  # ENVI: from the UTM map info
    if kind in ("mat", "mat73"):
        assert meta.layout == "hwc" and meta.extras["dataset"] == "hsi"
        assert meta.extras["mat_version"] == ("7.3" if kind == "mat73" else "5")
    assert cube_shape(path) == ref.shape


def test_read_source_dtype_is_recorded(ref, tmp_path: Path) -> None:
    values = (ref.cube * 10).astype(np.uint16)
    path = tmp_path / "u16.tif"
    ref.write_geotiff(path, values, crs="EPSG:4326", transform=Affine(0.1, 0, 10, 0, -0.1, 50))
    cube, meta = read_cube(path)
    assert cube.dtype == np.float32 and meta.dtype == "uint16"
    np.testing.assert_array_equal(cube, values.astype(np.float32))
    assert meta.value_range == (float(values.min()), float(values.max()))


def test_hdf5_by_name_and_ambiguity(ref, tmp_path: Path) -> None:
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a"] = ref.cube
        f["b/c"] = ref.cube[::-1]
    with pytest.raises(CubeError, match="several 3-D datasets") as err:
        read_cube(path)
    assert str(path) in str(err.value) and "a (8, 12, 16)" in str(err.value) and "b/c" in str(err.value)
    cube, meta = read_cube(path, dataset="/b/c")
    np.testing.assert_array_equal(cube, ref.cube[::-1])
    assert meta.extras["dataset"] == "b/c"


def test_npz_by_key(ref, tmp_path: Path) -> None:
    path = tmp_path / "two.npz"
    np.savez(path, first=ref.cube, second=ref.cube + 1)
    with pytest.raises(CubeError, match="pass dataset="):
        read_cube(path)
    cube, _ = read_cube(path, dataset="second")
    np.testing.assert_array_equal(cube, ref.cube + 1)
    with pytest.raises(CubeError, match="no array named 'third'"):
        read_cube(path, dataset="third")


def test_mat73_axes_are_reversed_on_disk(ref, tmp_path: Path) -> None:
    c, h, w = ref.shape
    path = ref.make("mat73", tmp_path)
    with h5py.File(path, "r") as f:
        assert f["hsi"].shape == (c, w, h)  # MATLAB's (H, W, C), reversed
    cube, meta = read_cube(path, window=(1, 2, 5, 6), bands=[6, 0])
    np.testing.assert_array_equal(cube, ref.cube[[6, 0], 1:6, 2:8])
    assert meta.wavelengths == [ref.wavelengths[6], ref.wavelengths[0]]


# ------------------------------------------------------------------------------------------------
# Layout rule


def test_layout_smallest_axis_is_bands(ref, tmp_path: Path) -> None:
    path = tmp_path / "hwc.npy"
    np.save(path, ref.cube.transpose(1, 2, 0))
    cube, meta = read_cube(path)
    np.testing.assert_array_equal(cube, ref.cube)
    assert meta.layout == "hwc"
    assert cube_shape(path) == ref.shape


def test_layout_ambiguous_uses_format_convention_and_override(tmp_path: Path) -> None:
    arr = np.arange(16 * 12 * 16, dtype=np.float32).reshape(16, 12, 16)  # no unique smallest end axis
    np.save(tmp_path / "a.npy", arr)
    scipy.io.savemat(tmp_path / "a.mat", {"x": arr})
    assert read_cube(tmp_path / "a.npy")[1].layout == "chw"
    assert read_cube(tmp_path / "a.mat")[1].layout == "hwc"
    cube, meta = read_cube(tmp_path / "a.npy", layout="hwc")
    assert cube.shape == (16, 16, 12) and meta.layout == "hwc"
    np.testing.assert_array_equal(cube, arr.transpose(2, 0, 1))
    assert cube_shape(tmp_path / "a.mat", layout="chw") == (16, 12, 16)


def test_layout_from_wavelength_vector(tmp_path: Path) -> None:
    # 31 bands on a 6 x 10 patch: the smallest-axis rule alone would take the 6 rows for bands.
    arr = np.random.default_rng(1).random((6, 10, 31)).astype(np.float32)
    path = tmp_path / "patch.npz"
    np.savez(path, cube=arr, wavelengths=np.linspace(400, 700, 31))
    cube, meta = read_cube(path)
    assert cube.shape == (31, 6, 10) and meta.layout == "hwc"


def test_layout_recorded_in_hdf5_attribute(ref, tmp_path: Path) -> None:
    path = tmp_path / "attr.h5"
    with h5py.File(path, "w") as f:
        f["cube"] = ref.cube.transpose(1, 2, 0)
        f["cube"].attrs["layout"] = "hwc"
    np.testing.assert_array_equal(read_cube(path)[0], ref.cube)


# ------------------------------------------------------------------------------------------------
# Windows and band subsets


def test_window_and_bands_equal_slices(ref, source: tuple[str, Path]) -> None:
    _, path = source
    full, full_meta = read_cube(path)
    window = (2, 3, 5, 7)
    part, meta = read_cube(path, window=window)
    np.testing.assert_array_equal(part, full[:, 2:7, 3:10])
    assert meta.extras["window"] == window and meta.extras["full_shape"] == ref.shape
    picked, meta = read_cube(path, bands=[5, 1, 3, 1])
    np.testing.assert_array_equal(picked, full[[5, 1, 3, 1]])
    assert meta.bands == 4
    if full_meta.wavelengths is not None:
        assert meta.wavelengths == [full_meta.wavelengths[i] for i in (5, 1, 3, 1)]
    both, _ = read_cube(path, window=window, bands=range(2, 6))
    np.testing.assert_array_equal(both, full[2:6, 2:7, 3:10])


def test_window_moves_the_geotransform(ref, tmp_path: Path) -> None:
    path = ref.make("geotiff", tmp_path)
    _, meta = read_cube(path, window=(2, 3, 5, 7))
    assert meta.transform == pytest.approx((10.0, 0.0, 500_030.0, 0.0, -10.0, 3_999_980.0))


def test_npy_window_read_is_memory_mapped(ref, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ref.make("npy", tmp_path)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    read_cube(path, window=(0, 0, 2, 2), bands=[0])
    assert calls == ["r"]


def test_hdf5_window_reads_only_the_block(ref, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ref.make("hdf5", tmp_path)
    requested = []
    real_getitem = h5py.Dataset.__getitem__

    def spy(self, index, *args, **kwargs):
        requested.append(index)
        return real_getitem(self, index, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    read_cube(path, window=(2, 3, 5, 7), bands=[6, 1])
    assert (slice(2, 7), slice(3, 10)) == requested[-1][1:] and requested[-1][0] == [1, 6]


def test_memory_mapped_read_returns_a_private_writeable_array(ref, tmp_path: Path) -> None:
    path = ref.make("npy", tmp_path)
    cube, _ = read_cube(path)
    cube += 1  # must not fail, nor change the file
    np.testing.assert_array_equal(np.load(path), ref.cube)


@pytest.mark.parametrize(
    ("window", "bands", "problem"),
    [
        ((0, 0, 13, 1), None, "does not fit"),
        ((-1, 0, 2, 2), None, "does not fit"),
        ((0, 0, 0, 4), None, "does not fit"),
        (None, [8], "out of range"),
        (None, [], "zero bands"),
    ],
)
def test_bad_window_or_bands(ref, tmp_path: Path, window, bands, problem: str) -> None:
    path = ref.make("npy", tmp_path)
    with pytest.raises(CubeError, match=problem) as err:
        read_cube(path, window=window, bands=bands)
    assert str(path) in str(err.value)
