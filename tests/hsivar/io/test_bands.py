"""Band operations: select_bands, resample_bands, match_bands."""

from __future__ import annotations

import numpy as np
import pytest

from hsivar.io import CubeError, CubeMeta, match_bands, resample_bands, select_bands


def test_select_bands(ref) -> None:
    meta = ref.meta()
    sub, sub_meta = select_bands(ref.cube, meta, [6, 2])
    np.testing.assert_array_equal(sub, ref.cube[[6, 2]])
    assert sub_meta.bands == 2 and sub_meta.wavelengths == [ref.wavelengths[6], ref.wavelengths[2]]
    assert sub_meta.band_names == [ref.names[6], ref.names[2]] and meta.bands == ref.shape[0]  # input untouched
    with pytest.raises(CubeError, match="out of range"):
        select_bands(ref.cube, meta, [ref.shape[0]])


def test_resample_linear_spectrum_is_exact(ref) -> None:
    c, h, w = ref.shape
    wl = np.asarray(ref.wavelengths)
    offset = np.random.default_rng(2).random((1, h, w))
    slope = np.random.default_rng(3).random((1, h, w))
    cube = (offset + slope * wl[:, None, None] / 100).astype(np.float32)
    targets = [405.0, 433.3, 500.0, 612.5, 679.9, 680.0]
    out, meta = resample_bands(cube, CubeMeta(bands=c, wavelengths=list(ref.wavelengths)), targets)
    expected = offset + slope * np.asarray(targets)[:, None, None] / 100
    assert out.dtype == np.float32 and out.shape == (len(targets), h, w)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert meta.bands == len(targets) and meta.wavelengths == targets


def test_resample_refusals(ref) -> None:
    c = ref.shape[0]
    with pytest.raises(CubeError, match="wavelengths are unknown"):
        resample_bands(ref.cube, CubeMeta(bands=c), [500.0])
    with pytest.raises(CubeError, match="outside the source range"):
        resample_bands(ref.cube, CubeMeta(bands=c, wavelengths=list(ref.wavelengths)), [0.5, 0.6])


def test_match_bands(ref) -> None:
    c, h, w = ref.shape
    meta = ref.meta()
    same, same_meta = match_bands(ref.cube, meta, c)
    assert same is ref.cube and same_meta is meta
    targets = list(np.linspace(400, 680, 31))
    out, out_meta = match_bands(ref.cube, meta, 31, targets)
    assert out.shape == (31, h, w) and out_meta.bands == 31
    # The end targets are the end source bands: those come back unchanged (both checks run).
    np.testing.assert_allclose(out[0], ref.cube[0])
    np.testing.assert_allclose(out[-1], ref.cube[-1])
    with pytest.raises(CubeError, match=r"has 8 bands but 31 are expected") as err:
        match_bands(ref.cube, CubeMeta(bands=c, extras={"source": "s3://b/scene.tif"}), 31, targets)
    assert "s3://b/scene.tif" in str(err.value)
    with pytest.raises(CubeError, match=r"has 8 bands but 31 are expected"):
        match_bands(ref.cube, meta, 31)


def test_spacing_fwhm_is_the_mean_neighbour_spacing_in_any_band_order() -> None:
    from hsivar.io.bands import spacing_fwhm

    np.testing.assert_allclose(spacing_fwhm([400.0, 410.0, 430.0, 460.0]), [10.0, 15.0, 25.0, 30.0])
    np.testing.assert_allclose(spacing_fwhm([430.0, 400.0, 460.0, 410.0]), [25.0, 10.0, 30.0, 15.0])
    np.testing.assert_allclose(spacing_fwhm([500.0, 500.2]), [1.0, 1.0])  # at least 1 nm
    np.testing.assert_allclose(spacing_fwhm([550.0], single=7.5), [7.5])
