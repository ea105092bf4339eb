"""PRISMA products: small L2D products written in the real HDF-EOS5 layout by :func:`prisma_demo.write_demo`, read
back through :func:`hsivar.io.read_cube` (values, bands, georeferencing, windows, the VNIR/SWIR overlap, the
error matrices) and broken in the ways real files break."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest

from hsivar.io import CubeError, cube_shape, detect_format, prisma, prisma_demo, read_cube

C, H, W = 12, 20, 24
WAVELENGTHS = np.linspace(420.0, 2400.0, C)  # 4 bands below 1000 nm (VNIR), 8 above (SWIR)
SWATH = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields"
QUANTUM = 1.01 / 65535  # one DN of the demo's L2 scale [-0.01, 1]


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    """(C, H, W) reflectance in [0, 1)."""
    return np.random.default_rng(7).uniform(0.0, 1.0, (C, H, W)).astype(np.float32)


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    """(H, W) pixels flagged in the error matrices."""
    mask = np.zeros((H, W), bool)
    mask[3:6, 4:9] = True
    mask[15, 20] = True
    return mask


@pytest.fixture
def product(tmp_path: Path, cube: np.ndarray, cloud: np.ndarray) -> Path:
    """A fresh demo L2D product of ``cube`` with ``cloud`` flagged."""
    return prisma_demo.write_demo(tmp_path, cube, WAVELENGTHS, missing=cloud)


@pytest.fixture
def rule(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``rule(name)`` sets the module's overlap rule for this test only."""
    return lambda name: monkeypatch.setattr(prisma, "OVERLAP_RULE", name)


def test_demo_is_in_the_real_layout(product: Path) -> None:
    assert product.name == "PRS_L2D_STD_20200524103704_20200524103708_0001.he5"
    assert detect_format(product) == "prisma"
    with h5py.File(product) as f:
        vnir, swir = f[f"{SWATH}/VNIR_Cube"], f[f"{SWATH}/SWIR_Cube"]
        # (rows, bands, cols) uint16: 4 VNIR bands + 3 undelivered leading slots; 8 + 2 overlap + 2 trailing
        assert vnir.dtype == np.uint16 and vnir.shape == (H, 7, W)
        assert swir.shape == (H, 12, W)
        assert f[f"{SWATH}/VNIR_PIXEL_L2_ERR_MATRIX"].shape == vnir.shape
        cw = f.attrs["List_Cw_Vnir"]
        assert list(cw[:3]) == [0, 0, 0] and list(f.attrs["List_Cw_Vnir_Flags"][:4]) == [0, 0, 0, 1]
        assert np.all(np.diff(cw[3:]) < 0)  # stored from long to short wavelength
        assert list(f.attrs["List_Cw_Swir"][-2:]) == [0, 0]
        assert f.attrs["Epsg_Code"] == 32632 and "L2ScaleSwirMax" in f.attrs
        assert vnir[:, 3:, :].min() >= 1 and vnir[:, :3, :].max() == 0  # DN 0 is the fill


def test_read_values_bands_and_georeferencing(product: Path, cube: np.ndarray) -> None:
    data, meta = read_cube(product)
    assert data.shape == (C, H, W) and data.dtype == np.float32
    np.testing.assert_allclose(data, cube, atol=QUANTUM / 2 + 1e-6)
    np.testing.assert_allclose(meta.wavelengths, WAVELENGTHS, atol=1e-3)
    np.testing.assert_allclose(meta.fwhm, np.full(C, 180.0), atol=1e-3)  # the band spacing
    # default rule "swir": VNIR below the shortest SWIR band (the 2-band overlap comes from SWIR)
    assert meta.band_names == ["VNIR_7", "VNIR_6", "SWIR_10", "SWIR_9"] + [f"SWIR_{k}" for k in range(8, 0, -1)]
    assert meta.crs == "EPSG:32632"
    assert meta.transform == (30.0, 0.0, 500_000.0, 0.0, -30.0, 5_000_000.0)
    assert (meta.format, meta.dtype, meta.layout, meta.nodata) == ("prisma", "float32", "chw", 0.0)
    facts = meta.extras["product"]
    assert facts["level"] == "L2D" and facts["datetime"] == "2020-05-24T10:37:04Z"
    assert facts["bands"] == {"VNIR": [7, 6], "SWIR": list(range(10, 0, -1))} and facts["overlap_rule"] == "swir"
    assert meta.extras["offset"] == {"VNIR": -0.01, "SWIR": -0.01}
    assert "warnings" not in meta.extras


