"""EnMAP L1C / L2A products (:mod:`hsivar.io.enmap`): small real products written by ``write_demo`` (int16
GeoTIFF + METADATA.XML + quality layers), read back through read_cube / cube_shape."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from hsivar.io import cube_shape, detect_format, read_cube, split_listing
from hsivar.io.enmap import L2A_GAIN, NODATA, member_of, write_demo

C, H, W = 12, 20, 24
WAVELENGTHS = np.linspace(420.0, 2400.0, C)
TOLERANCE = L2A_GAIN / 2 + 1e-6  # int16 DN x 1e-4: half a quantisation step (+ float32 rounding)


@pytest.fixture(scope="module")
def reflectance() -> np.ndarray:
    """(C, H, W) reflectance in [0, 1], one NaN pixel (written as no-data)."""
    cube = np.random.default_rng(7).uniform(0.0, 1.0, size=(C, H, W)).astype(np.float32)
    cube[:, 0, 0] = np.nan
    cube.setflags(write=False)
    return cube


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    """(H, W) pixels flagged as cloud."""
    mask = np.zeros((H, W), bool)
    mask[4:9, 10:15] = True
    mask.setflags(write=False)
    return mask


@pytest.fixture
def product(tmp_path: Path, reflectance: np.ndarray, cloud: np.ndarray) -> Path:
    """A demo L2A product in its own folder; returns its SPECTRAL_IMAGE.TIF."""
    return write_demo(tmp_path / "product", reflectance, WAVELENGTHS, missing=cloud)


def _member(spectral: Path, suffix: str) -> Path:
    return spectral.with_name(spectral.name.replace("-SPECTRAL_IMAGE.TIF", suffix))


def _set_layer(spectral: Path, name: str, values: np.ndarray) -> None:
    """Overwrite quality layer ``QL_QUALITY_<name>`` with (H, W) ``values``."""
    with rasterio.open(_member(spectral, f"-QL_QUALITY_{name}.TIF"), "r+") as ds:
        ds.write(values.astype(np.uint8), 1)


def _expected(reflectance: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(reflectance), NODATA, reflectance)


# ------------------------------------------------------------------------------------------------
# The product as written


def test_demo_layout(product: Path) -> None:
    names = sorted(p.name for p in product.parent.iterdir())
    prefix = product.name[: -len("-SPECTRAL_IMAGE.TIF")]
    assert re.fullmatch(r"ENMAP01-____L2A-DT\d{10}_\d{8}T\d{6}Z_\d{3}_V\d{6}_\d{8}T\d{6}Z", prefix)
    assert names == sorted(
        prefix + s
        for s in (
            "-SPECTRAL_IMAGE.TIF",
            "-METADATA.XML",
            "-QL_PIXELMASK.TIF",
            "-QL_QUALITY_CLOUD.TIF",
            "-QL_QUALITY_CIRRUS.TIF",
            "-QL_QUALITY_HAZE.TIF",
            "-QL_QUALITY_SNOW.TIF",
            "-QL_QUALITY_CLOUDSHADOW.TIF",
        )
    )  # no temporaries left
    with rasterio.open(product) as ds:
        assert ds.count == C and ds.dtypes[0] == "int16" and ds.nodata == NODATA
        assert ds.crs.to_epsg() == 32633 and ds.res == (30.0, 30.0)
    xml = _member(product, "-METADATA.XML").read_text()
    for element in (
        "<level_X",
        "<bandCharacterisation>",
        '<bandID number="12">',
        "<GainOfBand>0.0001</GainOfBand>",
        "<channels>12</channels>",
        "<level>L2A</level>",
        "<startTime>",
    ):
        assert element in xml


def test_demo_index_makes_names_unique(tmp_path: Path, reflectance: np.ndarray) -> None:
    first = write_demo(tmp_path, reflectance, WAVELENGTHS, index=0)
    second = write_demo(tmp_path, reflectance, WAVELENGTHS, index=1)
    assert first != second and first.exists() and second.exists()
    assert read_cube(first)[1].extras["product"]["datetime"] != read_cube(second)[1].extras["product"]["datetime"]


# ------------------------------------------------------------------------------------------------
# Reading


def test_read_physical_values_and_metadata(product: Path, reflectance: np.ndarray) -> None:
    cube, meta = read_cube(product)
    assert cube.dtype == np.float32 and cube.shape == (C, H, W)
    np.testing.assert_allclose(cube, _expected(reflectance), atol=TOLERANCE, rtol=0)
    assert (cube[:, 0, 0] == NODATA).all()  # no-data kept unscaled
    assert meta.format == "enmap" and meta.layout == "chw" and meta.dtype == "float32"
    assert meta.nodata == NODATA and meta.bands == C
    np.testing.assert_allclose(meta.wavelengths, WAVELENGTHS, atol=1e-3)
    np.testing.assert_allclose(meta.fwhm, np.abs(np.gradient(WAVELENGTHS)), atol=1e-3)
    assert meta.crs == "EPSG:32633"
    assert meta.transform == pytest.approx((30.0, 0.0, 380_000.0, 0.0, -30.0, 5_830_000.0))
    assert meta.extras["scale"] == [L2A_GAIN] * C and meta.extras["offset"] == [0.0] * C
    assert meta.extras["source_dtype"] == "int16"
    product_facts = meta.extras["product"]
    assert product_facts["level"] == "L2A" and product_facts["platform"] == "EnMAP"
    assert product_facts["datetime"] == "2022-06-09T08:12:27Z"
    assert product_facts["version"] == "1.5.2"
    assert cube_shape(product) == (C, H, W)
    assert detect_format(product) == "enmap"


def test_window_and_band_subset(product: Path, reflectance: np.ndarray) -> None:
    full, meta = read_cube(product)
    window = (3, 5, 10, 12)
    part, part_meta = read_cube(product, window=window)
    np.testing.assert_array_equal(part, full[:, 3:13, 5:17])
    assert part_meta.transform == pytest.approx((30.0, 0.0, 380_000.0 + 5 * 30, 0.0, -30.0, 5_830_000.0 - 3 * 30))
    np.testing.assert_array_equal(part_meta.missing, meta.missing[:, 3:13, 5:17])

    bands = [7, 0, 3]
    sub, sub_meta = read_cube(product, bands=bands, window=window)
    np.testing.assert_array_equal(sub, full[bands][:, 3:13, 5:17])
    np.testing.assert_allclose(sub_meta.wavelengths, WAVELENGTHS[bands], atol=1e-3)
    assert sub_meta.fwhm == [meta.fwhm[b] for b in bands]
    assert sub_meta.missing.shape == (3, 10, 12)


def test_per_band_gain_offset_l1c(product: Path, reflectance: np.ndarray) -> None:
    """L1C radiance: each band's own GainOfBand / OffsetOfBand; no-data DNs stay unscaled."""
    xml = _member(product, "-METADATA.XML")
    text = xml.read_text().replace("<level>L2A</level>", "<level>L1C</level>")
    start = text.index('<bandID number="2">')
    end = text.index("</bandID>", start)
    band = text[start:end].replace("<GainOfBand>0.0001</GainOfBand>", "<GainOfBand>0.002</GainOfBand>")
    band = band.replace("<OffsetOfBand>0</OffsetOfBand>", "<OffsetOfBand>-0.5</OffsetOfBand>")
    xml.write_text(text[:start] + band + text[end:])
    with rasterio.open(product) as ds:
        dn = ds.read(2).astype(np.float64)
    cube, meta = read_cube(product)
    np.testing.assert_allclose(cube[1], np.where(dn == NODATA, NODATA, dn * 0.002 - 0.5), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(cube[0], _expected(reflectance)[0], atol=TOLERANCE, rtol=0)
    assert meta.extras["scale"][1] == 0.002 and meta.extras["offset"][1] == -0.5
    assert meta.extras["product"]["level"] == "L1C"
    assert meta.extras["product"]["quantity"] == "top-of-atmosphere radiance"


def test_pixel_interleaved_without_nodata_tag(product: Path, reflectance: np.ndarray) -> None:
    """A pixel-interleaved cube without a GeoTIFF nodata tag: nodata from specific/backgroundValue."""
    with rasterio.open(product) as ds:
        profile, dn = {**ds.profile, "interleave": "pixel"}, ds.read()
    profile.pop("nodata")
    with rasterio.open(product, "w", **profile) as ds:
        ds.write(dn)
    cube, meta = read_cube(product)
    assert meta.extras["tiff_interleave"] == "pixel" and meta.nodata == NODATA
    np.testing.assert_allclose(cube, _expected(reflectance), atol=TOLERANCE, rtol=0)


def test_remote_product(memfs, product: Path, reflectance: np.ndarray) -> None:
    for path in product.parent.iterdir():
        memfs.pipe(f"/bucket/scene/{path.name}", path.read_bytes())
    uri = f"memory://bucket/scene/{product.name}"
    cube, meta = read_cube(uri, window=(2, 4, 6, 8), bands=[1, 5])
    np.testing.assert_allclose(cube, _expected(reflectance)[[1, 5], 2:8, 4:12], atol=TOLERANCE, rtol=0)
    assert meta.extras["metadata_file"].startswith("memory://") and meta.missing is not None


# ------------------------------------------------------------------------------------------------
# Missing entries from the quality layers


def test_cloud_is_missing_in_every_band(product: Path, cloud: np.ndarray) -> None:
    _, meta = read_cube(product)
    np.testing.assert_array_equal(meta.missing, np.broadcast_to(cloud, (C, H, W)))
    assert meta.extras["quality_layers"] == ["CLOUD", "CIRRUS", "SNOW", "CLOUDSHADOW"]


def test_cirrus_snow_shadow_are_missing_haze_is_not(product: Path, cloud: np.ndarray) -> None:
    expected = cloud.copy()
    for row, name in enumerate(("CIRRUS", "SNOW", "CLOUDSHADOW")):
        flags = np.zeros((H, W), bool)
        flags[15 + row, :3] = True
        _set_layer(product, name, flags * 2)  # any nonzero value is a flag
        expected |= flags
    haze = np.zeros((H, W), bool)
    haze[18:, 20:] = True
    _set_layer(product, "HAZE", haze)
    _, meta = read_cube(product)
    np.testing.assert_array_equal(meta.missing, np.broadcast_to(expected, (C, H, W)))
    assert not meta.missing[:, 18:, 20:].any()


def test_absent_quality_layers_are_not_used(product: Path, cloud: np.ndarray) -> None:
    _member(product, "-QL_QUALITY_SNOW.TIF").unlink()
    _, meta = read_cube(product)
    np.testing.assert_array_equal(meta.missing[0], cloud)
    assert "SNOW" not in meta.extras["quality_layers"]
    for name in ("CLOUD", "CIRRUS", "CLOUDSHADOW"):
        _member(product, f"-QL_QUALITY_{name}.TIF").unlink()
    _, meta = read_cube(product)
    assert meta.missing is None


def test_clear_product_has_no_missing(tmp_path: Path, reflectance: np.ndarray) -> None:
    _, meta = read_cube(write_demo(tmp_path, reflectance, WAVELENGTHS))
    assert meta.missing is None


# ------------------------------------------------------------------------------------------------
# Malformed products


def test_quality_layer_of_another_size(product: Path, raises_naming) -> None:
    layer = _member(product, "-QL_QUALITY_CIRRUS.TIF")
    with rasterio.open(layer) as ds:
        profile = {**ds.profile, "width": W - 1}
    with rasterio.open(layer, "w", **profile) as ds:
        ds.write(np.zeros((1, H, W - 1), np.uint8))
    with raises_naming(layer, "quality layer is 20 x 23 pixels"):
        read_cube(product)


def test_missing_metadata(product: Path, raises_naming) -> None:
    xml = _member(product, "-METADATA.XML")
    xml.unlink()
    with raises_naming(xml, "metadata file missing"):
        read_cube(product)
    with raises_naming(xml, "metadata file missing"):
        cube_shape(product)


def test_malformed_metadata(product: Path, raises_naming) -> None:
    xml = _member(product, "-METADATA.XML")
    xml.write_text(xml.read_text()[:500])
    with raises_naming(xml, "malformed XML"):
        read_cube(product)


def test_metadata_without_band_table(product: Path, raises_naming) -> None:
    xml = _member(product, "-METADATA.XML")
    xml.write_text("<level_X><base><level>L2A</level></base></level_X>")
    with raises_naming(xml, "bandCharacterisation"):
        read_cube(product)


def test_metadata_bad_number(product: Path, raises_naming) -> None:
    xml = _member(product, "-METADATA.XML")
    xml.write_text(xml.read_text().replace("<GainOfBand>0.0001</GainOfBand>", "<GainOfBand>n/a</GainOfBand>", 1))
    with raises_naming(xml, "band 1 GainOfBand"):
        read_cube(product)


def test_band_count_disagrees(product: Path, raises_naming) -> None:
    xml = _member(product, "-METADATA.XML")
    text = xml.read_text()
    xml.write_text(text.replace("<channels>12</channels>", "<channels>11</channels>"))
    with raises_naming(xml, "channels says 11 bands"):
        read_cube(product)
    # 11 bands described and announced, 12 in the GeoTIFF
    last = text.index('<bandID number="12">')
    trimmed = text[:last] + text[text.index("</bandID>", last) + len("</bandID>") :]
    xml.write_text(trimmed.replace("<channels>12</channels>", "<channels>11</channels>"))
    with raises_naming(product, "12 raster bands, but .* describes 11 bands"):
        cube_shape(product)


def test_truncated_spectral_image(product: Path, raises_naming) -> None:
    data = product.read_bytes()
    product.write_bytes(data[: len(data) // 2])
    with raises_naming(product, "RasterioIOError"):
        read_cube(product)


def test_not_a_spectral_image_name(product: Path, raises_naming) -> None:
    other = product.with_name("scene.tif")
    shutil.copy(product, other)
    with raises_naming(other, "not an EnMAP spectral image"):
        read_cube(other, format="enmap")


# ------------------------------------------------------------------------------------------------
# Listings


def test_listing_keeps_the_spectral_image_only(product: Path) -> None:
    folder = product.parent
    listing = [str(p) for p in sorted(folder.iterdir())] + [str(folder / "README.txt")]
    cubes, others = split_listing(listing)
    assert cubes == [str(product)]
    assert others == [str(folder / "README.txt")]
    thumbnail = str(_member(product, "-THUMBNAIL.jpg"))
    assert member_of(thumbnail) == str(product)
    assert member_of(str(product)) is None
