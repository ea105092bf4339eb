"""Gaussian deblurring: the blind width estimate and the inverses (hsivar.deblur)."""

from __future__ import annotations

import numpy as np
import pytest

from hsivar.deblur import (
    MATRIX_SIDE,
    band_matrix,
    blind_blur,
    blind_width,
    blur,
    blur_width,
    blur_width_of,
    border_of,
    deconvolve,
    fit_bands,
    fit_width_scale,
    kernel,
    refine_width,
    richardson_lucy,
    sharp_width,
    tikhonov,
)
from hsivar.degrade import degrade_for_test
from hsivar.kernels import blur_sigma, gaussian_kernel1d
from hsivar.metrics import psnr, sam
from hsivar.synth import make_cube


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return make_cube(seed=11, size=64, bands=16)[0]


@pytest.mark.parametrize("k", [9, 15, 21])
def test_the_blind_width_is_close_and_rarely_too_wide(clean: np.ndarray, k: int) -> None:
    """On the blur family's test kernels the spectral fit reads σ within −25 % / +8 % (too wide rings)."""
    blurred = degrade_for_test(clean, "blur", k)[0]
    est = blur_width(blurred)
    assert est is not None and 0.75 * blur_sigma(k) < est < 1.08 * blur_sigma(k), (est, blur_sigma(k))


def test_a_sharp_or_tiny_or_flat_cube_shows_no_blur(clean: np.ndarray) -> None:
    assert blur_width(clean) is None
    assert blur_width(clean[:, :8, :8]) is None
    assert blur_width(np.full((4, 32, 32), 0.3, np.float32)) is None


def test_the_width_of_a_large_cube_is_the_median_over_windows(clean: np.ndarray) -> None:
    big = np.concatenate([clean, clean[:, ::-1]], axis=1)  # (C, 128, 64)
    blurred = degrade_for_test(big, "blur", 15)[0]
    est = blur_width_of(blurred, window=64, max_windows=4)
    assert est is not None and abs(est - blur_sigma(15)) < 0.5
    assert blur_width_of(big, window=64) is None


@pytest.mark.parametrize("k", [9, 21])
def test_the_data_fit_widens_an_estimate_that_reads_too_little_blur(clean: np.ndarray, k: int) -> None:
    """From 0.6 σ (a texture-poor scene's spectral estimate) the widest σ that Richardson–Lucy still fits lands
    near the true σ, not past it (too wide rings), and deblurs better than the estimate it started from."""
    blurred = degrade_for_test(clean, "blur", k)[0]
    sigma = blur_sigma(k)
    refined = refine_width(blurred, 0.6 * sigma)
    assert 0.88 * sigma < refined < 1.08 * sigma, (refined, sigma)
    assert psnr(richardson_lucy(blurred, refined), clean) > psnr(richardson_lucy(blurred, 0.6 * sigma), clean) + 1.0


@pytest.mark.parametrize("k", [9, 15, 21])
def test_the_data_fit_reads_the_width_between_its_candidates(clean: np.ndarray, k: int) -> None:
    """The width is read where the fit's residual crosses its limit, between two candidates 4 % apart, on a second
    fit with more iterations near that crossing: within 2 % of the true σ (the widest candidate within the limit
    read 0.955–0.964 σ here), and the deconvolution under it within 0.1 dB of one told the kernel."""
    blurred = degrade_for_test(clean, "blur", k)[0]
    sigma = blur_sigma(k)
    refined = refine_width(blurred, blur_width_of(blurred))
    assert 0.98 * sigma < refined < 1.02 * sigma, (refined / sigma, k)
    told = psnr(deconvolve(blurred, sigma, border="zero"), clean)
    assert psnr(deconvolve(blurred, refined, border="zero"), clean) > told - 0.1


