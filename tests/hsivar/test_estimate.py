"""The classical first estimate and the consistency step: each undoes its degradation and keeps what was observed."""

from __future__ import annotations

import numpy as np
import pytest

from hsivar.classical import biharmonic, richardson_lucy
from hsivar.consistency import back_project, exact_entries, project
from hsivar.deblur import deconvolve
from hsivar.degrade import Observation, degrade_for_test, observation_of_level
from hsivar.estimate import (
    band_noise_mad,
    denoise_subspace,
    destripe,
    fill_missing,
    first_estimate,
    interpolate_bands,
    spectral_basis,
    upsample_grid,
    wiener_dct,
)
from hsivar.kernels import blur_sigma
from hsivar.metrics import evaluate_record, psnr, sam
from hsivar.synth import make_cube


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A synthetic demo cube (16, 48, 48) float32 in [0, 1]: measured spectra over a real photograph."""
    return make_cube(seed=4, size=48, bands=16)[0]


def test_the_wiener_step_improves_on_its_pilot(clean: np.ndarray) -> None:
    """Guided by a pilot (here NL-means), the empirical Wiener filter of the noisy image is closer to the clean one
    than the pilot; an image smaller than a window comes back as the pilot."""
    from skimage.restoration import denoise_nl_means

    image = clean[5].astype(np.float64)
    noisy = image + np.random.default_rng(0).normal(0, 0.1, image.shape)
    pilot = denoise_nl_means(noisy, h=0.08, sigma=0.1, patch_size=5, patch_distance=6, fast_mode=True)
    out = wiener_dct(noisy, pilot, 0.1)
    assert out.shape == image.shape and psnr(out[None], image[None]) > psnr(pilot[None], image[None]) + 0.3
    assert np.array_equal(wiener_dct(noisy[:4, :4], pilot[:4, :4], 0.1), pilot[:4, :4])


def test_destripe_removes_band_own_column_offsets_and_keeps_shared_vertical_content(clean: np.ndarray) -> None:
    """A column offset in one band is removed; a bright column in every band (content, e.g. a road) is kept."""
    cube = clean.copy()
    cube[:, :, 20] += 0.3  # vertical content, shared by all bands
    striped = cube.copy()
    striped[3, :, [7, 30]] += 0.2
    striped[9, :, 12] -= 0.15
    out = destripe(striped)
    assert np.abs(out - cube).max() < 0.05 < np.abs(striped - cube).max()
    np.testing.assert_allclose(destripe(cube)[:, :, 20], cube[:, :, 20], atol=0.02)


def test_missing_bands_are_interpolated_over_wavelength() -> None:
    wl = np.array([400.0, 410.0, 440.0, 450.0])
    cube = np.stack([np.full((2, 2), v, np.float32) for v in (1.0, 0.0, 0.0, 4.0)])
    out = interpolate_bands(cube, np.array([False, True, True, False]), wl)
    assert out[1, 0, 0] == pytest.approx(1.0 + 3.0 * 10 / 50) and out[2, 0, 0] == pytest.approx(1.0 + 3.0 * 40 / 50)
    assert np.array_equal(out[[0, 3]], cube[[0, 3]])
    ends = interpolate_bands(cube, np.array([True, False, False, True]))
    assert ends[0, 0, 0] == 0.0 and ends[3, 0, 0] == 0.0  # copied from the nearest observed band


def test_fill_keeps_observed_entries_and_beats_biharmonic(clean: np.ndarray) -> None:
    degraded, rec = degrade_for_test(clean, "inpaint", 0.8)
    observed = ~rec.removed_mask
    filled = fill_missing(degraded, observed)
    assert np.array_equal(filled[observed], degraded[observed])
    assert psnr(filled, clean) > psnr(biharmonic(degraded, 0.8), clean) + 1.0


def test_sr_denoise_and_deblur_each_improve_on_their_input(clean: np.ndarray) -> None:
    lr, rec = degrade_for_test(clean, "sr", 4)
    assert psnr(upsample_grid(lr, 4), clean) > psnr(lr, clean) + 0.5
    noisy, rec = degrade_for_test(clean, "gaussian", 50)
    denoised = denoise_subspace(noisy)
    assert psnr(denoised, clean) > psnr(noisy, clean) + 8 and sam(denoised, clean) < sam(noisy, clean)
    blurred, rec = degrade_for_test(clean, "blur", 15)
    sharp = deconvolve(blurred, rec.blur_sigma)
    assert psnr(sharp, clean) > psnr(blurred, clean) + 1.5 > psnr(richardson_lucy(blurred, 15), clean) + 1.5


@pytest.mark.parametrize("shape", [(4, 32, 32), (3, 33, 20), (2, 9, 9)])
def test_the_noise_mad_is_skimages_estimate_to_the_bit(shape: tuple[int, int, int]) -> None:
    """One db2 transform over all bands gives, band by band, exactly skimage's ``estimate_sigma`` (odd sides, a band
    with a flat half, a flat band); a band whose details are all zero reads 0 (skimage: the median of nothing)."""
    from skimage.restoration import estimate_sigma

    cube = np.random.default_rng(4).normal(0.5, 0.1, shape).astype(np.float32)
    cube[0, :, : shape[2] // 2] = 0.25
    cube[1] = 0.5
    theirs = estimate_sigma(cube.astype(np.float64), channel_axis=0, average_sigmas=False)
    np.testing.assert_array_equal(band_noise_mad(cube), np.asarray(theirs))
    cube[1] = 0.0
    assert band_noise_mad(cube)[1] == 0.0


def test_few_unrelated_bands_are_denoised_at_their_own_noise_level(clean: np.ndarray) -> None:
    """Six bands that predict one another badly (different bands of different parts of the scene, as Landsat-8's six
    broad bands): the regression on the other bands reads up to 50 % more noise than there is, the wavelet MAD reads
    it within 15 %, and the denoiser, using the smaller, gains 11 dB (10.5 with the regression alone)."""
    few = np.stack([np.roll(clean[b], 9 * i, axis=1) for i, b in enumerate((0, 3, 6, 9, 12, 15))])
    sigma = 30 / 255
    noisy = (few + np.random.default_rng(1).normal(0, sigma, few.shape)).astype(np.float32)
    np.testing.assert_allclose(band_noise_mad(noisy), sigma, rtol=0.15)
    assert psnr(denoise_subspace(noisy), few) > psnr(noisy, few) + 11.0


@pytest.mark.parametrize("task,level", [("gaussian", 30), ("complex", 2), ("complex", 4), ("blur", 9), ("sr", 2),
                                        ("inpaint", 0.7), ("bandmiss", 0.3), ("haze", 1.0), ("lowlight", 0.1)])
def test_the_first_estimate_beats_the_degraded_input(clean: np.ndarray, task: str, level: float) -> None:
    degraded, rec = degrade_for_test(clean, task, level)
    obs = observation_of_level(task, level, degraded.shape).merge(Observation.detect(degraded))
    x0 = first_estimate(degraded, obs)
    assert x0.shape == clean.shape and x0.dtype == np.float32 and np.isfinite(x0).all()
    assert evaluate_record(x0, clean, rec).psnr > evaluate_record(degraded, clean, rec).psnr + 1.0
    kept = exact_entries(obs)
    if task in ("inpaint", "bandmiss"):
        assert kept is not None and np.array_equal(x0[kept], degraded[kept])
    else:
        assert kept is None  # noisy, blurred, resampled, hazy or dark: no entry was observed exactly


def test_back_projection_makes_the_estimate_agree_with_the_low_resolution_grid(clean: np.ndarray) -> None:
    import torch
    import torch.nn.functional as F

    lr, _ = degrade_for_test(clean, "sr", 4)
    guess = np.clip(clean + 0.05 * np.random.default_rng(0).standard_normal(clean.shape), 0, 1).astype(np.float32)
    fixed = back_project(guess, lr, 4)
    down = F.interpolate(torch.from_numpy(fixed)[None], size=(12, 12), mode="bicubic", align_corners=True)[0]
    assert np.abs(down.numpy() - lr[:, ::4, ::4]).max() < 1e-3
    assert psnr(fixed, clean) > psnr(guess, clean)


def test_blur_consistency_lowers_the_data_misfit(clean: np.ndarray) -> None:
    from scipy.ndimage import correlate1d

    blurred, rec = degrade_for_test(clean, "blur", 9)
    guess = np.clip(clean + 0.05 * np.random.default_rng(1).standard_normal(clean.shape), 0, 1).astype(np.float32)
    obs = Observation(clean.shape, blur_sigma=rec.blur_sigma)

    def misfit(x: np.ndarray) -> float:
        k = rec.kernel
        return float(np.abs(correlate1d(correlate1d(x, k, axis=2, mode="constant"), k, axis=1, mode="constant")
                            - blurred).mean())

    fixed = project(guess, blurred, obs)
    assert misfit(fixed) < 0.5 * misfit(guess) and psnr(fixed, clean) > psnr(guess, clean)
    assert np.array_equal(project(guess, blurred, Observation(clean.shape)), guess)  # nothing known: unchanged


@pytest.mark.parametrize("border", ["zero", "free"])
def test_noisy_blur_consistency_stops_at_the_noise_level(border: str) -> None:
    """A noisy blurred cube's first estimate (denoised, then deconvolved) already explains the data to within its
    noise: the consistency step keeps it (pulled further towards the noisy data it lost 1–6 dB, below the input on
    some cubes). An estimate that does not explain the data is still moved towards it, down to the noise level."""
    from hsivar.deblur import blur, kernel
    from hsivar.kernels import gaussian_kernel1d

    scene = make_cube(seed=6, size=96, bands=16)[0]
    clean = scene[:, 28:68, 28:68]
    sharp = blur(scene if border == "free" else clean, gaussian_kernel1d(9))
    blurred = sharp[:, 28:68, 28:68] if border == "free" else sharp
    noisy = (blurred + np.random.default_rng(0).normal(0, 0.02, clean.shape)).astype(np.float32)
    obs = Observation.detect(noisy).replaced(blur_sigma=blur_sigma(9), blur_border=border)
    assert obs.noisy()
    x0 = first_estimate(noisy, obs)
    assert psnr(x0, clean) > psnr(noisy, clean) + 2.0
    np.testing.assert_allclose(project(x0, noisy, obs), x0, atol=1e-6)
    if border == "zero":  # the misfit is simple to state with zero padding
        far = np.clip(clean + 0.1, 0, 1).astype(np.float32)  # offset: far from explaining the data
        moved = project(far, noisy, obs)
        rms = lambda x: float(np.sqrt(np.mean((blur(x, kernel(blur_sigma(9))) - noisy) ** 2)))  # noqa: E731
        assert rms(moved) < 0.5 * rms(far) and psnr(moved, clean) > psnr(far, clean)


def test_a_blurred_window_of_a_larger_scene_is_deblurred_with_a_free_border() -> None:
    """A user's blurred image is a window of a scene going on beyond its frame: told only the width, the first
    estimate reads the border as free and deblurs it (read as zero-padded it would be worse than the input), and
    the consistency step keeps it so; told the border, it uses it."""
    from hsivar.deblur import blur
    from hsivar.kernels import gaussian_kernel1d

    scene = make_cube(seed=5, size=64, bands=12)[0]
    blurred = blur(scene, gaussian_kernel1d(15))[:, 12:52, 12:52]
    window = scene[:, 12:52, 12:52]
    told_width = Observation(blurred.shape, blur_sigma=blur_sigma(15))
    x0 = first_estimate(blurred, told_width)
    assert psnr(x0, window) > psnr(blurred, window) + 2.0
    assert psnr(project(x0, blurred, told_width), window) > psnr(blurred, window) + 2.0
    told_zero = told_width.replaced(blur_border="zero")
    assert psnr(first_estimate(blurred, told_zero), window) < psnr(blurred, window)


def test_fill_does_not_mix_bands_at_its_finest_scales() -> None:
    """Neighbouring bands of a multispectral sensor can differ a lot: scattered missing voxels are filled from
    their own band (two constant bands far apart come back exact), and a hole missing in every band too."""
    cube = np.stack([np.full((32, 32), 0.1, np.float32), np.full((32, 32), 0.9, np.float32)])
    observed = np.random.default_rng(0).random(cube.shape) > 0.8
    observed[:, 10:20, 12:22] = False  # a nodata hole in both bands
    filled = fill_missing(np.where(observed, cube, 0.0).astype(np.float32), observed)
    assert np.array_equal(filled[observed], cube[observed])
    np.testing.assert_allclose(filled, cube, atol=1e-6)


def test_dehazing_reads_the_airlight_and_each_bands_transmission(clean: np.ndarray) -> None:
    """The dark channel prior recovers most of a haze's transmission, per band (short wavelengths scatter more)."""
    from hsivar.dehaze import airlight, dark_channel, dehaze, transmission

    hazy, rec = degrade_for_test(clean, "haze", 1.0)
    light = airlight(hazy, dark_channel(hazy))
    assert np.all((light >= 0.6 * rec.airlight) & (light <= 1.1 * rec.airlight))
    t = transmission(hazy, light)
    assert t.shape == clean.shape and t.min() >= 0.1 and t.max() <= 1.0
    assert t[0].mean() < t[-1].mean()  # the first (bluest) band sees less through the haze, as in the record
    assert np.corrcoef(t[8].ravel(), rec.transmission[8].ravel())[0, 1] > 0.5
    out = dehaze(hazy)
    assert psnr(out, clean) > psnr(hazy, clean) + 5.0


