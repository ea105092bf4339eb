"""Tests for hsivar.data.io: fixtures write tiny real files in every format with the formats' own
libraries (numpy, h5py, scipy.io, rasterio, hand-written ENVI headers), independently of write_cube."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
import rasterio
import scipy.io
from affine import Affine

import hsivar.data.io as cio
from hsivar.data.io import (
    CubeError,
    CubeMeta,
    cube_shape,
    detect_format,
    match_bands,
    read_cube,
    resample_bands,
    select_bands,
    write_cube,
)

C, H, W = 8, 12, 16  # distinct sizes so that any axis mix-up changes the shape
WAVELENGTHS = [400.0 + 40.0 * i for i in range(C)]
NAMES = [f"band {i}" for i in range(C)]
CUBE = np.random.default_rng(0).uniform(0.0, 1000.0, size=(C, H, W)).astype(np.float32)
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)  # 10 m pixels, north up


# ------------------------------------------------------------------------------------------------
# File writers used by the fixtures (the way each format's own tools lay files out)


def write_mat73(path: Path, **variables: np.ndarray) -> None:
    """Write variables the way MATLAB's `save -v7.3` does: HDF5 behind a 512-byte text header, each
    array stored with its axes reversed (MATLAB is column-major), a MATLAB_class attribute."""
    classes = {"float64": "double", "float32": "single", "uint16": "uint16"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            ds = f.create_dataset(name, data=np.ascontiguousarray(np.asarray(value).T))
            ds.attrs["MATLAB_class"] = np.bytes_(classes[np.asarray(value).dtype.name])
        # A char variable as MATLAB writes it (uint16 codes): must never be taken for the cube.
        text = np.frombuffer("hyperspectral".encode("utf-16-le"), dtype=np.uint16)[:, None]
        f.create_dataset("description", data=text).attrs["MATLAB_class"] = np.bytes_("char")
        f.create_group("#refs#")
    header = (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    )
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def write_envi(data_path: Path, cube: np.ndarray, interleave: str, header_extra: str = "") -> Path:
    """Write an ENVI data file and its header by hand; returns the header path."""
    axes = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave]
    np.ascontiguousarray(cube.transpose(axes)).astype("<f4").tofile(data_path)
    hdr = data_path.with_suffix(".hdr")
    hdr.write_text(
        "ENVI\n"
        "description = {test cube}\n"
        f"samples = {cube.shape[2]}\nlines = {cube.shape[1]}\nbands = {cube.shape[0]}\n"
        "header offset = 0\nfile type = ENVI Standard\ndata type = 4\n"
        f"interleave = {interleave}\nbyte order = 0\n" + header_extra
    )
    return hdr


def write_geotiff(path: Path, cube: np.ndarray, **profile: object) -> None:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=cube.shape[2],
        height=cube.shape[1],
        count=cube.shape[0],
        dtype=cube.dtype.name,
        **profile,
    ) as ds:
        ds.write(cube)


SOURCES = ["npy", "npz", "hdf5", "mat", "mat73", "geotiff", "envi_bsq", "envi_bil", "envi_bip"]


def make_source(kind: str, folder: Path) -> Path:
    """Write CUBE as `kind` into `folder`; returns the path to read."""
    wl = np.asarray(WAVELENGTHS)
    if kind == "npy":
        path = folder / "cube.npy"
        np.save(path, CUBE)
    elif kind == "npz":
        path = folder / "cube.npz"
        np.savez(path, reflectance=CUBE, wavelengths=wl)
    elif kind == "hdf5":
        path = folder / "cube.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("data/cube", data=CUBE, chunks=(1, 6, 8))
            f.create_dataset("data/wavelengths", data=wl)
            f.create_dataset("data/quality", data=np.zeros(H * W))
    elif kind == "mat":
        path = folder / "cube.mat"
        scipy.io.savemat(path, {"hsi": CUBE.transpose(1, 2, 0), "wavelengths": wl[None, :]})
    elif kind == "mat73":
        path = folder / "cube73.mat"
        write_mat73(path, hsi=CUBE.transpose(1, 2, 0), wavelengths=wl[None, :])
    elif kind == "geotiff":
        path = folder / "cube.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=W, height=H, count=C, dtype="float32",
            crs="EPSG:32633", transform=TRANSFORM, nodata=-1.0,
        ) as ds:  # fmt: skip
            ds.write(CUBE)
            for i in range(C):
                ds.set_band_description(i + 1, NAMES[i])
                ds.update_tags(i + 1, wavelength=str(WAVELENGTHS[i]))
    elif kind.startswith("envi_"):
        interleave = kind.split("_")[1]
        if interleave == "bil":  # micrometres in the header must come back as nanometres
            waves = (
                "wavelength units = Micrometers\nwavelength = {"
                + ", ".join(f"{w / 1000}" for w in wl)
                + "}\n"
            )
        else:
            waves = "wavelength units = Nanometers\nwavelength = {" + ", ".join(str(w) for w in wl) + "}\n"
        names = "band names = {" + ", ".join(NAMES) + "}\n"
        mapinfo = "map info = {UTM, 1, 1, 500000.0, 4000000.0, 10.0, 10.0, 33, North, WGS-84}\n"
        path = write_envi(folder / "cube.img", CUBE, interleave, waves + names + mapinfo)
    else:
        raise AssertionError(kind)
    return path


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    return request.param, make_source(request.param, tmp_path)


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    yield fs
    fs.store.clear()


def full_meta() -> CubeMeta:
    return CubeMeta(
        bands=C,
        wavelengths=list(WAVELENGTHS),
        band_names=list(NAMES),
        crs="EPSG:32633",
        transform=tuple(TRANSFORM)[:6],
        nodata=-1.0,
    )


# ------------------------------------------------------------------------------------------------
# Reading every format


def test_read_every_format(source: tuple[str, Path]) -> None:
    kind, path = source
    cube, meta = read_cube(path)
    assert cube.dtype == np.float32 and cube.shape == (C, H, W)
    np.testing.assert_array_equal(cube, CUBE)
    assert meta.bands == C
    assert meta.format == {"mat73": "mat"}.get(kind, kind.split("_")[0])
    assert meta.value_range == (float(CUBE.min()), float(CUBE.max()))
    assert meta.extras["source"] == str(path)
    if kind == "npy":
        assert meta.wavelengths is None
    else:
        np.testing.assert_allclose(meta.wavelengths, WAVELENGTHS)
    if kind in ("geotiff",) or kind.startswith("envi"):
        assert meta.band_names == NAMES
        assert meta.transform == pytest.approx(tuple(TRANSFORM)[:6])
        assert meta.crs == "EPSG:32633"  # ENVI: from the UTM map info
    if kind in ("mat", "mat73"):
        assert meta.layout == "hwc" and meta.extras["dataset"] == "hsi"
        assert meta.extras["mat_version"] == ("7.3" if kind == "mat73" else "5")
    assert cube_shape(path) == (C, H, W)


def test_read_source_dtype_is_recorded(tmp_path: Path) -> None:
    values = (CUBE * 10).astype(np.uint16)
    path = tmp_path / "u16.tif"
    write_geotiff(path, values, crs="EPSG:4326", transform=Affine(0.1, 0, 10, 0, -0.1, 50))
    cube, meta = read_cube(path)
    assert cube.dtype == np.float32 and meta.dtype == "uint16"
    np.testing.assert_array_equal(cube, values.astype(np.float32))
    assert meta.value_range == (float(values.min()), float(values.max()))


def test_hdf5_by_name_and_ambiguity(tmp_path: Path) -> None:
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a"] = CUBE
        f["b/c"] = CUBE[::-1]
    with pytest.raises(CubeError, match="several 3-D datasets") as err:
        read_cube(path)
    assert str(path) in str(err.value) and "a (8, 12, 16)" in str(err.value) and "b/c" in str(err.value)
    cube, meta = read_cube(path, dataset="/b/c")
    np.testing.assert_array_equal(cube, CUBE[::-1])
    assert meta.extras["dataset"] == "b/c"


def test_npz_by_key(tmp_path: Path) -> None:
    path = tmp_path / "two.npz"
    np.savez(path, first=CUBE, second=CUBE + 1)
    with pytest.raises(CubeError, match="pass dataset="):
        read_cube(path)
    cube, _ = read_cube(path, dataset="second")
    np.testing.assert_array_equal(cube, CUBE + 1)
    with pytest.raises(CubeError, match="no array named 'third'"):
        read_cube(path, dataset="third")


def test_mat73_axes_are_reversed_on_disk(tmp_path: Path) -> None:
    path = make_source("mat73", tmp_path)
    with h5py.File(path, "r") as f:
        assert f["hsi"].shape == (C, W, H)  # MATLAB's (H, W, C), reversed
    cube, meta = read_cube(path, window=(1, 2, 5, 6), bands=[6, 0])
    np.testing.assert_array_equal(cube, CUBE[[6, 0], 1:6, 2:8])
    assert meta.wavelengths == [WAVELENGTHS[6], WAVELENGTHS[0]]


# ------------------------------------------------------------------------------------------------
# Layout rule


def test_layout_smallest_axis_is_bands(tmp_path: Path) -> None:
    path = tmp_path / "hwc.npy"
    np.save(path, CUBE.transpose(1, 2, 0))
    cube, meta = read_cube(path)
    np.testing.assert_array_equal(cube, CUBE)
    assert meta.layout == "hwc"
    assert cube_shape(path) == (C, H, W)


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


def test_layout_recorded_in_hdf5_attribute(tmp_path: Path) -> None:
    path = tmp_path / "attr.h5"
    with h5py.File(path, "w") as f:
        f["cube"] = CUBE.transpose(1, 2, 0)
        f["cube"].attrs["layout"] = "hwc"
    np.testing.assert_array_equal(read_cube(path)[0], CUBE)


# ------------------------------------------------------------------------------------------------
# Windows and band subsets


def test_window_and_bands_equal_slices(source: tuple[str, Path]) -> None:
    _, path = source
    full, full_meta_ = read_cube(path)
    window = (2, 3, 5, 7)
    part, meta = read_cube(path, window=window)
    np.testing.assert_array_equal(part, full[:, 2:7, 3:10])
    assert meta.extras["window"] == window and meta.extras["full_shape"] == (C, H, W)
    picked, meta = read_cube(path, bands=[5, 1, 3, 1])
    np.testing.assert_array_equal(picked, full[[5, 1, 3, 1]])
    assert meta.bands == 4
    if full_meta_.wavelengths is not None:
        assert meta.wavelengths == [full_meta_.wavelengths[i] for i in (5, 1, 3, 1)]
    both, _ = read_cube(path, window=window, bands=range(2, 6))
    np.testing.assert_array_equal(both, full[2:6, 2:7, 3:10])


def test_window_moves_the_geotransform(tmp_path: Path) -> None:
    path = make_source("geotiff", tmp_path)
    _, meta = read_cube(path, window=(2, 3, 5, 7))
    assert meta.transform == pytest.approx((10.0, 0.0, 500_030.0, 0.0, -10.0, 3_999_980.0))


def test_npy_window_read_is_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_source("npy", tmp_path)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    read_cube(path, window=(0, 0, 2, 2), bands=[0])
    assert calls == ["r"]


def test_hdf5_window_reads_only_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_source("hdf5", tmp_path)
    requested = []
    real_getitem = h5py.Dataset.__getitem__

    def spy(self, index, *args, **kwargs):
        requested.append(index)
        return real_getitem(self, index, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    read_cube(path, window=(2, 3, 5, 7), bands=[6, 1])
    assert (slice(2, 7), slice(3, 10)) == requested[-1][1:] and requested[-1][0] == [1, 6]


def test_memory_mapped_read_returns_a_private_writeable_array(tmp_path: Path) -> None:
    path = make_source("npy", tmp_path)
    cube, _ = read_cube(path)
    cube += 1  # must not fail, nor change the file
    np.testing.assert_array_equal(np.load(path), CUBE)


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
def test_bad_window_or_bands(tmp_path: Path, window, bands, problem: str) -> None:
    path = make_source("npy", tmp_path)
    with pytest.raises(CubeError, match=problem) as err:
        read_cube(path, window=window, bands=bands)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------------
# Writing: round trips in every format


@pytest.mark.parametrize(
    "name", ["c.npy", "c.npz", "c.h5", "c.hdf5", "c.mat", "c.tif", "c.tiff", "c.hdr", "c.img"]
)
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_cube(path, CUBE, full_meta())
    cube, meta = read_cube(path)
    np.testing.assert_array_equal(cube, CUBE)
    assert meta.dtype == "float32" and meta.format == detect_format(name)
    if name != "c.npy":
        assert meta.wavelengths == pytest.approx(WAVELENGTHS)
        assert meta.band_names == NAMES
    if name.endswith((".tif", ".tiff", ".hdr", ".img", ".h5", ".hdf5")):
        assert meta.transform == pytest.approx(tuple(TRANSFORM)[:6])
        assert meta.nodata == -1.0
        assert rasterio.crs.CRS.from_user_input(meta.crs) == rasterio.crs.CRS.from_epsg(32633)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == (["c.hdr", "c.img"] if name.endswith((".hdr", ".img")) else [name])


def test_geotiff_keeps_georeferencing(tmp_path: Path) -> None:
    path = tmp_path / "geo.tif"
    write_cube(path, CUBE, full_meta())
    with rasterio.open(path) as ds:  # what any GIS sees
        assert ds.crs.to_epsg() == 32633
        assert ds.transform == TRANSFORM
        assert ds.nodata == -1.0
        assert list(ds.descriptions) == NAMES
        assert float(ds.tags(3)["wavelength"]) == WAVELENGTHS[2]
    _, meta = read_cube(path)
    assert meta.crs == "EPSG:32633" and meta.transform == tuple(TRANSFORM)[:6]


def test_envi_keeps_interleave_and_wavelengths(tmp_path: Path) -> None:
    src = make_source("envi_bip", tmp_path)
    cube, meta = read_cube(src)
    out = tmp_path / "out" / "copy.hdr"
    write_cube(out, cube, meta)
    header = out.read_text()
    assert "interleave = bip" in header and "wavelength units = Nanometers" in header
    again, meta2 = read_cube(out)
    np.testing.assert_array_equal(again, CUBE)
    assert meta2.wavelengths == pytest.approx(WAVELENGTHS) and meta2.layout == "hwc"
    assert meta2.transform == pytest.approx(tuple(TRANSFORM)[:6])


def test_envi_extensionless_data_file(tmp_path: Path) -> None:
    write_envi(tmp_path / "scene", CUBE, "bsq")  # "scene" + "scene.hdr"
    np.testing.assert_array_equal(read_cube(tmp_path / "scene")[0], CUBE)
    np.testing.assert_array_equal(read_cube(tmp_path / "scene.hdr")[0], CUBE)


def test_envi_header_offset_big_endian_uint16(tmp_path: Path) -> None:
    values = (CUBE * 10).astype(np.uint16)
    data = tmp_path / "be.dat"
    data.write_bytes(b"\xff" * 16 + np.ascontiguousarray(values.transpose(1, 0, 2)).astype(">u2").tobytes())
    data.with_suffix(".hdr").write_text(
        f"ENVI\nsamples = {W}\nlines = {H}\nbands = {C}\nheader offset = 16\n"
        "data type = 12\ninterleave = BIL\nbyte order = 1\n"
    )
    cube, meta = read_cube(data)  # named by its data file
    np.testing.assert_array_equal(cube, values.astype(np.float32))
    assert meta.dtype == "uint16" and meta.layout == "hcw" and meta.wavelengths is None
    out = tmp_path / "le.hdr"
    write_cube(out, cube, meta, dtype=meta.dtype)
    assert "data type = 12" in out.read_text() and "interleave = bil" in out.read_text()
    np.testing.assert_array_equal(read_cube(out)[0], cube)


def test_explicit_format(tmp_path: Path) -> None:
    path = tmp_path / "cube.bin"
    write_cube(path, CUBE, format="npy")
    np.testing.assert_array_equal(read_cube(path, format="npy")[0], CUBE)
    assert cube_shape(path, format="npy") == (C, H, W)
    with raises_naming(tmp_path / "x.npy", "unknown format 'zarr'"):
        write_cube(tmp_path / "x.npy", CUBE, format="zarr")


def test_mat_round_trip_v5_and_v73(tmp_path: Path) -> None:
    write_cube(tmp_path / "v5.mat", CUBE, full_meta())
    stored = scipy.io.loadmat(tmp_path / "v5.mat")["cube"]
    assert stored.shape == (H, W, C)  # MATLAB convention
    meta = CubeMeta(bands=C, wavelengths=list(WAVELENGTHS), extras={"mat_version": "7.3", "dataset": "hsi"})
    write_cube(tmp_path / "v73.mat", CUBE, meta)
    assert (tmp_path / "v73.mat").read_bytes()[:10] == b"MATLAB 7.3"
    with h5py.File(tmp_path / "v73.mat", "r") as f:
        assert f["hsi"].shape == (C, W, H)
    cube, meta = read_cube(tmp_path / "v73.mat")
    np.testing.assert_array_equal(cube, CUBE)
    assert meta.extras["mat_version"] == "7.3" and meta.wavelengths == WAVELENGTHS


def test_write_back_in_source_dtype(tmp_path: Path) -> None:
    values = np.array([-5.0, 1.4, 1.6, 70_000.0, 12.5], dtype=np.float32).reshape(5, 1, 1)
    cube = np.broadcast_to(values, (5, 2, 3)).copy()
    path = tmp_path / "u16.tif"
    write_cube(path, cube, dtype="uint16")
    back, meta = read_cube(path)
    assert meta.dtype == "uint16"
    np.testing.assert_array_equal(back[:, 0, 0], [0, 1, 2, 65535, 12])  # rounded half-to-even, clipped
    again = tmp_path / "again.tif"
    write_cube(again, back, meta, dtype=meta.dtype)
    np.testing.assert_array_equal(read_cube(again)[0], back)


@pytest.mark.parametrize("name", ["r.npy", "r.npz", "r.h5", "r.mat", "r.tif", "r.hdr"])
def test_memory_uri_round_trip(memfs, name: str) -> None:
    uri = f"memory://bucket/out/{name}"
    write_cube(uri, CUBE, full_meta())
    cube, meta = read_cube(uri)
    np.testing.assert_array_equal(cube, CUBE)
    assert meta.extras["source"] == uri
    part, _ = read_cube(uri, window=(1, 2, 3, 4), bands=[7, 0])
    np.testing.assert_array_equal(part, CUBE[[7, 0], 1:4, 2:6])
    assert cube_shape(uri) == (C, H, W)
    expected = {"/bucket/out/r.hdr", "/bucket/out/r.img"} if name == "r.hdr" else {f"/bucket/out/{name}"}
    assert set(memfs.find("/bucket")) == expected


def test_memory_uri_reads_fixture_files(memfs, source: tuple[str, Path]) -> None:
    kind, path = source
    for file in path.parent.iterdir():
        memfs.put_file(str(file), f"/in/{file.name}")
    uri = f"memory://in/{path.name}"
    cube, meta = read_cube(uri, window=(2, 3, 5, 7))
    np.testing.assert_array_equal(cube, CUBE[:, 2:7, 3:10])
    assert cube_shape(uri) == (C, H, W)


def test_file_uri(tmp_path: Path) -> None:
    path = make_source("geotiff", tmp_path)
    cube, _ = read_cube(f"file://{path}")
    np.testing.assert_array_equal(cube, CUBE)
    write_cube(f"file://{tmp_path}/sub/out.npy", CUBE)
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / "out.npy"), CUBE)


# ------------------------------------------------------------------------------------------------
# Atomic writes


class Unconvertible:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("conversion failed")


def test_failed_conversion_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(CubeError, match="cannot convert") as err:
        write_cube(tmp_path / "x.tif", Unconvertible())
    assert str(tmp_path / "x.tif") in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", cio.FORMATS)
def test_crash_mid_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    real = cio._WRITERS[fmt]

    def crash(paths, arr, meta):
        real(paths, arr, meta)  # the temporaries are complete on disk ...
        with open(paths[0], "ab") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # ... when the process is interrupted before the rename

    monkeypatch.setitem(cio._WRITERS, fmt, crash)
    ext = {"npy": ".npy", "npz": ".npz", "hdf5": ".h5", "mat": ".mat", "geotiff": ".tif", "envi": ".hdr"}[fmt]
    with pytest.raises(KeyboardInterrupt):
        write_cube(tmp_path / f"x{ext}", CUBE, full_meta())
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.h5"
    write_cube(path, CUBE)
    before = path.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", broken)  # fails inside the real writer
    with pytest.raises(CubeError, match="disk full") as err:
        write_cube(path, CUBE + 1)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]


def test_envi_header_failure_leaves_neither_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise OSError("header write failed")

    monkeypatch.setattr(cio.envi, "write_envi_header", broken)
    with pytest.raises(CubeError, match="header write failed"):
        write_cube(tmp_path / "x.hdr", CUBE)
    assert list(tmp_path.iterdir()) == []


def test_envi_renames_data_before_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moved = []
    real_replace = os.replace

    def spy(src, dst):
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(cio.os, "replace", spy)
    write_cube(tmp_path / "x.hdr", CUBE)
    assert moved == ["x.img", "x.hdr"]


def test_failed_remote_write_leaves_nothing(memfs, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(paths, arr, meta):
        Path(paths[0]).write_bytes(b"half")
        raise OSError("interrupted")

    monkeypatch.setitem(cio._WRITERS, "npy", broken)
    with pytest.raises(CubeError, match="interrupted"):
        write_cube("memory://bucket/x.npy", CUBE)
    assert memfs.find("/bucket") == []


# ------------------------------------------------------------------------------------------------
# Bad input: every case names the file and the problem


@contextlib.contextmanager
def raises_naming(path: Path | str, match: str) -> Iterator[pytest.ExceptionInfo[CubeError]]:
    """Expect a CubeError whose message matches `match` and names `path`."""
    with pytest.raises(CubeError, match=match) as info:
        yield info
    assert str(path) in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["e.npy", "e.npz", "e.h5", "e.mat", "e.tif", "e.img"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.touch()
    if name == "e.img":
        (tmp_path / "e.hdr").touch()
        path.write_bytes(b"\0")
        path = tmp_path / "e.hdr"
    with raises_naming(path, "empty file"):
        read_cube(path)


def test_truncated_npy(tmp_path: Path) -> None:
    path = make_source("npy", tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with raises_naming(path, "truncated"):
        read_cube(path)
    with raises_naming(path, "truncated"):
        cube_shape(path)


def test_truncated_geotiff(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    write_cube(path, CUBE, full_meta())  # directory written last: cut off, the file does not open
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with raises_naming(path, "cannot read as geotiff"):
        read_cube(path)
    plain = tmp_path / "plain.tif"
    write_geotiff(plain, CUBE, crs="EPSG:32633", transform=TRANSFORM)  # directory first, then the strips
    data = plain.read_bytes()
    plain.write_bytes(data[: len(data) // 2])
    assert cube_shape(plain) == (C, H, W)  # the header is intact ...
    with raises_naming(plain, "cannot read data"):  # ... the pixels are not
        read_cube(plain)


def test_truncated_envi(tmp_path: Path) -> None:
    hdr = write_envi(tmp_path / "t.img", CUBE, "bil")
    data = tmp_path / "t.img"
    data.write_bytes(data.read_bytes()[:-4])
    with raises_naming(data, "truncated ENVI data file"):
        read_cube(hdr)


@pytest.mark.parametrize("shape", [(H, W), (2, C, H, W), (C,)])
def test_not_a_cube(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    with raises_naming(path, f"not a cube: {len(shape)}-D"):
        read_cube(path)


def test_not_a_cube_in_hdf5_and_mat(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["image"] = np.zeros((H, W))
    with raises_naming(tmp_path / "flat.h5", "not a cube: 2-D"):
        read_cube(tmp_path / "flat.h5")
    scipy.io.savemat(tmp_path / "flat.mat", {"image": np.zeros((2, 3, H, W))})
    with raises_naming(tmp_path / "flat.mat", "not a cube: 4-D"):
        read_cube(tmp_path / "flat.mat")


def test_zero_bands(tmp_path: Path) -> None:
    path = tmp_path / "zero.npy"
    np.save(path, np.zeros((0, H, W), dtype=np.float32))
    with raises_naming(path, "zero bands"):
        read_cube(path)
    hdr = write_envi(tmp_path / "zero.img", np.zeros((0, H, W), dtype=np.float32), "bsq")
    (tmp_path / "zero.img").write_bytes(b"\0")  # the data file exists; its header says 0 bands
    with raises_naming(hdr, "zero bands"):
        read_cube(hdr)


def test_impossible_layout(tmp_path: Path) -> None:
    path = tmp_path / "c.npy"
    np.save(path, np.zeros((C, H, 0), dtype=np.float32))
    with raises_naming(path, "zero bands"):
        read_cube(path, layout="hwc")
    np.save(path, CUBE)
    with raises_naming(path, "impossible layout='whc'"):
        read_cube(path, layout="whc")
    with raises_naming(path, "impossible layout"):
        cube_shape(path, layout="HWC")


def test_nonfinite_values(tmp_path: Path) -> None:
    bad = CUBE.copy()
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
    np.testing.assert_array_equal(part, CUBE[:, 5:9, 5:9])


def test_float64_overflow_is_nonfinite(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.full((C, H, W), 1e300))
    with raises_naming(path, f"{C * H * W} non-finite"):
        read_cube(path)


@pytest.mark.parametrize("name", ["cube.xyz", "cube", "cube.hdf", "cube.tif.gz"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"data")
    with raises_naming(path, "unsupported format"):
        read_cube(path)
    with raises_naming(path, "unsupported format"):
        write_cube(path, CUBE)
    with raises_naming(path, "unsupported format"):
        detect_format(str(path))


def test_missing_hdf5_dataset(tmp_path: Path) -> None:
    path = make_source("hdf5", tmp_path)
    with raises_naming(path, "no dataset named 'radiance'") as err:
        read_cube(path, dataset="radiance")
    assert "data/cube (8, 12, 16)" in str(err.value)
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f["vector"] = np.zeros(4)
        f["matrix"] = np.zeros((3, 3))
    with raises_naming(tmp_path / "none.h5", "no 3-D dataset"):
        read_cube(tmp_path / "none.h5")


def test_envi_header_without_data(tmp_path: Path) -> None:
    hdr = write_envi(tmp_path / "lonely.img", CUBE, "bsq")
    (tmp_path / "lonely.img").unlink()
    with raises_naming(hdr, "ENVI header without its data file"):
        read_cube(hdr)


def test_envi_data_without_header(tmp_path: Path) -> None:
    hdr = write_envi(tmp_path / "lonely.dat", CUBE, "bsq")
    hdr.unlink()
    with raises_naming(tmp_path / "lonely.dat", "ENVI data file without its header"):
        read_cube(tmp_path / "lonely.dat")


def test_not_an_envi_header(tmp_path: Path) -> None:
    write_envi(tmp_path / "x.img", CUBE, "bsq").write_text("samples = 3\n")
    with raises_naming(tmp_path / "x.hdr", "cannot read as envi"):
        read_cube(tmp_path / "x.hdr")


@pytest.mark.parametrize("name", ["missing.npy", "missing.tif", "missing.h5", "missing.mat"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    with raises_naming(tmp_path / name, "no such file"):
        read_cube(tmp_path / name)
    with raises_naming(tmp_path / name, "no such file"):
        cube_shape(tmp_path / name)


def test_missing_remote_file(memfs) -> None:
    with raises_naming("memory://nowhere/x.npy", "no such file"):
        read_cube("memory://nowhere/x.npy")


def test_garbage_content(tmp_path: Path) -> None:
    for name in ["g.npy", "g.npz", "g.h5", "g.mat", "g.tif"]:
        (tmp_path / name).write_bytes(b"this is not a cube at all" * 20)
        with raises_naming(tmp_path / name, "cannot read as|not a"):
            read_cube(tmp_path / name)


def test_write_refuses_bad_cubes(tmp_path: Path) -> None:
    path = tmp_path / "w.tif"
    with raises_naming(path, "not a cube: 2-D"):
        write_cube(path, np.zeros((H, W)))
    with raises_naming(path, "zero bands"):
        write_cube(path, np.zeros((0, H, W)))
    with raises_naming(path, "4 entries for a 8-band cube"):
        write_cube(path, CUBE, CubeMeta(wavelengths=[1.0, 2.0, 3.0, 4.0]))
    with_nan = CUBE.copy()
    with_nan[0, 0, 0] = np.nan
    with raises_naming(path, "1 non-finite value"):
        write_cube(path, with_nan, dtype="uint16")
    with raises_naming(tmp_path / "w.hdr", "cannot store dtype int8"):
        write_cube(tmp_path / "w.hdr", CUBE, dtype="int8")
    assert list(tmp_path.iterdir()) == []


def test_unknown_read_option(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="allow_nan"):
        read_cube(make_source("npy", tmp_path), allow_nan=True)


# ------------------------------------------------------------------------------------------------
# Band handling


def test_detect_format_table() -> None:
    table = {"a.NPY": "npy", "s3://b/k/a.npz": "npz", "a.h5": "hdf5", "a.hdf5": "hdf5", "a.mat": "mat",
             "a.TIF": "geotiff", "a.tiff": "geotiff", "a.hdr": "envi", "a.img": "envi"}  # fmt: skip
    assert {k: detect_format(k) for k in table} == table


def test_select_bands() -> None:
    meta = full_meta()
    sub, sub_meta = select_bands(CUBE, meta, [6, 2])
    np.testing.assert_array_equal(sub, CUBE[[6, 2]])
    assert sub_meta.bands == 2 and sub_meta.wavelengths == [WAVELENGTHS[6], WAVELENGTHS[2]]
    assert sub_meta.band_names == [NAMES[6], NAMES[2]] and meta.bands == C  # input untouched
    with pytest.raises(CubeError, match="out of range"):
        select_bands(CUBE, meta, [C])


def test_resample_linear_spectrum_is_exact() -> None:
    wl = np.asarray(WAVELENGTHS)
    offset = np.random.default_rng(2).random((1, H, W))
    slope = np.random.default_rng(3).random((1, H, W))
    cube = (offset + slope * wl[:, None, None] / 100).astype(np.float32)
    targets = [405.0, 433.3, 500.0, 612.5, 679.9, 680.0]
    out, meta = resample_bands(cube, CubeMeta(bands=C, wavelengths=list(WAVELENGTHS)), targets)
    expected = offset + slope * np.asarray(targets)[:, None, None] / 100
    assert out.dtype == np.float32 and out.shape == (len(targets), H, W)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert meta.bands == len(targets) and meta.wavelengths == targets


def test_resample_refusals() -> None:
    with pytest.raises(CubeError, match="wavelengths are unknown"):
        resample_bands(CUBE, CubeMeta(bands=C), [500.0])
    with pytest.raises(CubeError, match="outside the source range"):
        resample_bands(CUBE, CubeMeta(bands=C, wavelengths=list(WAVELENGTHS)), [0.5, 0.6])


def test_match_bands() -> None:
    meta = full_meta()
    same, same_meta = match_bands(CUBE, meta, C)
    assert same is CUBE and same_meta is meta
    targets = list(np.linspace(400, 680, 31))
    out, out_meta = match_bands(CUBE, meta, 31, targets)
    assert out.shape == (31, H, W) and out_meta.bands == 31
    np.testing.assert_allclose(out[0], CUBE[0]) and np.testing.assert_allclose(out[-1], CUBE[-1])
    with pytest.raises(CubeError, match=r"has 8 bands but 31 are expected") as err:
        match_bands(CUBE, CubeMeta(bands=C, extras={"source": "s3://b/scene.tif"}), 31, targets)
    assert "s3://b/scene.tif" in str(err.value)
    with pytest.raises(CubeError, match=r"has 8 bands but 31 are expected"):
        match_bands(CUBE, meta, 31)