def test_the_data_fit_runs_on_the_most_textured_bands(clean: np.ndarray) -> None:
    """The fit reads the bands whose texture shows the blur (largest spatial variance), in band order; a cube with
    few bands is fitted on all of them. Flat and faint bands among many (a dark absorption band) are left out and
    the width still lands near the true σ."""
    texture = clean[3] - clean[3].mean()
    cube = np.stack([0.5 + s * texture for s in (0.0, 0.2, 0.0, 1.0, 0.05, 0.6, 0.0, 0.8)]).astype(np.float32)
    assert fit_bands(cube, 3).tolist() == [3, 5, 7]
    assert fit_bands(cube, 8).tolist() == list(range(8))
    assert fit_bands(cube, 20).tolist() == list(range(8))
    with pytest.raises(ValueError, match="at least one band"):
        fit_bands(cube, 0)
    many = np.concatenate([np.full((24, 64, 64), 0.01, np.float32), clean])  # 24 flat dark bands, then 16 textured
    blurred = degrade_for_test(many, "blur", 15)[0]
    assert set(fit_bands(blurred).tolist()) <= set(range(24, 40))
    refined = refine_width(blurred, 0.8 * blur_sigma(15))
    assert 0.88 * blur_sigma(15) < refined < 1.08 * blur_sigma(15), refined
    assert refined == refine_width(blurred[fit_bands(blurred)], 0.8 * blur_sigma(15), bands=40)  # those bands only


def test_the_blind_width_refines_a_whole_noiseless_cube_only(clean: np.ndarray) -> None:
    """The data fit runs on a whole cube up to ``refine_side`` px; a larger or a noisy cube (noise hides the fit's
    knee) keeps the spectral estimate."""
    blurred = degrade_for_test(clean, "blur", 9)[0]
    sigma0 = blur_width_of(blurred)
    assert blind_width(blurred) == refine_width(blurred, sigma0)
    assert blind_width(blurred, noisy=True) == sigma0
    assert blind_width(blurred, refine_side=32) == sigma0
    assert blind_width(clean) is None


