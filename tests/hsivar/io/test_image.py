"""PNG and JPEG images as cubes: fixture files written by Pillow and by GDAL, independently of write_cube."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from hsivar.io import CubeError, CubeMeta, cube_shape, detect_format, read_cube, split_listing, write_cube


def _rgb(h: int = 20, w: int = 30, dtype: type = np.uint8) -> np.ndarray:
    """A smooth (3, h, w) RGB image of ``dtype``'s full range (smooth: JPEG keeps it within a few levels)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    full = np.iinfo(dtype).max
    chans = [0.5 + 0.4 * np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(3)]
    return np.round(np.stack(chans) * full).astype(dtype)


def test_reads_pillow_rgb_grey_and_rgba(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb.transpose(1, 2, 0)).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[1]).save(tmp_path / "grey.png")
    alpha = np.full(rgb.shape[1:], 255, np.uint8)
    alpha[3:7, 5:12] = 0  # pixels the image does not show
    Image.fromarray(np.concatenate([rgb, alpha[None]]).transpose(1, 2, 0), mode="RGBA").save(tmp_path / "rgba.png")

    cube, meta = read_cube(tmp_path / "rgb.png")
    np.testing.assert_array_equal(cube, rgb)
    assert cube.dtype == np.float32 and meta.dtype == "uint8" and meta.format == "png"
    assert meta.band_names == ["red", "green", "blue"] and meta.missing is None and meta.transform is None
    grey, gmeta = read_cube(tmp_path / "grey.png")
    np.testing.assert_array_equal(grey, rgb[1:2])
    assert gmeta.bands == 1
    cube, meta = read_cube(tmp_path / "rgba.png")
    np.testing.assert_array_equal(cube, rgb)  # alpha is the mask, not a fourth band
    assert meta.bands == 3 and cube_shape(tmp_path / "rgba.png") == (3, 20, 30)
    np.testing.assert_array_equal(meta.missing, np.broadcast_to(alpha == 0, rgb.shape))


def test_sixteen_bit_rgb_png_is_lossless(tmp_path: Path) -> None:
    """Pillow would read this file as 8-bit RGB; the reader keeps all 16 bits."""
    rgb = _rgb(dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "deep.png", "w", driver="PNG", width=30, height=20, count=3,
                           dtype="uint16") as ds:
            ds.write(rgb)
    cube, meta = read_cube(tmp_path / "deep.png")
    np.testing.assert_array_equal(cube, rgb)
    assert meta.dtype == "uint16"
    window, _ = read_cube(tmp_path / "deep.png", window=(4, 6, 8, 10), bands=[2])
    np.testing.assert_array_equal(window, rgb[2:3, 4:12, 6:16])


def test_write_round_trips_with_alpha_and_no_side_files(tmp_path: Path) -> None:
    rgb = _rgb(dtype=np.uint16)
    missing = np.zeros(rgb.shape, bool)
    missing[:, 2:5, 3:9] = True
    write_cube(tmp_path / "out.png", rgb, CubeMeta(bands=3, wavelengths=[450.0, 550.0, 650.0], missing=missing))
    cube, meta = read_cube(tmp_path / "out.png")
    np.testing.assert_array_equal(cube, rgb)
    np.testing.assert_array_equal(meta.missing, missing)
    write_cube(tmp_path / "grey.png", rgb[:1].astype(np.float32) / 257, dtype="uint8")  # rounds and clips
    np.testing.assert_array_equal(read_cube(tmp_path / "grey.png")[0], np.round(rgb[:1] / 257))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.png", "out.png"]  # no .aux.xml
    with Image.open(tmp_path / "out.png") as im:  # what any viewer sees
        assert im.mode in ("RGBA", "RGBa") or im.mode.startswith("RGBA")


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    rgb = _rgb(64, 64)
    write_cube(tmp_path / "photo.jpg", rgb)
    cube, meta = read_cube(tmp_path / "photo.jpg")
    assert meta.format == "jpeg" and detect_format("x.JPEG") == "jpeg" and cube.shape == (3, 64, 64)
    assert np.abs(cube - rgb).mean() < 2.0  # lossy, quality 95
    with Image.open(tmp_path / "photo.jpg") as im:
        assert im.format == "JPEG" and im.size == (64, 64)


def test_listing_takes_images_as_cubes() -> None:
    cubes, others = split_listing(["a/x.png", "a/y.JPG", "a/notes.txt"])
    assert cubes == ["a/x.png", "a/y.JPG"] and others == ["a/notes.txt"]


@pytest.mark.parametrize(
    ("name", "cube", "meta", "problem"),
    [
        ("f.png", np.zeros((3, 4, 4), np.float32), None, "png cannot store dtype float32"),
        ("eight.png", np.zeros((8, 4, 4), np.uint8), None, "png stores 1 or 3 bands, the cube has 8"),
        ("m.jpg", np.zeros((3, 4, 4), np.uint8), CubeMeta(bands=3, missing=np.ones((3, 4, 4), bool)),
         "a JPEG holds no mask"),
        ("d.png", np.zeros((3, 4, 4), np.uint8),
         CubeMeta(bands=3, missing=np.stack([np.ones((4, 4), bool), np.zeros((4, 4), bool), np.zeros((4, 4), bool)])),
         "one mask \\(alpha\\) for all its bands"),
    ],
)
def test_write_refuses_what_an_image_cannot_hold(tmp_path: Path, name: str, cube: np.ndarray,
                                                  meta: CubeMeta | None, problem: str) -> None:
    with pytest.raises(CubeError, match=problem) as err:
        write_cube(tmp_path / name, cube, meta)
    assert str(tmp_path / name) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_images_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(CubeError, match="broken.png"):
        read_cube(tmp_path / "broken.png")
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P").save(tmp_path / "palette.png")
    with pytest.raises(CubeError, match="palette.png: a palette"):
        read_cube(tmp_path / "palette.png")
