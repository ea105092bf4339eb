"""Bad input: every refusal is a CubeError that names the file and the problem."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from hsivar.io import CubeMeta, cube_shape, detect_format, read_cube, write_cube


@pytest.mark.parametrize("name", ["e.npy", "e.npz", "e.h5", "e.mat", "e.tif", "e.img"])
def test_empty_file(tmp_path: Path, raises_naming, name: str) -> None:
    path = tmp_path / name
    path.touch()
    if name == "e.img":
        (tmp_path / "e.hdr").touch()
        path.write_bytes(b"\0")
        path = tmp_path / "e.hdr"
    with raises_naming(path, "empty file"):
        read_cube(path)


def test_truncated_npy(ref, tmp_path: Path, raises_naming) -> None:
    path = ref.make("npy", tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with raises_naming(path, "truncated"):
        read_cube(path)
    with raises_naming(path, "truncated"):
        cube_shape(path)


def test_truncated_geotiff(ref, tmp_path: Path, raises_naming) -> None:
    path = tmp_path / "t.tif"
    write_cube(path, ref.cube, ref.meta())  # a COG: the directory comes first, then the tiles
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with raises_naming(path, "cannot read data"):
        read_cube(path)
    path.write_bytes(data[:200])  # cut inside the directory: the file does not open
    with raises_naming(path, "cannot read as geotiff"):
        read_cube(path)
    plain = tmp_path / "plain.tif"
    ref.write_geotiff(plain, ref.cube, crs="EPSG:32633", transform=ref.transform)  # directory first, then strips
    data = plain.read_bytes()
    plain.write_bytes(data[: len(data) // 2])
    assert cube_shape(plain) == ref.shape  # the header is intact ...
    with raises_naming(plain, "cannot read data"):  # ... the pixels are not
        read_cube(plain)


def test_truncated_envi(ref, tmp_path: Path, raises_naming) -> None:
    hdr = ref.write_envi(tmp_path / "t.img", ref.cube, "bil")
    data = tmp_path / "t.img"
    data.write_bytes(data.read_bytes()[:-4])
    with raises_naming(data, "truncated ENVI data file"):
        read_cube(hdr)


@pytest.mark.parametrize("shape", [(12, 16), (2, 8, 12, 16), (8,)])
def test_not_a_cube(tmp_path: Path, raises_naming, shape: tuple[int, ...]) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    with raises_naming(path, f"not a cube: {len(shape)}-D"):
        read_cube(path)


def test_not_a_cube_in_hdf5_and_mat(tmp_path: Path, raises_naming) -> None:
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["image"] = np.zeros((12, 16))
    with raises_naming(tmp_path / "flat.h5", "not a cube: 2-D"):
        read_cube(tmp_path / "flat.h5")
    scipy.io.savemat(tmp_path / "flat.mat", {"image": np.zeros((2, 3, 12, 16))})
    with raises_naming(tmp_path / "flat.mat", "not a cube: 4-D"):
        read_cube(tmp_path / "flat.mat")


def test_zero_bands(ref, tmp_path: Path, raises_naming) -> None:
    _, h, w = ref.shape
    path = tmp_path / "zero.npy"
    np.save(path, np.zeros((0, h, w), dtype=np.float32))
    with raises_naming(path, "zero bands"):
        read_cube(path)
    hdr = ref.write_envi(tmp_path / "zero.img", np.zeros((0, h, w), dtype=np.float32), "bsq")
    (tmp_path / "zero.img").write_bytes(b"\0")  # the data file exists; its header says 0 bands
    with raises_naming(hdr, "zero bands"):
        read_cube(hdr)


def test_impossible_layout(ref, tmp_path: Path, raises_naming) -> None:
    c, h, _ = ref.shape
    path = tmp_path / "c.npy"
    np.save(path, np.zeros((c, h, 0), dtype=np.float32))
    with raises_naming(path, "zero bands"):
        read_cube(path, layout="hwc")
    np.save(path, ref.cube)
    with raises_naming(path, "impossible layout='whc'"):
        read_cube(path, layout="whc")
    with raises_naming(path, "impossible layout"):
        cube_shape(path, layout="HWC")


def test_nonfinite_values(ref, tmp_path: Path, raises_naming) -> None:
    bad = ref.cube.copy()
    bad[0, 0, :3] = np.nan
    bad[7, 11, 15] = np.inf
    bad[3, 4, 5] = -np.inf
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        f["cube"] = bad
    with raises_naming(path, "5 non-finite value"):
        read_cube(path)
    cube, meta = read_cube(path, allow_nonfinite=True)
    assert np.count_nonzero(~np.isfinite(cube)) == 5
    finite = bad[np.isfinite(bad)]
    assert meta.value_range == (float(finite.min()), float(finite.max()))
    part, _ = read_cube(path, window=(5, 5, 4, 4))  # the bad values lie outside this window
    np.testing.assert_array_equal(part, ref.cube[:, 5:9, 5:9])


def test_float64_overflow_is_nonfinite(ref, tmp_path: Path, raises_naming) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.full(ref.shape, 1e300))
    with raises_naming(path, f"{ref.cube.size} non-finite"):
        read_cube(path)


@pytest.mark.parametrize("name", ["cube.xyz", "cube", "cube.hdf", "cube.tif.gz"])
def test_unsupported_extension(ref, tmp_path: Path, raises_naming, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"data")
    with raises_naming(path, "unsupported format"):
        read_cube(path)
    with raises_naming(path, "unsupported format"):
        write_cube(path, ref.cube)
    with raises_naming(path, "unsupported format"):
        detect_format(str(path))


def test_missing_hdf5_dataset(ref, tmp_path: Path, raises_naming) -> None:
    path = ref.make("hdf5", tmp_path)
    with raises_naming(path, "no dataset named 'radiance'") as err:
        read_cube(path, dataset="radiance")
    assert "data/cube (8, 12, 16)" in str(err.value)
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f["vector"] = np.zeros(4)
        f["matrix"] = np.zeros((3, 3))
    with raises_naming(tmp_path / "none.h5", "no 3-D dataset"):
        read_cube(tmp_path / "none.h5")


def test_envi_header_without_data(ref, tmp_path: Path, raises_naming) -> None:
    hdr = ref.write_envi(tmp_path / "lonely.img", ref.cube, "bsq")
    (tmp_path / "lonely.img").unlink()
    with raises_naming(hdr, "ENVI header without its data file"):
        read_cube(hdr)


def test_envi_data_without_header(ref, tmp_path: Path, raises_naming) -> None:
    hdr = ref.write_envi(tmp_path / "lonely.dat", ref.cube, "bsq")
    hdr.unlink()
    with raises_naming(tmp_path / "lonely.dat", "ENVI data file without its header"):
        read_cube(tmp_path / "lonely.dat")


def test_not_an_envi_header(ref, tmp_path: Path, raises_naming) -> None:
    ref.write_envi(tmp_path / "x.img", ref.cube, "bsq").write_text("samples = 3\n")
    with raises_naming(tmp_path / "x.hdr", "cannot read as envi"):
        read_cube(tmp_path / "x.hdr")


@pytest.mark.parametrize("name", ["missing.npy", "missing.tif", "missing.h5", "missing.mat"])
def test_missing_file(tmp_path: Path, raises_naming, name: str) -> None:
    with raises_naming(tmp_path / name, "no such file"):
        read_cube(tmp_path / name)
    with raises_naming(tmp_path / name, "no such file"):
        cube_shape(tmp_path / name)


def test_missing_remote_file(memfs, raises_naming) -> None:
    with raises_naming("memory://nowhere/x.npy", "no such file"):
        read_cube("memory://nowhere/x.npy")


def test_garbage_content(tmp_path: Path, raises_naming) -> None:
    for name in ["g.npy", "g.npz", "g.h5", "g.mat", "g.tif"]:
        (tmp_path / name).write_bytes(b"this is not a cube at all" * 20)
        with raises_naming(tmp_path / name, "cannot read as|not a"):
            read_cube(tmp_path / name)


def test_write_refuses_bad_cubes(ref, tmp_path: Path, raises_naming) -> None:
    path = tmp_path / "w.tif"
    with raises_naming(path, "not a cube: 2-D"):
        write_cube(path, np.zeros((12, 16)))
    with raises_naming(path, "zero bands"):
        write_cube(path, np.zeros((0, 12, 16)))
    with raises_naming(path, "4 entries for a 8-band cube"):
        write_cube(path, ref.cube, CubeMeta(wavelengths=[1.0, 2.0, 3.0, 4.0]))
    with_nan = ref.cube.copy()
    with_nan[0, 0, 0] = np.nan
    with raises_naming(path, "1 non-finite value"):
        write_cube(path, with_nan, dtype="uint16")
    with raises_naming(tmp_path / "w.hdr", "cannot store dtype int8"):
        write_cube(tmp_path / "w.hdr", ref.cube, dtype="int8")
    rotated = CubeMeta(transform=(10.0, 1.0, 0.0, 1.0, -10.0, 0.0))
    with raises_naming(tmp_path / "w.hdr", "north-up transforms only"):
        write_cube(tmp_path / "w.hdr", ref.cube, rotated)
    assert list(tmp_path.iterdir()) == []


def test_unknown_read_option(ref, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="allow_nan"):
        read_cube(ref.make("npy", tmp_path), allow_nan=True)
