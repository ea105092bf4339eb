"""The format table and what derives from it: detection, the listing rule, aliases, media types, and
the one-row property (a format added as one row is detected, listed, read and written everywhere)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from hsivar.io import (
    FORMAT_TABLE,
    FORMATS,
    WRITE_FORMATS,
    CubeError,
    Format,
    cube_shape,
    cube_suffixes,
    detect_format,
    format_aliases,
    format_named,
    media_types,
    output_name,
    read_cube,
    response_types,
    split_listing,
    write_cube,
)
from hsivar.io import npy as npy_format
from hsivar.io.layout import OpenOptions, Source
from hsivar.io.location import Location

ALL_EXTENSIONS = [(row.name, ext) for row in FORMAT_TABLE.values() for ext in row.extensions]


@pytest.mark.parametrize(("fmt", "ext"), ALL_EXTENSIONS)
def test_detect_format_every_extension(fmt: str, ext: str) -> None:
    assert detect_format(f"scene{ext}") == fmt
    assert detect_format(f"s3://bucket/dir.v2/SCENE{ext.upper()}?versionId=3") == fmt
    assert detect_format(Path("/data") / f"a.b{ext}") == fmt


def test_detect_format_table() -> None:
    table = {"a.NPY": "npy", "s3://b/k/a.npz": "npz", "a.h5": "hdf5", "a.hdf5": "hdf5", "a.he5": "hdf5",
             "a.mat": "mat", "a.TIF": "geotiff", "a.tiff": "geotiff", "a.hdr": "envi", "a.img": "envi",
             "a.dat": "envi", "a.raw": "envi", "a.bsq": "envi", "a.bil": "envi", "a.bip": "envi"}  # fmt: skip
    assert {k: detect_format(k) for k in table} == table
    with pytest.raises(CubeError, match=r"supported extensions: \.bil, \.bip, \.bsq, \.dat"):
        detect_format("a.zarr")


# ------------------------------------------------------------------------------------------------
# The listing rule


def test_listing_envi_header_and_data_are_one_cube() -> None:
    uris = ["s3://b/x/a.npy", "s3://b/x/scene.hdr", "s3://b/x/scene.img", "s3://b/x/notes.txt", "s3://b/x/b.tif"]
    assert split_listing(uris) == (["s3://b/x/a.npy", "s3://b/x/scene.hdr", "s3://b/x/b.tif"], ["s3://b/x/notes.txt"])


@pytest.mark.parametrize("data", ["scene.img", "scene.DAT", "scene.raw", "scene.bsq", "scene.bil", "scene.bip"])
def test_listing_drops_every_envi_data_extension(data: str) -> None:
    assert split_listing([f"/d/{data}", "/d/scene.hdr"]) == (["/d/scene.hdr"], [])


def test_listing_extensionless_envi_data_belongs_to_its_header() -> None:
    assert split_listing(["/d/scene", "/d/scene.hdr", "/d/README"]) == (["/d/scene.hdr"], ["/d/README"])
    assert split_listing(["/d/scene.img", "/d/scene.img.hdr"]) == (["/d/scene.img.hdr"], [])
    assert split_listing(["/d/SCENE", "/d/SCENE.HDR"]) == (["/d/SCENE.HDR"], [])


def test_listing_unknown_extensions_are_not_cubes() -> None:
    uris = ["/d/cube.xyz", "/d/cube.tif.gz", "/d/cube.hdf", "/d/manifest.json", "/d/lonely"]
    assert split_listing(uris) == ([], uris)


def test_listing_keeps_an_envi_data_file_without_header() -> None:
    # Reading it reports the missing header, instead of the file vanishing silently.
    assert split_listing(["/d/lonely.img", "/d/other.hdr"]) == (["/d/lonely.img", "/d/other.hdr"], [])


def test_cube_suffixes_name_each_cube_once() -> None:
    assert set(cube_suffixes()) == {".npy", ".npz", ".h5", ".hdf5", ".he5", ".mat", ".tif", ".tiff", ".hdr", ".png",
                                    ".jpg", ".jpeg"}
    names = [f"/d/c{s}" for s in cube_suffixes()]
    assert split_listing(names) == (names, [])


# ------------------------------------------------------------------------------------------------
# Aliases and media types


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("npy", "npy"), ("npz", "npz"), ("h5", "hdf5"), ("HDF5", "hdf5"), ("mat", "mat"), ("tif", "geotiff"),
     ("TIFF", "geotiff"), ("geotiff", "geotiff"), ("envi", "envi")],
)  # fmt: skip
def test_format_named(name: str, fmt: str) -> None:
    assert format_named(name) == fmt


def test_unknown_format_name_lists_the_accepted_ones() -> None:
    with pytest.raises(CubeError, match="unknown format 'zarr'; expected one of npy, npz, hdf5, h5, mat"):
        format_named("zarr")


def test_servable_formats_and_media_types() -> None:
    assert media_types() == {
        "application/x-npy": "npy", "application/npy": "npy", "image/tiff": "geotiff", "image/tif": "geotiff",
        "image/geotiff": "geotiff", "application/x-hdf5": "hdf5", "application/x-hdf": "hdf5",
        "application/hdf5": "hdf5", "image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
    }  # fmt: skip
    assert response_types() == {"npy": "application/x-npy", "geotiff": "image/tiff", "hdf5": "application/x-hdf5",
                                "png": "image/png", "jpeg": "image/jpeg"}
    assert format_aliases(servable_only=True) == {
        "npy": "npy", "tif": "geotiff", "tiff": "geotiff", "cog": "geotiff", "geotiff": "geotiff", "h5": "hdf5",
        "hdf5": "hdf5", "png": "png", "jpg": "jpeg", "jpeg": "jpeg",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Every row works, and one row is all a format needs


@pytest.mark.parametrize(("fmt", "ext"), ALL_EXTENSIONS)
def test_every_row_round_trips_a_tiny_cube(tmp_path: Path, fmt: str, ext: str) -> None:
    row = FORMAT_TABLE[fmt]
    cube = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    path = tmp_path / f"tiny{ext}"
    write_cube(path, cube, dtype=None if row.dtypes is None or "float32" in row.dtypes else "uint8")
    back, meta = read_cube(path)
    if fmt == "jpeg":  # lossy
        assert np.abs(back - cube).max() <= 8
    else:
        np.testing.assert_array_equal(back, cube)
    assert meta.format == fmt and cube_shape(path) == (3, 4, 5)


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_every_row_is_complete(fmt: str) -> None:
    row = FORMAT_TABLE[fmt]
    assert row.name == fmt and callable(row.open) and callable(row.write) and callable(row.targets)
    assert row.write_suffix in row.extensions and set(row.cube_suffixes) <= set(row.extensions)
    assert all(ext == ext.lower() and ext.startswith(".") for ext in row.extensions)
    assert all(detect_format(f"x{ext}") == fmt for ext in row.extensions)
    assert all(format_named(alias) == fmt for alias in (fmt, *row.aliases))
    assert all(media_types()[m] == fmt for m in row.media_types)
    if row.media_types:
        assert response_types()[fmt] == row.media_types[0]


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - set(WRITE_FORMATS)))
def test_every_product_row_is_complete(fmt: str, tmp_path: Path) -> None:
    """A sensor product row: recognised by name only, read-only, written as its output format, with a demo writer
    whose product it recognises and reads back."""
    row = FORMAT_TABLE[fmt]
    assert row.write is None and not row.extensions and row.name_patterns and callable(row.write_demo)
    assert FORMAT_TABLE[row.output_format].write is not None and format_named(fmt) == fmt
    assert fmt not in format_aliases() and format_aliases(products=True)[fmt] == fmt
    cube = np.random.default_rng(0).random((8, 10, 12), dtype=np.float32)
    path = Path(row.write_demo(tmp_path, cube, np.linspace(420.0, 2400.0, 8), index=3))
    assert detect_format(path) == fmt and split_listing([str(p) for p in sorted(tmp_path.iterdir())])[0] == [str(path)]
    out = output_name(path.name)
    assert detect_format(out) == row.output_format and out != path.name
    back, meta = read_cube(path, allow_nonfinite=True)
    assert back.shape == (8, 10, 12) and meta.format == fmt and meta.wavelengths is not None
    with pytest.raises(CubeError, match=f"{fmt} is a sensor product format, read but never written"):
        write_cube(tmp_path / path.name, cube)


def test_product_names_are_case_sensitive() -> None:
    """A restored EnMAP cube (``…-SPECTRAL_IMAGE.tif``) is a plain GeoTIFF, never taken for the product again."""
    assert detect_format("ENMAP01-____L2A-DT1_X-SPECTRAL_IMAGE.TIF") == "enmap"
    assert detect_format("ENMAP01-____L2A-DT1_X-SPECTRAL_IMAGE.tif") == "geotiff"
    assert detect_format("s3://b/PRS_L2D_STD_20200627102358_20200627102402_0001.he5") == "prisma"
    assert detect_format("s3://b/other.he5") == "hdf5"
    assert detect_format("EMIT_L2A_RFL_001_20220903T163129_2224611_012.nc") == "emit"
    with pytest.raises(CubeError, match="unsupported format"):
        detect_format("other.nc")


def _open_demo(loc: Location, stack: contextlib.ExitStack, opts: OpenOptions) -> Source:
    source = npy_format.open_npy(loc, stack, opts)
    source.meta.format = "demo"
    return source


def test_one_row_adds_a_format_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row = Format("demo", (".demo",), ".demo", _open_demo, npy_format.write_npy, aliases=("dm",),
                 media_types=("application/x-demo",))  # fmt: skip
    monkeypatch.setitem(FORMAT_TABLE, "demo", row)
    assert detect_format("s3://b/A.DEMO") == "demo"
    assert format_named("dm") == "demo" and format_aliases()["demo"] == "demo"
    assert media_types()["application/x-demo"] == "demo" and response_types()["demo"] == "application/x-demo"
    assert ".demo" in cube_suffixes()
    assert split_listing(["/d/a.demo", "/d/b.txt"]) == (["/d/a.demo"], ["/d/b.txt"])
    cube = np.ones((2, 3, 4), dtype=np.float32)
    write_cube(tmp_path / "c.demo", cube)
    back, meta = read_cube(tmp_path / "c.demo")
    np.testing.assert_array_equal(back, cube)
    assert meta.format == "demo"
    write_cube(tmp_path / "c.bin", cube, format="demo")
    assert read_cube(tmp_path / "c.bin", format="demo")[1].format == "demo"