def test_window_and_band_subset(product: Path) -> None:
    full, _ = read_cube(product)
    block, meta = read_cube(product, window=(5, 7, 10, 12), bands=[11, 0, 3, 3])
    np.testing.assert_array_equal(block, full[[11, 0, 3, 3], 5:15, 7:19])
    assert meta.transform == (30.0, 0.0, 500_000.0 + 7 * 30, 0.0, -30.0, 5_000_000.0 - 5 * 30)
    assert meta.band_names == ["SWIR_1", "VNIR_7", "SWIR_9", "SWIR_9"]
    assert cube_shape(product) == (C, H, W)


def test_missing_from_error_matrices(product: Path, cloud: np.ndarray) -> None:
    _, meta = read_cube(product)
    np.testing.assert_array_equal(meta.missing, np.broadcast_to(cloud, (C, H, W)))
    _, meta = read_cube(product, window=(0, 0, 3, 3))
    assert meta.missing is None  # nothing flagged there


@pytest.mark.parametrize(
    ("name", "count", "names_at_overlap"),
    [("swir", C, ["SWIR_10", "SWIR_9"]), ("vnir", C, ["VNIR_5", "VNIR_4"]),
     ("both", C + 2, ["VNIR_5", "SWIR_10", "VNIR_4", "SWIR_9"])],
)  # fmt: skip
def test_overlap_rules(product: Path, cube: np.ndarray, rule: Callable[[str], None], name: str, count: int,
                       names_at_overlap: list[str]) -> None:
    rule(name)
    data, meta = read_cube(product)
    assert data.shape[0] == count and meta.extras["product"]["overlap_rule"] == name
    assert meta.band_names[2:2 + len(names_at_overlap)] == names_at_overlap
    # the demo writes the same values to both cubes: every band matches the input band of its wavelength
    source = [int(np.argmin(np.abs(WAVELENGTHS - w))) for w in meta.wavelengths]
    np.testing.assert_allclose(data, cube[source], atol=QUANTUM / 2 + 1e-6)
    assert meta.missing.shape == data.shape


def test_unknown_overlap_rule(product: Path, rule: Callable[[str], None]) -> None:
    rule("middle")
    with pytest.raises(CubeError, match="overlap rule 'middle'"):
        read_cube(product)


@pytest.mark.parametrize(("dataset", "names"), [
    ("vnir", ["VNIR_7", "VNIR_6", "VNIR_5", "VNIR_4"]),
    ("SWIR", [f"SWIR_{k}" for k in range(10, 0, -1)]),
    ("both", None),
])  # fmt: skip
def test_cube_selection(product: Path, dataset: str, names: list[str] | None) -> None:
    _, meta = read_cube(product, dataset=dataset)
    assert meta.band_names == (names or read_cube(product)[1].band_names)
    assert cube_shape(product, dataset=dataset)[0] == len(meta.band_names)


def test_unknown_selection(product: Path, raises_naming: Callable) -> None:
    with raises_naming(product, "dataset='pan'"):
        read_cube(product, dataset="pan")


def test_vnir_only_product(tmp_path: Path, cube: np.ndarray, raises_naming: Callable) -> None:
    wl = np.linspace(410.0, 990.0, 5)
    path = prisma_demo.write_demo(tmp_path, cube[:5], wl, index=3)
    assert path.name.startswith("PRS_L2D_STD_20200527")
    with h5py.File(path) as f:
        assert f[f"{SWATH}/SWIR_Cube"].shape == (H, 0, W) and f.attrs["List_Cw_Swir"].size == 0
    data, meta = read_cube(path)
    np.testing.assert_allclose(data, cube[:5], atol=QUANTUM / 2 + 1e-6)
    assert meta.extras["product"]["cubes"] == ["VNIR"] and meta.missing is None
    with raises_naming(path, "no delivered band in the SWIR"):
        read_cube(path, dataset="swir")


def test_fill_stays_nodata(product: Path) -> None:
    with h5py.File(product, "r+") as f:
        f[f"{SWATH}/SWIR_Cube"][0, 0, 0] = 0  # slot 1 = the longest wavelength = the last band
        f.attrs["L2ScaleSwirMin"] = np.float32(-0.5)
        f.attrs["L2ScaleSwirMax"] = np.float32(1.5)
    data, meta = read_cube(product, bands=[C - 1])
    assert data[0, 0, 0] == 0.0 and meta.nodata == 0.0
    with h5py.File(product) as f:
        dn = float(f[f"{SWATH}/SWIR_Cube"][0, 0, 1])
    assert data[0, 0, 1] == pytest.approx(-0.5 + dn * 2.0 / 65535, abs=1e-5)
    assert meta.extras["offset"]["SWIR"] == -0.5


