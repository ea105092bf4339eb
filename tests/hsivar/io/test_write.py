"""write_cube in every format: round trips, kept metadata, dtypes, remote and file:// URIs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import scipy.io

from hsivar.io import CubeMeta, cube_shape, detect_format, read_cube, write_cube


@pytest.mark.parametrize("name", ["c.npy", "c.npz", "c.h5", "c.hdf5", "c.mat", "c.tif", "c.tiff", "c.hdr", "c.img"])
def test_round_trip(ref, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_cube(path, ref.cube, ref.meta())
    cube, meta = read_cube(path)
    np.testing.assert_array_equal(cube, ref.cube)
    assert meta.dtype == "float32" and meta.format == detect_format(name)
    if name != "c.npy":
        assert meta.wavelengths == pytest.approx(ref.wavelengths)
        assert meta.band_names == ref.names
    if name.endswith((".tif", ".tiff", ".hdr", ".img", ".h5", ".hdf5")):
        assert meta.fwhm == ref.meta().fwhm
        assert meta.transform == pytest.approx(tuple(ref.transform)[:6])
        assert meta.nodata == -1.0
        assert rasterio.crs.CRS.from_user_input(meta.crs) == rasterio.crs.CRS.from_epsg(32633)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == (["c.hdr", "c.img"] if name.endswith((".hdr", ".img")) else [name])


def test_geotiff_keeps_georeferencing(ref, tmp_path: Path) -> None:
    path = tmp_path / "geo.tif"
    write_cube(path, ref.cube, ref.meta())
    with rasterio.open(path) as ds:  # what any GIS sees
        assert ds.crs.to_epsg() == 32633
        assert ds.transform == ref.transform
        assert ds.nodata == -1.0
        assert list(ds.descriptions) == ref.names
        assert float(ds.tags(3)["wavelength"]) == ref.wavelengths[2]
    _, meta = read_cube(path)
    assert meta.crs == "EPSG:32633" and meta.transform == tuple(ref.transform)[:6]


@pytest.mark.parametrize(("shape", "overviews"), [((5, 20, 24), 0), ((3, 600, 520), 2)])
def test_geotiff_is_a_valid_cog(tmp_path: Path, shape: tuple[int, int, int], overviews: int) -> None:
    """Every GeoTIFF written is a Cloud-Optimized GeoTIFF (rio-cogeo's validator), tiled, compressed, with
    overviews once larger than a tile, and keeps band names, wavelengths, FWHM, the mask and the bad bands."""
    from rio_cogeo.cogeo import cog_validate

    rng = np.random.default_rng(0)
    cube = rng.random(shape, dtype=np.float32)
    c, h, w = shape
    missing = np.zeros(shape, bool)
    missing[:, : h // 4, : w // 5] = True  # a cloud: the same pixels in every good band
    missing[1] = True  # a bad band
    meta = CubeMeta(bands=c, wavelengths=[400.0 + 10 * i for i in range(c)], fwhm=[9.5] * c,
                    band_names=[f"b{i}" for i in range(c)], crs="EPSG:32633",
                    transform=(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0), nodata=-1.0, missing=missing)
    path = tmp_path / "cog.tif"
    write_cube(path, cube, meta)
    valid, errors, warnings = cog_validate(str(path))
    assert valid and not errors, errors
    with rasterio.open(path) as ds:
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate" and ds.block_shapes[0] == (256, 256)
        assert len(ds.overviews(1)) == overviews
    again, meta2 = read_cube(path)
    np.testing.assert_array_equal(again, cube)
    assert meta2.band_names == meta.band_names and meta2.fwhm == meta.fwhm
    assert meta2.wavelengths == pytest.approx(meta.wavelengths)
    np.testing.assert_array_equal(meta2.missing, missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cog.tif"]  # the plain intermediate is gone


def test_envi_keeps_interleave_and_wavelengths(ref, tmp_path: Path) -> None:
    src = ref.make("envi_bip", tmp_path)
    cube, meta = read_cube(src)
    out = tmp_path / "out" / "copy.hdr"
    write_cube(out, cube, meta)
    header = out.read_text()
    assert "interleave = bip" in header and "wavelength units = Nanometers" in header
    again, meta2 = read_cube(out)
    np.testing.assert_array_equal(again, ref.cube)
    assert meta2.wavelengths == pytest.approx(ref.wavelengths) and meta2.layout == "hwc"
    assert meta2.transform == pytest.approx(tuple(ref.transform)[:6])


def test_envi_extensionless_data_file(ref, tmp_path: Path) -> None:
    ref.write_envi(tmp_path / "scene", ref.cube, "bsq")  # "scene" + "scene.hdr"
    np.testing.assert_array_equal(read_cube(tmp_path / "scene")[0], ref.cube)
    np.testing.assert_array_equal(read_cube(tmp_path / "scene.hdr")[0], ref.cube)


def test_envi_header_offset_big_endian_uint16(ref, tmp_path: Path) -> None:
    c, h, w = ref.shape
    values = (ref.cube * 10).astype(np.uint16)
    data = tmp_path / "be.dat"
    data.write_bytes(b"\xff" * 16 + np.ascontiguousarray(values.transpose(1, 0, 2)).astype(">u2").tobytes())
    data.with_suffix(".hdr").write_text(
        f"ENVI\nsamples = {w}\nlines = {h}\nbands = {c}\nheader offset = 16\n"
        "data type = 12\ninterleave = BIL\nbyte order = 1\n"
    )
    cube, meta = read_cube(data)  # named by its data file
    np.testing.assert_array_equal(cube, values.astype(np.float32))
    assert meta.dtype == "uint16" and meta.layout == "hcw" and meta.wavelengths is None
    out = tmp_path / "le.hdr"
    write_cube(out, cube, meta, dtype=meta.dtype)
    assert "data type = 12" in out.read_text() and "interleave = bil" in out.read_text()
    np.testing.assert_array_equal(read_cube(out)[0], cube)


def test_explicit_format(ref, tmp_path: Path, raises_naming) -> None:
    path = tmp_path / "cube.bin"
    write_cube(path, ref.cube, format="npy")
    np.testing.assert_array_equal(read_cube(path, format="npy")[0], ref.cube)
    assert cube_shape(path, format="npy") == ref.shape
    with raises_naming(tmp_path / "x.npy", "unknown format 'zarr'"):
        write_cube(tmp_path / "x.npy", ref.cube, format="zarr")


def test_mat_round_trip_v5_and_v73(ref, tmp_path: Path) -> None:
    c, h, w = ref.shape
    write_cube(tmp_path / "v5.mat", ref.cube, ref.meta())
    stored = scipy.io.loadmat(tmp_path / "v5.mat")["cube"]
    assert stored.shape == (h, w, c)  # MATLAB convention
    meta = CubeMeta(bands=c, wavelengths=list(ref.wavelengths), extras={"mat_version": "7.3", "dataset": "hsi"})
    write_cube(tmp_path / "v73.mat", ref.cube, meta)
    assert (tmp_path / "v73.mat").read_bytes()[:10] == b"MATLAB 7.3"
    with h5py.File(tmp_path / "v73.mat", "r") as f:
        assert f["hsi"].shape == (c, w, h)
    cube, meta = read_cube(tmp_path / "v73.mat")
    np.testing.assert_array_equal(cube, ref.cube)
    assert meta.extras["mat_version"] == "7.3" and meta.wavelengths == ref.wavelengths


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
def test_memory_uri_round_trip(ref, memfs, name: str) -> None:
    uri = f"memory://bucket/out/{name}"
    write_cube(uri, ref.cube, ref.meta())
    cube, meta = read_cube(uri)
    np.testing.assert_array_equal(cube, ref.cube)
    assert meta.extras["source"] == uri
    part, _ = read_cube(uri, window=(1, 2, 3, 4), bands=[7, 0])
    np.testing.assert_array_equal(part, ref.cube[[7, 0], 1:4, 2:6])
    assert cube_shape(uri) == ref.shape
    expected = {"/bucket/out/r.hdr", "/bucket/out/r.img"} if name == "r.hdr" else {f"/bucket/out/{name}"}
    assert set(memfs.find("/bucket")) == expected


def test_memory_uri_reads_fixture_files(ref, memfs, source: tuple[str, Path]) -> None:
    _, path = source
    for file in path.parent.iterdir():
        memfs.put_file(str(file), f"/in/{file.name}")
    uri = f"memory://in/{path.name}"
    cube, _ = read_cube(uri, window=(2, 3, 5, 7))
    np.testing.assert_array_equal(cube, ref.cube[:, 2:7, 3:10])
    assert cube_shape(uri) == ref.shape


def test_file_uri(ref, tmp_path: Path) -> None:
    path = ref.make("geotiff", tmp_path)
    cube, _ = read_cube(f"file://{path}")
    np.testing.assert_array_equal(cube, ref.cube)
    write_cube(f"file://{tmp_path}/sub/out.npy", ref.cube)
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / "out.npy"), ref.cube)


def test_cog_overviews_never_blend_integers(tmp_path: Path) -> None:
    """Overviews average float measurements but take nearest neighbours of integers (masks, indices), so a 0/1 mask
    stays 0/1 at every level."""
    rng = np.random.default_rng(1)
    mask = (rng.random((1, 600, 520)) > 0.5).astype(np.uint8)
    write_cube(tmp_path / "m.tif", mask)
    with rasterio.open(tmp_path / "m.tif", overview_level=0) as ds:
        assert ds.height == 300 and set(np.unique(ds.read(1))) <= {0, 1}
    smooth = np.linspace(0.0, 1.0, 600 * 520, dtype=np.float32).reshape(1, 600, 520)
    write_cube(tmp_path / "f.tif", smooth)
    with rasterio.open(tmp_path / "f.tif", overview_level=0) as ds:
        np.testing.assert_allclose(ds.read(1), smooth[0].reshape(300, 2, 260, 2).mean(axis=(1, 3)), atol=1e-6)
