"""The classical first estimate x0 of a degraded cube, from what is known of its observation.

The model restores from x0 rather than from the raw degraded cube: its condition encoder sees x0, and its
output head starts from x0 and learns a correction (:mod:`hsivar.models.fusion`). So the token path
learns a residual on a good start instead of inventing from zeros, and the output is at least as good as
this estimate wherever the model adds nothing. :func:`first_estimate` applies, in the order of the
imaging chain undone backwards:

1. unobserved entries filled (:func:`fill_missing`): missing bands by linear interpolation over
   wavelength; missing voxels by a low-rank spectral completion started from a normalised convolution
   within each band;
2. super-resolution from the low-resolution grid by bicubic interpolation (:func:`upsample_grid`);
3. column stripes removed (:func:`destripe`), then noise by projection onto the cube's spectral subspace
   with non-local means on its eigen-images, followed by an empirical Wiener step guided by them
   (:func:`denoise_subspace`, after HySime's noise estimation, FastHyDe's subspace idea and BM3D's second
   step);
4. a known Gaussian blur undone by Richardson–Lucy iterations, or, when the observation is noisy, by
   conjugate gradients with Tikhonov regularisation (:func:`hsivar.deblur.deconvolve`);
5. haze removed by the dark channel prior (:func:`hsivar.dehaze.dehaze`).

A short exposure is brought back to a normal one (:func:`hsivar.exposure.correct_exposure`) between steps 2
and 3, so that the denoiser sees the noise the gain amplified.

Every function takes and returns (C, H, W) float32 in [0, 1] units and costs tens of milliseconds on a
64×64×31 cube on one CPU core (numpy, SciPy, scikit-image); deblurring ≈0.2 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hsivar.deblur import border_of, deconvolve
from hsivar.degrade.observation import (
    MAD_TO_SIGMA,
    Observation,
    column_departures,
    noise_by_regression,
    own_column_profile,
)
from hsivar.dehaze import dehaze
from hsivar.exposure import correct_exposure

__all__ = ["band_noise_mad", "denoise_subspace", "destripe", "fill_missing", "first_estimate", "interpolate_bands",
           "spectral_basis", "upsample_grid", "wiener_dct"]


def interpolate_bands(cube: np.ndarray, missing_bands: np.ndarray,
                      wavelengths: Sequence[float] | None = None) -> np.ndarray:
    """Missing bands of ``cube`` (C, H, W) filled by linear interpolation over wavelength (nm; default the band
    index) between the nearest observed bands, copied from the nearest one beyond the ends of the spectrum.

    ``missing_bands``: (C,) bool. With no observed band the cube comes back unchanged.
    """
    missing = np.asarray(missing_bands, bool)
    obs = np.flatnonzero(~missing)
    if obs.size == 0 or not missing.any():
        return cube
    wl = np.arange(cube.shape[0], dtype=np.float64) if wavelengths is None else np.asarray(wavelengths, np.float64)
    out = cube.copy()
    flat, filled = cube.reshape(cube.shape[0], -1), out.reshape(cube.shape[0], -1)
    for b in np.flatnonzero(missing):
        lo, hi = obs[wl[obs] < wl[b]], obs[wl[obs] > wl[b]]
        if lo.size and hi.size:
            a, c = lo[np.argmax(wl[lo])], hi[np.argmin(wl[hi])]
            w = (wl[b] - wl[a]) / (wl[c] - wl[a])
            filled[b] = (1 - w) * flat[a] + w * flat[c]
        else:
            filled[b] = flat[lo[np.argmax(wl[lo])] if lo.size else hi[np.argmin(wl[hi])]]
    return out


def spectral_basis(spectra: np.ndarray) -> np.ndarray:
    """The left singular vectors of ``spectra`` (C, N) (C bands, N pixels, N ≥ C typical), strongest first; →
    (C, C) float64 with orthonormal columns. From the eigenvectors of the C×C Gram matrix: the same subspaces as
    :func:`numpy.linalg.svd` (up to each vector's sign), far cheaper when N ≫ C."""
    a = np.asarray(spectra, np.float64)
    _, vectors = np.linalg.eigh(a @ a.T)
    return vectors[:, ::-1]


def _normalised_convolution(cube: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Unobserved entries as Gaussian-weighted means of the observed ones around them in their band, from the finest
    scale that reaches enough of them (σ = 0.7 … 12 px), else the band's observed mean. Within the band: neighbouring
    bands of a multispectral sensor can differ a lot, and the low-rank completion that follows does the spectral
    part."""
    from scipy.ndimage import gaussian_filter

    w = observed.astype(np.float32)
    out = cube.copy()
    todo = ~observed
    for s, enough in ((0.7, 0.05), (1.5, 0.05), (3, 1e-3), (6, 1e-3), (12, 1e-3)):
        if not todo.any():
            break
        num = gaussian_filter(cube * w, (0, s, s), mode="reflect")
        den = gaussian_filter(w, (0, s, s), mode="reflect")
        ok = todo & (den > enough)
        out[ok] = num[ok] / den[ok]
        todo &= ~ok
    for b in np.flatnonzero(todo.reshape(len(cube), -1).any(axis=1)):
        out[b][todo[b]] = float(cube[b][observed[b]].mean()) if observed[b].any() else 0.0
    return out


def fill_missing(cube: np.ndarray, observed: np.ndarray, wavelengths: Sequence[float] | None = None,
                 iters: int = 20) -> np.ndarray:
    """Fill the unobserved entries of ``cube`` (C, H, W), keeping the observed ones exactly.

    Bands with no observed entry are interpolated over wavelength (:func:`interpolate_bands`). Other
    unobserved voxels start from a normalised convolution and are refined by ``iters`` rounds of low-rank
    completion: the spectra are projected onto their leading singular vectors and the observed entries put
    back. The rank grows from 2 by one every third round (at most C − 1), so the dominant spectral structure
    settles before finer components are fitted to a cube that is still mostly guessed.
    """
    observed = np.asarray(observed, bool)
    C = cube.shape[0]
    band_gone = ~observed.reshape(C, -1).any(axis=1)
    x = interpolate_bands(cube.astype(np.float32), band_gone, wavelengths)
    keep = observed | band_gone[:, None, None]  # interpolated bands stay as interpolated
    if keep.all():
        return x
    x = _normalised_convolution(x, keep)
    if C < 3:
        return x
    flat_keep = keep.reshape(C, -1)
    for it in range(iters):
        flat = x.reshape(C, -1).astype(np.float64)
        mu = flat.mean(1, keepdims=True)
        k = min(C - 1, 2 + it // 3)
        u = spectral_basis(flat - mu)[:, :k]
        low = u @ (u.T @ (flat - mu)) + mu  # the rank-k truncated SVD of the centred spectra
        x = np.where(flat_keep, x.reshape(C, -1), low).reshape(cube.shape).astype(np.float32)
    return x


def upsample_grid(cube: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic interpolation (``align_corners=True``) of the low-resolution grid ``cube[:, ::s, ::s]`` back to the
    cube's H×W — what a pixel-replicated ×s observation holds. Grids smaller than 2×2 come back unchanged."""
    import torch
    import torch.nn.functional as F

    s = int(scale)
    lr = torch.from_numpy(np.ascontiguousarray(cube[:, ::s, ::s], dtype=np.float32))[None]
    if min(lr.shape[-2:]) < 2:
        return cube
    return F.interpolate(lr, size=cube.shape[-2:], mode="bicubic", align_corners=True)[0].numpy()


def destripe(cube: np.ndarray, threshold: float = 3.0) -> np.ndarray:
    """Remove column offsets (stripes) from ``cube`` (C, H, W).

    Each band's column profile (the median of every column), less what its neighbouring bands' profiles predict
    of it (:func:`~hsivar.degrade.observation.own_column_profile`: content shared across bands cancels, the band's
    own offsets remain), is compared with its running median over 9 columns; a column departing by more than
    ``threshold`` robust deviations is shifted back by that departure. Against the running median alone, the
    neighbours' reference keeps content with strong vertical structure (on one demo cube that lost 2 dB to it)
    and removes more of the stripes (docs/experiments.md).
    """
    dev, spread = column_departures(own_column_profile(np.median(cube, axis=1)))  # (C, W), (C,)
    shift = np.where(np.abs(dev) > threshold * (spread[:, None] + 1e-6), dev, 0.0)
    return cube - shift[:, None, :].astype(cube.dtype)


def _spatial_correlation(img: np.ndarray) -> float:
    """Lag-1 autocorrelation of an image (mean over rows and columns): ≈ 0 for white noise."""
    z = img - img.mean()
    var = float((z * z).mean()) or 1e-20
    return float(((z[:, 1:] * z[:, :-1]).mean() + (z[1:] * z[:-1]).mean()) / (2 * var))


def wiener_dct(noisy: np.ndarray, pilot: np.ndarray, sigma: float, patch: int = 8) -> np.ndarray:
    """Empirical Wiener filtering of an image (H, W) with noise σ ``sigma`` (its units) in the DCT of every
    ``patch``×``patch`` window: each coefficient of the noisy window is scaled by P²/(P² + σ²), P the pilot
    estimate's coefficient, and the overlapping windows are averaged (BM3D's second step, over all windows
    instead of block-matched groups); → (H, W) float64. Images smaller than a window come back as the pilot."""
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy.fft import dctn, idctn

    H, W = noisy.shape
    if min(H, W) < patch:
        return np.asarray(pilot, np.float64)
    y = dctn(sliding_window_view(np.asarray(noisy, np.float64), (patch, patch)), axes=(-2, -1), norm="ortho")
    p = dctn(sliding_window_view(np.asarray(pilot, np.float64), (patch, patch)), axes=(-2, -1), norm="ortho")
    windows = idctn(p * p / (p * p + sigma * sigma) * y, axes=(-2, -1), norm="ortho")  # (H−p+1, W−p+1, p, p)
    total, count = np.zeros((H, W)), np.zeros((H, W))
    for i in range(patch):
        for j in range(patch):
            total[i:i + H - patch + 1, j:j + W - patch + 1] += windows[:, :, i, j]
            count[i:i + H - patch + 1, j:j + W - patch + 1] += 1
    return total / count


def band_noise_mad(cube: np.ndarray) -> np.ndarray:
    """Per-band noise σ of ``cube`` (C, H, W), in its units, from the median absolute value of each band's finest
    diagonal wavelet detail (Donoho's estimator: the same db2 detail, non-zero coefficients and constant as
    :func:`skimage.restoration.estimate_sigma`, whose per-band calls cost ≈5 ms a cube); → (C,) float64.
    Content in that detail reads as noise, so the estimate errs upwards on textured bands with little noise."""
    import pywt

    detail = np.abs(pywt.dwtn(np.asarray(cube, np.float64), "db2", axes=(-2, -1))["dd"])  # (C, h, w)
    return np.array([np.median(d[d != 0]) if d.any() else 0.0 for d in detail.reshape(len(detail), -1)],
                    np.float64) / MAD_TO_SIGMA


def denoise_subspace(cube: np.ndarray, min_correlation: float = 0.05, strength: float = 0.8) -> np.ndarray:
    """Denoise ``cube`` (C, H, W) in its spectral subspace.

    The per-band noise σ is the smaller of two estimates that both err upwards: the residual of a regression on
    the other bands (HySime), which keeps what the other bands do not predict (Landsat-8's six broad bands read
    ≈16 % more noise than they have, and were smoothed too much), and the wavelet MAD (:func:`band_noise_mad`),
    which reads fine texture as noise. The spectra, whitened by it, are projected onto their singular vectors;
    the rank is one more than the number of eigen-images whose lag-1 spatial correlation exceeds
    ``min_correlation`` (noise has none); each kept eigen-image is denoised by non-local means with
    h = ``strength`` × its noise σ, and that pilot then guides an empirical Wiener filter of the noisy eigen-image
    (:func:`wiener_dct`: +0.5–0.9 dB and a smaller spectral angle on the demo and Landsat-8 cubes at σ 30–70,
    docs/experiments.md). Cubes of fewer than 3 bands are denoised band by band, the same way.
    """
    from skimage.restoration import denoise_nl_means

    C, H, W = cube.shape
    flat = cube.reshape(C, -1).astype(np.float64)
    mu = flat.mean(1, keepdims=True)
    if C < 3:
        sig = [float(np.std(np.diff(b, axis=1))) / np.sqrt(2) for b in cube]
        return np.stack([wiener_dct(b, denoise_nl_means(b, h=strength * s, sigma=s, patch_size=5, patch_distance=6,
                                                        fast_mode=True), s)
                         for b, s in zip(cube.astype(np.float64), sig)]).astype(np.float32)
    sigma = np.minimum(np.sqrt(noise_by_regression(flat - mu).var(axis=1)), band_noise_mad(cube))
    sigma = np.maximum(sigma, 1e-6)
    white = (flat - mu) / sigma[:, None]
    u = spectral_basis(white)
    eig = (u.T @ white).reshape(C, H, W)
    k = min(C, 1 + sum(_spatial_correlation(e) > min_correlation for e in eig))
    out = np.stack([wiener_dct(e, denoise_nl_means(e, h=strength, sigma=1.0, patch_size=5, patch_distance=6,
                                                   fast_mode=True), 1.0)
                    for e in eig[:k]])  # whitened eigen-images have unit noise σ
    restored = (u[:, :k] @ out.reshape(k, -1)) * sigma[:, None] + mu
    return restored.reshape(C, H, W).astype(np.float32)


def first_estimate(cube01: np.ndarray, obs: Observation, wavelengths: Sequence[float] | None = None) -> np.ndarray:
    """The classical first estimate x0 (C, H, W) float32 of a degraded cube in [0, 1] units (module docstring).

    Observed entries are kept as they are; a step runs only when ``obs`` says its degradation is there.
    """
    x = np.asarray(cube01, np.float32).copy()
    if obs.has_missing:
        x = fill_missing(x, obs.observed, wavelengths)
    if obs.sr_scale:
        x = upsample_grid(x, obs.sr_scale)
    if obs.underexposed:  # the gain first: the denoiser then reads (and removes) the noise as amplified
        x = correct_exposure(x, float(obs.exposure))  # type: ignore[arg-type]
    if obs.stripes:
        x = destripe(x)
    if obs.noisy() or obs.underexposed:
        x = denoise_subspace(x)  # noisy observed entries are denoised too: they are not exact
    if obs.blur_sigma:
        # the border read from the cube as observed, as the consistency step reads it (not from the filled x)
        border = obs.blur_border or border_of(np.asarray(cube01, np.float32), obs.blur_sigma)
        x = deconvolve(x, obs.blur_sigma, noisy=obs.noisy(), border=border)
    if obs.haze:
        x = dehaze(x)
    return x