def _cut_window(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(blurred, clean) 40×40 windows from the middle of a 64×64 cube blurred whole: a camera's blurred image, the
    scene going on beyond its frame (no zero-padded border)."""
    scene = make_cube(seed=5, size=64, bands=16)[0]
    return blur(scene, gaussian_kernel1d(k))[:, 12:52, 12:52], scene[:, 12:52, 12:52]


@pytest.mark.parametrize("k", [3, 9, 21])
def test_the_border_tells_zero_padding_from_a_scene_beyond_the_frame(clean: np.ndarray, k: int) -> None:
    """The blur family's zero-padded border darkens by the kernel's profile; a window of a larger blurred scene does
    not; zeros all along the border (nodata beyond it) count as zero padding; a cube too small for the kernel, or a
    kernel too narrow to show a profile, as free (the safer error). A border other than zero or free is refused."""
    sigma = blur_sigma(k)
    assert border_of(degrade_for_test(clean, "blur", k)[0], sigma) == "zero"
    assert border_of(_cut_window(k)[0], sigma) == "free"
    framed = np.pad(_cut_window(k)[0], ((0, 0), (2, 2), (2, 2)))
    assert border_of(framed, sigma) == "zero"
    assert border_of(degrade_for_test(clean[:, :8, :8], "blur", k)[0], sigma) == "free"
    assert border_of(degrade_for_test(clean, "blur", 3)[0], 0.5) == "free"
    with pytest.raises(ValueError, match="'zero' or 'free'"):
        richardson_lucy(clean, sigma, 2, border="reflect")  # type: ignore[arg-type]


def test_the_free_border_operator_and_its_adjoint_agree() -> None:
    """⟨K x, z⟩ = ⟨x, Kᵀ z⟩ for the free border's K (extended domain → frame): what Richardson–Lucy and the
    conjugate gradients rely on."""
    from hsivar.deblur import _adjoint, _forward

    rng = np.random.default_rng(0)
    k = kernel(2.0)
    m = len(k) // 2
    x = rng.random((3, 20 + 2 * m, 24 + 2 * m))
    z = rng.random((3, 20, 24))
    assert _forward(x, k, m).shape == z.shape and _adjoint(z, k, m).shape == x.shape
    assert np.isclose((_forward(x, k, m) * z).sum(), (x * _adjoint(z, k, m)).sum(), rtol=1e-10)


@pytest.mark.parametrize("k", [9, 21])
def test_a_window_of_a_blurred_scene_is_deblurred_not_framed(k: int) -> None:
    """Read as zero-padded, a camera's blurred window comes back with a bright frame, worse than the blurred input;
    the free border (what :func:`border_of` reads there) deblurs it, told the width or blind (the spectral estimate:
    the data fit needs zero padding), with both inverses."""
    blurred, clean = _cut_window(k)
    sigma = blur_sigma(k)
    before = psnr(blurred, clean)
    assert psnr(richardson_lucy(blurred, sigma, border="zero"), clean) < before
    assert psnr(richardson_lucy(blurred, sigma), clean) > before + 2.0
    assert psnr(deconvolve(blurred, sigma, noisy=True), clean) > before + 1.0
    assert psnr(deconvolve(blurred, sigma, noisy=True), clean) > psnr(tikhonov(blurred, sigma, border="zero"), clean)
    width = blind_width(blurred)
    assert width == blur_width_of(blurred)
    assert psnr(deconvolve(blurred, width), clean) > before + 1.0


def test_richardson_lucy_beats_the_linear_inverse_in_psnr_and_angle(clean: np.ndarray) -> None:
    """Zero-padded forward model, positivity: better than Tikhonov CG in PSNR and SAM (CG drives dark pixels
    negative), and than the blurred input in PSNR."""
    blurred = degrade_for_test(clean, "blur", 15)[0]
    rl, cg = richardson_lucy(blurred, blur_sigma(15)), tikhonov(blurred, blur_sigma(15))
    assert rl.dtype == np.float32 and rl.shape == clean.shape and float(rl.min()) >= 0
    assert psnr(rl, clean) > psnr(cg, clean) > psnr(blurred, clean) + 1.5
    assert sam(rl, clean) < sam(cg, clean) - 2.0
    np.testing.assert_array_equal(deconvolve(blurred, blur_sigma(15)), rl)
    np.testing.assert_array_equal(deconvolve(blurred, blur_sigma(15), noisy=True), cg)


def test_richardson_lucy_from_an_estimate_moves_towards_the_data(clean: np.ndarray) -> None:
    """A few plain steps from an estimate lower the data misfit ‖K x − y‖ (the blur's consistency step)."""
    s = blur_sigma(9)
    blurred = degrade_for_test(clean, "blur", 9)[0]
    start = np.clip(clean + np.random.default_rng(0).normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
    k = kernel(s)
    moved = richardson_lucy(blurred, s, iters=10, start=start, plain=10)
    assert np.linalg.norm(blur(moved, k) - blurred) < 0.5 * np.linalg.norm(blur(start, k) - blurred)


def test_the_width_a_sharp_image_reads_is_taken_off_a_light_blur_in_quadrature() -> None:
    """A scene with its sensor's own blur reads a width when sharp; blurred a little more, the spectral estimate
    reads about √(σ² + sharp²), and deconvolving with that undoes the sensor's blur too: worse than the blurred
    input. Less the sharp reading in quadrature it lands near σ and deblurs. The data fit (zero padding) ignores it."""
    from scipy.ndimage import gaussian_filter

    scene = gaussian_filter(make_cube(seed=7, size=96, bands=16)[0], (0, 0.6, 0.6), mode="reflect")  # the sensor
    clean = scene[:, 28:68, 28:68]
    sharp = sharp_width([clean])
    assert sharp is not None and 0.4 < sharp < 0.9
    assert sharp_width([]) is None and sharp_width([np.zeros((2, 40, 40), np.float32), clean[:, :8, :8]]) is None
    assert sharp_width([clean, np.zeros((2, 40, 40), np.float32)]) == sharp  # what cannot be read is left out
    blurred = blur(scene, gaussian_kernel1d(3))[:, 28:68, 28:68]  # a window: free border, the spectral estimate
    raw, less = blind_width(blurred), blind_width(blurred, sharp=sharp)
    assert raw is not None and less == pytest.approx(np.sqrt(raw**2 - sharp**2))
    assert raw > 1.15 * blur_sigma(3) and 0.9 * blur_sigma(3) < less < 1.1 * blur_sigma(3)
    before = psnr(blurred, clean)
    assert psnr(richardson_lucy(blurred, raw), clean) < before
    assert psnr(richardson_lucy(blurred, less), clean) > before + 3.0
    assert blind_width(blurred, sharp=10.0) is None  # nothing left of the reading: no blur
    zero = degrade_for_test(clean, "blur", 9)[0]  # zero-padded and small: the data fit decides
    assert blind_width(zero, sharp=sharp) == blind_width(zero)
    assert blind_blur(blurred, sharp=sharp) == (less, "free") and blind_blur(zero) == (blind_width(zero), "zero")


def test_the_ratio_to_the_fit_width_that_deconvolves_best_is_fitted_on_data_like_it() -> None:
    """:func:`fit_width_scale` scores each ratio of its grid on the pairs the data fit reads (zero-padded, noiseless)
    and returns the one with the highest mean PSNR, which then multiplies the fit's width in blind deblurring only;
    pairs the fit does not read (a window: free border; a sharp cube) are left out, and none gives None."""
    cubes = [make_cube(seed=s, size=48, bands=8)[0] for s in (11, 12)]
    pairs = [(degrade_for_test(c, "blur", k)[0], c) for c, k in zip(cubes, (9, 15))]
    grid = (0.9, 0.97, 1.0, 1.1)
    widths = [refine_width(y, blur_width_of(y)) for y, _ in pairs]
    means = [np.mean([psnr(richardson_lucy(y, w * g, border="zero"), c) for (y, c), w in zip(pairs, widths)])
             for g in grid]
    assert means[0] < max(means) and means[-1] < max(means)  # too narrow and too wide both lose
    assert fit_width_scale(pairs, grid) == grid[int(np.argmax(means))]
    scene = make_cube(seed=23, size=96, bands=8)[0]
    window = (blur(scene, kernel(blur_sigma(9)))[:, 28:68, 28:68], scene[:, 28:68, 28:68])  # free border
    assert fit_width_scale([window, (cubes[0], cubes[0])], grid) is None
    assert fit_width_scale([window, *pairs], grid) == fit_width_scale(pairs, grid)
    with pytest.raises(ValueError, match="at least one ratio"):
        fit_width_scale(pairs, ())
    # judged against a softer reference the best width is narrower: the climb leaves 1, also when a band is dead
    # (restored exactly, its PSNR is infinite: left out rather than making every ratio's mean infinite)
    soft = [(y, blur(c, kernel(1.0))) for y, c in pairs]
    assert fit_width_scale(soft, (0.7, 0.8, 0.9, 1.0)) == 0.9

    def dead(cube: np.ndarray) -> np.ndarray:
        out = cube.copy()
        out[2] = 0.0
        return out

    assert fit_width_scale([(dead(y), dead(c)) for y, c in soft], (0.7, 0.8, 0.9, 1.0)) == 0.9
    assert fit_width_scale(pairs, (0.93,)) == 0.93 and fit_width_scale([window], (0.93,)) is None
    y = pairs[0][0]
    assert blind_width(y, fit_scale=0.97) == pytest.approx(0.97 * blind_width(y))
    assert blind_width(window[0], fit_scale=0.5) == blind_width(window[0])  # the spectral estimate: not scaled


@pytest.mark.parametrize("k", [9, 21])
def test_steps_from_an_estimate_of_a_window_first_find_the_scene_beyond_its_frame(k: int) -> None:
    """On a free border a start covers only the frame: the steps first estimate the scene beyond it with the frame
    held, so a converged first estimate comes back as good as it went in (with its edge values alone beyond the
    frame the steps moved the frame's border to explain them, and lost PSNR), and a less deblurred start gains."""
    blurred, clean = _cut_window(k)
    s = blur_sigma(k)
    x0 = richardson_lucy(blurred, s, border="free")
    again = richardson_lucy(blurred, s, iters=10, start=x0, plain=10, border="free")
    edges_only = richardson_lucy(blurred, s, iters=10, start=x0, plain=10, border="free", margin_iters=0)
    assert psnr(again, clean) > psnr(x0, clean) - 0.1
    assert psnr(again, clean) > psnr(edges_only, clean) + 0.05
    half = np.clip(blurred + 0.5 * (x0 - blurred), 0, 1)
    moved = richardson_lucy(blurred, s, iters=10, start=half, plain=10, border="free")
    assert psnr(moved, clean) > psnr(half, clean) + 0.3
    assert psnr(moved, clean) > psnr(richardson_lucy(blurred, s, iters=10, start=half, plain=10, border="free",
                                                     margin_iters=0), clean)
    # a zero border has no scene beyond the frame to find: the same steps either way
    zero = degrade_for_test(clean, "blur", k)[0]
    np.testing.assert_array_equal(richardson_lucy(zero, s, iters=5, start=clean, border="zero"),
                                  richardson_lucy(zero, s, iters=5, start=clean, border="zero", margin_iters=0))


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 40, 7), (2, MATRIX_SIDE + 9, 12)])
@pytest.mark.parametrize("sigma", [0.8, 3.3])
def test_the_blur_is_a_2d_gaussian_with_zero_padding_on_either_path(shape: tuple[int, int, int], sigma: float) -> None:
    """Both ways of computing K (banded matrices up to MATRIX_SIDE px, 1-D correlations beyond) equal a direct 2-D
    convolution with the outer-product kernel over a zero-padded image, also where the kernel is wider than a side."""
    from scipy.signal import convolve2d

    x = np.random.default_rng(3).random(shape).astype(np.float32)
    k = kernel(sigma)
    direct = np.stack([convolve2d(b, np.outer(k, k), mode="same", boundary="fill") for b in x.astype(np.float64)])
    np.testing.assert_allclose(blur(x, k), direct, atol=2e-6)
    assert blur(x, k).dtype == np.float32 and blur(x.astype(np.float64), k).dtype == np.float64