def test_a_short_exposure_is_read_from_the_cube_and_undone() -> None:
    from hsivar.exposure import REFERENCE_BRIGHTNESS, correct_exposure, estimate_exposure

    scene = np.random.default_rng(0).random((4, 32, 32), dtype=np.float32) * REFERENCE_BRIGHTNESS / 0.995
    assert estimate_exposure(scene) == pytest.approx(1.0, abs=0.01)
    assert estimate_exposure(0.1 * scene) == pytest.approx(0.1, rel=0.02)
    assert estimate_exposure(2 * scene) == 1.0  # brighter than a normal scene: nothing to undo
    np.testing.assert_allclose(correct_exposure(0.1 * scene, 0.1), scene, rtol=1e-5)


def test_the_spectral_basis_spans_the_singular_subspaces(clean: np.ndarray) -> None:
    """Leading k columns of spectral_basis project like the SVD's leading k left singular vectors, strongest first."""
    spectra = clean.reshape(len(clean), -1).astype(np.float64)
    spectra = spectra - spectra.mean(1, keepdims=True)
    u = spectral_basis(spectra)
    ref, s, _ = np.linalg.svd(spectra, full_matrices=False)
    np.testing.assert_allclose(u.T @ u, np.eye(len(u)), atol=1e-10)
    for k in (1, 3, 6):
        np.testing.assert_allclose(u[:, :k] @ u[:, :k].T, ref[:, :k] @ ref[:, :k].T, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(u.T @ spectra, axis=1)[:6], s[:6], rtol=1e-8)