def test_remote_read(product: Path, memfs: fsspec.AbstractFileSystem) -> None:
    memfs.pipe(f"/prs/{product.name}", product.read_bytes())
    data, meta = read_cube(f"memory://prs/{product.name}", window=(2, 3, 4, 5))
    np.testing.assert_array_equal(data, read_cube(product)[0][:, 2:6, 3:8])
    assert meta.crs == "EPSG:32632"


def test_truncated_file(product: Path, raises_naming: Callable) -> None:
    content = product.read_bytes()
    product.write_bytes(content[: len(content) // 2])
    with raises_naming(product, "cannot read as prisma"):
        read_cube(product)


def test_missing_cube_dataset(product: Path, raises_naming: Callable) -> None:
    with h5py.File(product, "r+") as f:
        del f[f"{SWATH}/VNIR_Cube"]
    with raises_naming(product, "missing dataset .*VNIR_Cube"):
        read_cube(product)


def test_wavelengths_not_matching_band_count(product: Path, raises_naming: Callable) -> None:
    with h5py.File(product, "r+") as f:
        f.attrs["List_Cw_Swir"] = f.attrs["List_Cw_Swir"][:-1]
    with raises_naming(product, "List_Cw_Swir has 11 values for the 12 bands of SWIR_Cube"):
        cube_shape(product)


def test_not_a_product(tmp_path: Path, raises_naming: Callable) -> None:
    path = tmp_path / "PRS_L2D_STD_20200524103704_20200524103708_0001.he5"
    with h5py.File(path, "w") as f:
        f.create_dataset("cube", data=np.zeros((2, 3, 4)))
    with raises_naming(path, "no HDFEOS/SWATHS group"):
        read_cube(path)


def test_level1_radiance(product: Path, cloud: np.ndarray) -> None:
    """The demo turned into an L1 product: swath PRS_L1_HCO, radiance = DN / ScaleFactor - Offset, saturation
    error matrices, swath geometry (no CRS, no transform, no nodata)."""
    l1 = product.with_name(product.name.replace("PRS_L2D_STD", "PRS_L1_STD_OFFL"))
    product.rename(l1)
    with h5py.File(l1, "r+") as f:
        f.move("HDFEOS/SWATHS/PRS_L2D_HCO", "HDFEOS/SWATHS/PRS_L1_HCO")
        fields = "HDFEOS/SWATHS/PRS_L1_HCO/Data Fields"
        for name in ("VNIR", "SWIR"):
            f.move(f"{fields}/{name}_PIXEL_L2_ERR_MATRIX", f"{fields}/{name}_PIXEL_SAT_ERR_MATRIX")
            f.attrs[f"ScaleFactor_{name.title()}"] = np.float32(100.0)
            f.attrs[f"Offset_{name.title()}"] = np.float32(0.5)
        f.attrs["Processing_Level"] = np.bytes_("1")
        dn = f[f"{fields}/VNIR_Cube"][:, 6, :].astype(np.float64)  # slot 7: the shortest wavelength
    assert detect_format(l1) == "prisma"
    data, meta = read_cube(l1)
    np.testing.assert_allclose(data[0], dn / 100.0 - 0.5, rtol=1e-6)
    assert (meta.crs, meta.transform, meta.nodata) == (None, None, None)
    assert meta.extras["product"]["level"] == "L1" and meta.extras["product"]["units"] == "W m-2 sr-1 um-1"
    np.testing.assert_array_equal(meta.missing, np.broadcast_to(cloud, (C, H, W)))


def test_negative_reflectance_scale(tmp_path: Path, cube: np.ndarray) -> None:
    values = cube * 1.2 - 0.1  # below 0 and above 1: L2ScaleVnirMin/Max widen to hold them
    path = prisma_demo.write_demo(tmp_path, values, WAVELENGTHS)
    data, meta = read_cube(path)
    step = (np.ceil(100 * values.max()) - np.floor(100 * values.min()) + 1) / 100 / 65535
    np.testing.assert_allclose(data, values, atol=step / 2 + 1e-6)
    assert meta.extras["offset"]["VNIR"] < 0 and meta.missing is None