def test_the_blur_builds_each_band_matrix_once_and_shares_it_read_only() -> None:
    """Iterative deconvolution blurs one shape with one kernel hundreds of times: the matrices are built once per
    (side, kernel, dtype), cannot be written through, and give what freshly built ones give."""
    from hsivar.deblur import _cached_band_matrix

    x = np.random.default_rng(5).random((3, 24, 40)).astype(np.float32)
    k = kernel(1.3)
    _cached_band_matrix.cache_clear()
    first = blur(x, k)
    again = blur(x, k)
    info = _cached_band_matrix.cache_info()
    assert info.misses == 2 and info.hits == 2  # one H and one W matrix, reused by the second call
    fresh = np.matmul(np.matmul(band_matrix(24, k), x), band_matrix(40, k))
    assert np.array_equal(first, fresh) and np.array_equal(again, fresh)
    cached = _cached_band_matrix(24, k.tobytes(), k.dtype.str)
    with pytest.raises(ValueError):
        cached[0, 0] = 1.0
    blur(x.astype(np.float64), k)  # another dtype is another matrix, not the float32 one cast
    assert _cached_band_matrix.cache_info().misses == 4


def test_the_band_matrix_holds_the_kernel_on_its_diagonals() -> None:
    k = kernel(1.0)  # 7 taps
    m = band_matrix(5, k)
    assert m.shape == (5, 5) and np.array_equal(m, m.T)
    assert m[2, 2] == k[3] and m[0, 3] == k[6] and m[4, 0] == 0  # reach 3: |i − j| > 3 is outside
