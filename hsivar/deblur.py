"""Gaussian deblurring of cubes: the blur's forward model, a blind estimate of its width, and three inverses.

The blur family (:mod:`hsivar.degrade.families`) blurs every band with the same separable Gaussian of width σ px,
zero padding outside the image: its border is darker. A camera's blurred image has no such border — the scene goes on
beyond the frame, and a tile cut from a larger image is the same. The inverses take either forward model K
(:func:`border_of` tells them apart from the cube's border profile): with ``border="zero"`` K pads with zeros, so the
inverses explain the darker border instead of ringing against it; with ``border="free"`` the image is estimated on
a domain larger by the kernel's reach and K keeps the part inside the frame (Bertero and Boccacci's boundary
treatment), so a bright border is not read as a bright frame of the image. The wrong model costs much: on windows
cut from blurred cubes zero padding gives 12–18 dB, less than the blurred input (26–29 dB), against 30–34 dB free
(docs/experiments.md).

* :func:`blur_width` — blind σ from the cube alone: the radial power spectrum of the bands (windowed by a
  Blackman–Harris window against leakage from the image border) is fitted by a power law times the Gaussian's
  transfer, ``log P(f) = a − α log f − 4π²σ² f²``, over the frequencies whose power is within 10⁸ of the
  strongest. The bands share one blur, so their spectra are summed. A texture-poor scene reads as *less*
  blurred than it is, rarely more (on the demo and Landsat-8 cubes the estimate is 0.5–1.08 × σ, median
  0.94–0.98): the safe direction, since deconvolving with too wide a kernel rings (docs/experiments.md).
* :func:`refine_width` — that estimate refined by the data: the widest σ under which Richardson–Lucy still explains
  the cube (the residual rises steeply past the true σ); :func:`blind_blur` is the two together with the boundary
  read once, what blind restoration uses (the data fit for a noiseless, zero-padded cube of up to 128 px a side;
  otherwise the spectral estimate, less :func:`sharp_width`); :func:`fit_width_scale` is the ratio to the fit's width
  that deconvolves best on some data (the calibration after stage 3 fits it).
* :func:`sharp_width` — what the spectral estimate reads on sharp cubes of some data (their sensor's own blur):
  :func:`blind_blur` takes it off the spectral estimate in quadrature where the data fit does not refine it.
* :func:`richardson_lucy` — the noiseless inverse: Richardson–Lucy iterations ``x ← x · Kᵀ(y / Kx) / Kᵀ1``,
  with Biggs–Andrews acceleration but for the last few. Multiplicative updates keep x ≥ 0, so dark pixels
  keep their spectral shape; a linear inverse drives them negative, and clipping them to zero costs the
  spectral angle more than the blur did.
* :func:`tikhonov` — the noisy inverse: conjugate gradients on ‖K x − y‖² + w‖x − prior‖² (Richardson–Lucy
  amplifies noise without bound as it converges).
* :func:`border_of` — which forward model fits the cube's border: the median log profile of the outermost rows
  and columns, fitted by the zero padding's darkening plus a linear trend of the scene.
* :func:`deconvolve` chooses between the two; :func:`richardson_lucy` started at an estimate is also the
  blur's data-consistency step (:mod:`hsivar.consistency`).

Every function takes (C, H, W) arrays in [0, 1] units and σ in pixels. The cost is two blurs per iteration, each
two small matrix products (:func:`blur`): ≈0.7 ms per iteration on a 64×64×31 cube on one core.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Literal

import numpy as np

from hsivar.kernels import gaussian_kernel1d

__all__ = ["Border", "band_matrix", "blind_blur", "blind_width", "blur", "blur_width", "blur_width_of", "border_of",
           "deconvolve", "fit_bands", "fit_width_scale", "refine_width", "richardson_lucy", "sharp_width", "tikhonov"]

Border = Literal["zero", "free"]
"""The blur's boundary: ``"zero"`` — zero padding beyond the frame (the blur family's; an image framed by nodata);
``"free"`` — an unknown scene beyond the frame (a camera's image, a tile of a larger one)."""

MIN_WIDTH = 0.8
"""σ (px) below which :func:`blur_width` reports no blur: the blur family's narrowest kernel (k = 3) has σ 0.8 px,
and a sharp image's spectrum already reads 0.3–0.65 px (demo and Landsat-8 cubes)."""

DYNAMIC_RANGE = 1e8
"""Frequencies whose mean power is below the strongest's / this are left out of the fit (numerical floor)."""


def kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of width ``sigma`` px over ±3σ; → (2⌈3σ⌉+1,) float32."""
    return gaussian_kernel1d(2 * math.ceil(3 * sigma) + 1, sigma)


MATRIX_SIDE = 256
"""Largest image side blurred as two matrix products: a banded matrix costs O(side) per pixel against the correlation's
O(taps), but runs at BLAS speed — faster up to about this side on one core (docs/experiments.md)."""


def band_matrix(n: int, k1d: np.ndarray) -> np.ndarray:
    """The (n, n) matrix of correlating a length-n signal with the symmetric ``k1d`` (k,) under zero padding:
    entry (i, j) is ``k1d[j − i + k // 2]`` within the kernel's reach, else 0 (symmetric, as the kernel is)."""
    from scipy.linalg import toeplitz

    r = len(k1d) // 2
    first = np.zeros(n, np.asarray(k1d).dtype)
    first[:min(n, r + 1)] = k1d[r:r + min(n, r + 1)]
    return toeplitz(first)


@functools.lru_cache(maxsize=32)
def _cached_band_matrix(n: int, k_bytes: bytes, dtype: str) -> np.ndarray:
    """:func:`band_matrix` of the kernel whose bytes are ``k_bytes``, built once per (side, kernel, dtype): an
    iterative deconvolution blurs the same shape with the same kernel hundreds of times, and building the
    matrix cost as much as using it (docs/experiments.md). Read-only, as it is shared."""
    matrix = band_matrix(n, np.frombuffer(k_bytes, dtype))
    matrix.flags.writeable = False
    return matrix


def blur(x: np.ndarray, k1d: np.ndarray) -> np.ndarray:
    """K x: separable correlation of x (C, H, W) with the symmetric ``k1d`` (k,) along rows and columns, zero
    padding (the blur family's operator; the kernel is symmetric, so K is its own adjoint); → (C, H, W) in x's
    dtype. Sides up to :data:`MATRIX_SIDE` as ``A_H · x · A_W`` (:func:`band_matrix`), larger ones by
    :func:`scipy.ndimage.correlate1d`: the same sums in another order."""
    H, W = x.shape[-2:]
    if max(H, W) <= MATRIX_SIDE:
        k = np.ascontiguousarray(k1d, np.result_type(x, np.float32))
        key = (k.tobytes(), k.dtype.str)
        return np.matmul(np.matmul(_cached_band_matrix(H, *key), x), _cached_band_matrix(W, *key))
    from scipy.ndimage import correlate1d

    return correlate1d(correlate1d(x, k1d, axis=2, mode="constant"), k1d, axis=1, mode="constant")


def border_of(y: np.ndarray, sigma: float) -> Border:
    """Which boundary (:data:`Border`) the blur of width ``sigma`` px of ``y`` (C, H, W) in [0, 1] had, from its
    border: under zero padding the i-th row from the edge keeps the share p(i) of the kernel's mass that falls inside
    the frame (≈0.6 at the edge, 1 from 3σ in), so the rows darken towards the edge by that profile; a scene going on
    beyond the frame does not darken there.

    The bands are summed; for every column of the four edges (corners left out) the log of the first ⌈3σ⌉ + 1 rows
    over the innermost of them, and the median over columns m(i) is fitted by ``α log p(i) + β (r − i) / r`` — the
    zero padding's profile plus a linear trend of the scene (a scene brighter in the middle darkens towards the edge
    too, but gradually). Zero padding when α > ½ (on the demo and Landsat-8 cubes α is 0.59–2.0 for the blur family's
    cubes and ≤ 0.47 for windows cut from blurred cubes). Zero, too, when fewer than 8 edge columns are positive:
    exact zeros along the border mean a dark scene or nodata beyond it. Free when the border cannot tell otherwise
    (a kernel of less than 3 px a side, a cube too small for the kernel): the safer error — a free border read as
    zero-padded comes back worse than the blurred input, the other way round costs a few dB at the border.
    """
    k = kernel(sigma).astype(np.float64)
    r = len(k) // 2
    C, H, W = y.shape
    if r < 3 or min(H, W) < 2 * r + 3:
        return "free"
    p = np.cumsum(k[::-1])[::-1][r - np.arange(r + 1)]  # p(i): the kernel's mass on rows ≥ 0 seen from row i
    z = np.maximum(np.asarray(y, np.float64), 0.0).sum(axis=0)  # (H, W)
    inner = slice(r, -r)
    profiles = np.concatenate([z[:r + 1, inner], z[::-1][:r + 1, inner],
                               z[inner, :r + 1].T, z[inner, ::-1][:, :r + 1].T], axis=1)  # (r + 1, edge columns)
    positive = profiles.min(axis=0) > 1e-6
    if positive.sum() < 8:
        return "zero"
    m = np.median(np.log(profiles[:, positive] / profiles[-1, positive]), axis=1)  # (r + 1,)
    design = np.stack([np.log(p), (r - np.arange(r + 1)) / r], axis=1)
    (alpha, _), *_ = np.linalg.lstsq(design, m, rcond=None)
    return "zero" if alpha > 0.5 else "free"


def _margin(k1d: np.ndarray, border: Border) -> int:
    """Pixels by which the estimated image extends the frame on every side: the kernel's reach for a free border.

    Raises:
        ValueError: ``border`` is not one of :data:`Border`'s values.
    """
    if border not in ("zero", "free"):
        raise ValueError(f"the blur's border must be 'zero' or 'free', got {border!r}")
    return len(k1d) // 2 if border == "free" else 0


def _crop(x: np.ndarray, margin: int) -> np.ndarray:
    """The frame (…, H, W) of x (…, H + 2·margin, W + 2·margin) on the extended domain (a view)."""
    return x if margin == 0 else x[..., margin:-margin, margin:-margin]


def _forward(x: np.ndarray, k1d: np.ndarray, margin: int) -> np.ndarray:
    """K x: x (C, H + 2·margin, W + 2·margin) blurred, the frame's (C, H, W) kept."""
    return _crop(blur(x, k1d), margin)


def _adjoint(z: np.ndarray, k1d: np.ndarray, margin: int) -> np.ndarray:
    """Kᵀ z: z (C, H, W) zero-padded by ``margin`` and blurred (the kernel is symmetric)."""
    return blur(z if margin == 0 else np.pad(z, ((0, 0), (margin, margin), (margin, margin))), k1d)


def _extend(v: np.ndarray, margin: int) -> np.ndarray:
    """v (C, H, W) on the extended domain, its edge values repeated outward: the first iterate there."""
    return v if margin == 0 else np.pad(v, ((0, 0), (margin, margin), (margin, margin)), mode="edge")


def blur_width(cube: np.ndarray, min_width: float = MIN_WIDTH) -> float | None:
    """Blind estimate of the Gaussian blur width σ (px) of ``cube`` (C, H, W) from its power spectrum (module
    docstring); None when the fit finds no blur wider than ``min_width`` or the cube is smaller than 16×16 or
    flat."""
    from scipy.signal.windows import blackmanharris

    C, H, W = cube.shape
    if min(H, W) < 16:
        return None
    window = np.outer(blackmanharris(H), blackmanharris(W))
    bands = cube.reshape(C, -1).astype(np.float64)
    z = (bands - bands.mean(axis=1, keepdims=True)).reshape(C, H, W) * window
    power = (np.abs(np.fft.fft2(z)) ** 2).sum(axis=0)  # (H, W): the bands share one blur
    f = np.hypot(np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None])
    n = min(H, W)
    rings = np.rint(f * n).astype(int)  # ring r holds the frequencies within half a step of r / n cycles/px
    radial = np.bincount(rings.ravel(), power.ravel())[1:n // 2] / np.bincount(rings.ravel())[1:n // 2]
    freqs = np.arange(1, n // 2) / n
    if not np.isfinite(radial).all() or radial.max() <= 0:
        return None
    use = radial > radial.max() / DYNAMIC_RANGE
    if use.sum() < 4:
        return None
    design = np.stack([np.ones_like(freqs), np.log(freqs), freqs**2], axis=1)[use]
    coef, *_ = np.linalg.lstsq(design, np.log(radial[use]), rcond=None)
    sigma2 = -coef[2] / (4 * math.pi**2)  # |Gaussian transfer|² = exp(−4π²σ²f²)
    return float(math.sqrt(sigma2)) if sigma2 > min_width**2 else None


def blur_width_of(cube: np.ndarray, window: int = 128, max_windows: int = 16,
                  min_width: float = MIN_WIDTH) -> float | None:
    """:func:`blur_width` of a cube (C, H, W) of any size: the median over up to ``max_windows`` windows of side
    ``window`` (or the cube's shorter side, when smaller) spread evenly over it; None when no window shows a
    blur wider than ``min_width`` px."""
    C, H, W = cube.shape
    side = min(window, H, W)
    per_axis = max(1, math.isqrt(max_windows))
    rows = np.unique(np.linspace(0, H - side, per_axis).round().astype(int))
    cols = np.unique(np.linspace(0, W - side, per_axis).round().astype(int))
    widths = [w for r in rows for c in cols
              if (w := blur_width(cube[:, r:r + side, c:c + side], min_width)) is not None]
    return float(np.median(widths)) if widths else None


def sharp_width(cubes: Iterable[np.ndarray], window: int = 128, max_windows: int = 16) -> float | None:
    """What the spectral estimate reads on sharp cubes: the median over ``cubes`` (each (C, H, W) in [0, 1], not
    blurred) of :func:`blur_width_of` without its floor (a cube that reads no width counts 0; one under 16 px a side
    or flat is left out); px, None for no cube.

    A sharp image is not read as 0: its sensor's own blur and the departure of its spectrum from a power law read
    as a width (0.31–0.37 px on the demo's synthetic cubes; 0.51 px on Landsat-8's validation cubes, 0.57 on its
    training cubes). A blurred image of the same
    data then reads about √(σ² + sharp²), and deconvolving with that undoes the sensor's blur too, which the
    clean image keeps: with a light blur that comes back worse than the blurred input (docs/experiments.md).
    :func:`blind_blur` takes it off in quadrature.
    """
    readings = [blur_width_of(x, window, max_windows, min_width=0.0) or 0.0
                for x in (np.asarray(c, np.float32) for c in cubes)
                if min(x.shape[-2:]) >= 16 and float(np.ptp(x)) > 0]  # what blur_width cannot read is no reading
    return float(np.median(readings)) if readings else None


FIT_TOLERANCE = 1.2
"""A candidate width explains a blurred cube when Richardson–Lucy under it fits the observation with an RMS residual
within this factor of the residual at the foot of the last rise (:func:`refine_width`)."""


FIT_BANDS = 8
"""The bands the data fit of :func:`refine_width` runs on at most: the bands share one blur, so a few textured ones
show the same knee as all of them (the same widths on the demo's 31-band cubes at a quarter of the cost), and the
cost stops growing with the band count (docs/experiments.md)."""


def fit_bands(cube: np.ndarray, count: int = FIT_BANDS) -> np.ndarray:
    """The indices (≤ ``count``,) int of the bands of ``cube`` (C, H, W) with the largest spatial variance — the
    ones whose texture shows a blur most — in band order; all bands when C ≤ ``count`` (≥ 1)."""
    if count < 1:
        raise ValueError(f"the data fit needs at least one band, got count={count}")
    C = cube.shape[0]
    if C <= count:
        return np.arange(C)
    variance = np.asarray(cube, np.float64).reshape(C, -1).var(axis=1)
    return np.sort(np.argsort(variance, kind="stable")[-count:])


def _fit_residual(obs: np.ndarray, width: float, iters: int) -> float:
    """RMS residual ‖K x − y‖ of ``iters`` zero-border Richardson–Lucy iterations under the Gaussian of ``width`` px
    on ``obs`` (C, H, W) ≥ 0, in the cube's units."""
    x = richardson_lucy(obs, width, iters, border="zero")
    return float(np.sqrt(np.mean((blur(x, kernel(width)) - obs) ** 2)))


def _widest_fit(widths: np.ndarray, residual: list[float], step: float) -> tuple[int, int, float]:
    """On candidates ``widths`` (n,) px in ratios of ``step`` with fit ``residual`` (n,): the index of the foot of
    the residual's last rise (walking down from the widest while the residual falls), the index of the widest
    candidate within :data:`FIT_TOLERANCE` of it, and the width σ (px) where the residual crosses that limit,
    interpolated between that candidate and the next, which does not fit (the fraction of the step linear in the
    residual, the width geometric like the candidates; the candidate itself when it is the widest)."""
    n = len(widths)
    valley = n - 1
    while valley > 0 and residual[valley - 1] <= residual[valley]:
        valley -= 1
    limit = FIT_TOLERANCE * residual[valley]
    widest = int((np.flatnonzero(np.asarray(residual[valley:]) <= limit) + valley).max())
    if widest + 1 >= n:
        return valley, widest, float(widths[widest])
    t = (limit - residual[widest]) / (residual[widest + 1] - residual[widest])  # in [0, 1): the crossing
    return valley, widest, float(widths[widest] * step ** t)


def refine_width(cube: np.ndarray, sigma0: float, lo: float = 0.85, hi: float = 2.0, step: float = 1.04,
                 iters: int = 100, bands: int = FIT_BANDS) -> float:
    """The blur width σ (px) of a noiseless blurred ``cube`` (C, H, W) in [0, 1], refined from the spectral estimate
    ``sigma0`` (:func:`blur_width`): the width at which the residual ‖K x − y‖ of Richardson–Lucy under it crosses
    :data:`FIT_TOLERANCE` times the residual at the foot of the residual's last rise, walking down from the widest
    candidate while the residual falls. The candidates are ``sigma0·r`` (r from ``lo`` to ``hi`` in steps of
    ×``step``), each fitted with ``iters`` iterations; the candidates from just below that foot to just past the
    crossing are then fitted again with 2 × ``iters``, and the crossing is read on those, interpolated between the
    widest candidate that fits and the next (the first reading is kept when every candidate fitted again fits: the
    crossing then lies past them). The fit runs on the ``bands`` most textured bands (:func:`fit_bands`).

    Why the widest: any σ up to the true one explains the cube exactly (a narrower Gaussian blur of a blurrier
    image), while a wider one asks for a non-negative image sharper than any: the residual rises steeply past the
    true σ. Why the last rise's foot rather than the smallest residual: a kernel far narrower than the blur is
    nearly the identity and fits in a few iterations, while in between the iterations fall short of converging.
    Why interpolated: the widest candidate within the limit lies on average half a step (2 %) below the crossing,
    which with its scatter cost 0.05–0.09 dB on the demo's cubes. Why fitted again: the iterations at the true σ
    fall short of converging, so its residual scatters; twice the iterations near the rise halve the scatter of the
    width (docs/experiments.md has the figures). The spectral estimate reads a texture-poor scene as less blurred
    than it is, and deconvolving with too narrow a kernel leaves blur behind. Only for a noiseless cube: noise raises
    every residual to its own level and hides the knee.

    The cube must be the whole blurred image: the fit assumes the blur's zero padding at its border. (A window cut
    from a larger image breaks that assumption, and the residual inside it rises before the true σ: on windows
    the refined width read 0.86–0.88 σ where the spectral estimate read 1.0 σ.)
    """
    obs = np.maximum(np.asarray(cube, np.float32), 0.0)
    obs = np.ascontiguousarray(obs[fit_bands(obs, bands)])
    n = int(math.floor(math.log(hi / lo) / math.log(step))) + 1
    widths = sigma0 * lo * step ** np.arange(n)
    valley, widest, first = _widest_fit(widths, [_fit_residual(obs, w, iters) for w in widths], step)
    near = widths[max(valley - 1, 0):min(widest + 2, n - 1) + 1]  # the rise, one candidate either side
    _, last, again = _widest_fit(near, [_fit_residual(obs, w, 2 * iters) for w in near], step)
    # every candidate of the slice within the limit: the crossing lies past it, so keep the first reading
    return first if last == len(near) - 1 and widest + 2 < n else again


def _data_fit_applies(cube: np.ndarray, noisy: bool, refine_side: int, border: Border) -> bool:
    """Whether :func:`blind_blur` refines the width of ``cube`` (C, H, W) by the data fit: a noiseless, zero-padded
    cube of at most ``refine_side`` px a side (noise hides the fit's knee; the fit assumes the zero padding and runs on
    the whole image)."""
    return not noisy and max(cube.shape[-2:]) <= refine_side and border == "zero"


def blind_blur(cube: np.ndarray, noisy: bool = False, window: int = 128, max_windows: int = 16,
               refine_side: int = 128, border: Border | None = None, sharp: float = 0.0,
               fit_scale: float = 1.0) -> tuple[float, Border] | None:
    """The blur of a cube (C, H, W) in [0, 1] from the cube alone, as blind restoration needs it: its width σ (px)
    and its boundary (:data:`Border`), or None when no blur shows.

    The spectral estimate σ₀ (:func:`blur_width_of`) decides whether a blur shows, and the boundary is read once, on
    σ₀ (:func:`border_of`), unless ``border`` is given. The width is then σ₀ refined by the data fit
    (:func:`refine_width`) times ``fit_scale`` (the ratio that deconvolves best on data like it:
    :func:`fit_width_scale`) when the cube is not ``noisy``, its border is zero padding (the fit needs it) and it is
    at most ``refine_side`` px a side (the fit runs on the whole image, on at most :data:`FIT_BANDS` bands: ≈0.75 s
    for 64×64 on one core, 22 candidates × 100 iterations and ≈5 near the crossing × 200, ≈4.8 s at 128 px).
    Otherwise it is σ₀ less ``sharp``, what the spectral estimate reads on sharp images of the same data
    (:func:`sharp_width`, px), in quadrature: √(σ₀² − sharp²), which may fall below :data:`MIN_WIDTH`; None when
    ``sharp`` ≥ σ₀. The data fit finds its own width and needs no such correction.
    """
    sigma0 = blur_width_of(cube, window, max_windows)
    if sigma0 is None:
        return None
    border = border or border_of(cube, sigma0)
    if _data_fit_applies(cube, noisy, refine_side, border):
        return refine_width(cube, sigma0) * fit_scale, border
    corrected = math.sqrt(max(sigma0 * sigma0 - sharp * sharp, 0.0))
    return (corrected, border) if corrected > 0 else None


def blind_width(cube: np.ndarray, noisy: bool = False, window: int = 128, max_windows: int = 16,
                refine_side: int = 128, border: Border | None = None, sharp: float = 0.0,
                fit_scale: float = 1.0) -> float | None:
    """The width σ (px) of :func:`blind_blur` (same arguments), None when no blur shows."""
    found = blind_blur(cube, noisy, window, max_windows, refine_side, border, sharp, fit_scale)
    return None if found is None else found[0]


FIT_SCALE_GRID = tuple(round(0.95 + 0.01 * i, 2) for i in range(9))
"""The ratios to the data fit's width that :func:`fit_width_scale` scores (0.95 … 1.03)."""


def fit_width_scale(pairs: Iterable[tuple[np.ndarray, np.ndarray]], grid: Iterable[float] = FIT_SCALE_GRID,
                    refine_side: int = 128) -> float | None:
    """The ratio to the data fit's width (:func:`refine_width`) that deconvolves best on some data: over ``pairs`` of
    (blurred (C, H, W), clean (C, H, W)) in [0, 1], noiseless, the ratio of ``grid`` whose zero-border
    Richardson–Lucy deconvolution (:func:`deconvolve`) has the highest mean PSNR (dB) against the clean cubes; None
    when no pair takes the data fit in :func:`blind_blur` (no blur shows, a free border, more than ``refine_side`` px
    a side). The mean PSNR rises to one peak and falls, so the search climbs the sorted grid from the ratio nearest 1
    to the better neighbour while it gains (3–4 ratios scored instead of the whole grid: ≈1.2 s per 64×64×31 pair on
    one core). Raises ValueError for an empty ``grid``.

    Why: the fit reads the width where its residual crosses a limit, and where that lies against the true σ
    depends on the data (0.99–1.0 σ on the demo's 31-band cubes, 1.01 σ on Landsat-8's 6 bands), while
    Richardson–Lucy deconvolves best about 1 % narrower than the true σ, and 2 % wider than σ loses 0.26–0.30 dB
    where 2 % narrower loses at most 0.02 (docs/experiments.md). The calibration after stage 3 fits it on the
    validation cubes.
    """
    from hsivar.metrics import psnr

    grid = sorted(float(g) for g in grid)
    if not grid:
        raise ValueError("fit_width_scale needs at least one ratio in its grid")
    fitted = []  # (blurred, clean, the fit's width)
    for blurred, clean in pairs:
        y = np.asarray(blurred, np.float32)
        found = blind_blur(y, refine_side=refine_side)  # the data fit's width where it applies, at ratio 1
        if found is not None and _data_fit_applies(y, False, refine_side, found[1]):
            fitted.append((y, clean, found[0]))
    if not fitted or len(grid) == 1:
        return grid[0] if fitted else None

    def pair_psnr(y: np.ndarray, clean: np.ndarray, width: float) -> float:
        bands = np.asarray(psnr(richardson_lucy(y, width, border="zero"), clean, per_band=True))
        bands = bands[np.isfinite(bands)]  # a band restored exactly (a dead, all-zero band) would make every mean inf
        return float(bands.mean()) if bands.size else -math.inf

    @functools.cache
    def score(i: int) -> float:
        mean = float(np.mean([pair_psnr(y, clean, width * grid[i]) for y, clean, width in fitted]))
        return mean if math.isfinite(mean) else -math.inf

    at = int(np.argmin([abs(g - 1.0) for g in grid]))
    for _ in range(len(grid)):  # each move gains, so at most len(grid) − 1 of them
        best = max((j for j in (at - 1, at + 1) if 0 <= j < len(grid)), key=score)
        if not score(best) > score(at):
            break
        at = best
    return grid[at]


def richardson_lucy(y: np.ndarray, sigma: float, iters: int = 100, start: np.ndarray | None = None,
                    plain: int = 10, floor: float = 1e-3, border: Border | None = None,
                    margin_iters: int = 20) -> np.ndarray:
    """Richardson–Lucy deconvolution of ``y`` (C, H, W) blurred by the Gaussian of width ``sigma`` px;
    → (C, H, W) float32, ≥ 0.

    Args:
        iters: iterations; each costs two blurs.
        start: the first iterate (C, H, W) (default ``y``; with a free border extended by its edge values); values
            are raised to ``floor`` (a multiplicative update cannot move an entry away from 0).
        plain: the last ``plain`` iterations are plain steps; the ones before use Biggs–Andrews vector
            extrapolation (≈2–3× fewer iterations for the same fit, but its steps add spectral noise that a few
            plain steps remove: −1° of spectral angle at no cost in PSNR on the demo cubes).
        border: the blur's boundary (:data:`Border`); None: read from ``y`` (:func:`border_of`).
        margin_iters: with a free border and a ``start``, iterations that first estimate the image beyond the frame
            with the frame held at ``start`` (plain steps, not counted in ``iters``). A start covers only the frame;
            its edge values alone are a poor guess of the scene beyond it, and the joint iterations then move the
            frame's border to explain them: as the consistency step after a first estimate that had converged, that
            cost up to 0.3 dB on windows of blurred scenes (Landsat-8 0.13–0.31, demo 0–0.13; docs/experiments.md).
            ≈30–50 ms on a 64×64×31 cube on one core, a fifth to a quarter of the first estimate's deconvolution.
    """
    k = kernel(sigma)
    obs = np.maximum(np.asarray(y, np.float32), 0.0)
    margin = _margin(k, border or border_of(obs, sigma))
    norm = np.maximum(_adjoint(np.ones_like(obs), k, margin), 1e-12)  # Kᵀ1: < 1 within 3σ of the frame's edge
    x = np.maximum(_extend(obs if start is None else np.asarray(start, np.float32), margin), floor)
    if start is not None and margin:
        beyond = np.ones(x.shape[-2:], bool)
        _crop(beyond, margin)[...] = False  # (H + 2·margin, W + 2·margin): True outside the frame
        for _ in range(margin_iters):
            x = np.where(beyond, x * _adjoint(obs / np.maximum(_forward(x, k, margin), 1e-12), k, margin) / norm, x)
    previous, g1, g2 = x, None, None
    for i in range(iters):
        point = x
        if i < iters - plain and g1 is not None and g2 is not None:
            a = float(np.clip((g1 * g2).sum() / max(float((g2 * g2).sum()), 1e-30), 0.0, 1.0))
            point = np.maximum(x + a * (x - previous), 1e-12)
        new = point * _adjoint(obs / np.maximum(_forward(point, k, margin), 1e-12), k, margin) / norm
        g1, g2 = new - point, g1
        previous, x = x, new
    return np.ascontiguousarray(_crop(x, margin), np.float32)


def tikhonov(y: np.ndarray, sigma: float, prior: np.ndarray | None = None, weight: float = 1e-3,
             iters: int = 30, border: Border | None = None, noise_rms: float | None = None) -> np.ndarray:
    """Undo the Gaussian blur of width ``sigma`` px of ``y`` (C, H, W) by ``iters`` conjugate-gradient steps on
    ‖K x − y‖² + ``weight``·‖x − prior‖², started at the prior (default ``y``); → (C, H, W) float32. ``border``: the
    blur's boundary (:data:`Border`; None: read from ``y``, :func:`border_of`) — for a free one the prior extends
    beyond the frame by its edge values. ``noise_rms``: the observation's noise level (RMS, [0, 1] units); the steps
    stop once the RMS residual ‖K x − y‖ is within it (Morozov's discrepancy principle: fitting the data closer than
    its noise fits the noise), so a prior already that close is returned as it is."""
    k = kernel(sigma).astype(np.float64)
    obs = np.asarray(y, np.float64)
    margin = _margin(k, border or border_of(obs, sigma))
    p0 = _extend(obs if prior is None else np.asarray(prior, np.float64), margin)
    b = _adjoint(obs, k, margin) + weight * p0

    def normal(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K v, (KᵀK + weight) v): K v is kept to update the data residual without blurring again."""
        kv = _forward(v, k, margin)
        return kv, _adjoint(kv, k, margin) + weight * v

    x = p0.copy()
    kx, nx = normal(x)
    r = b - nx
    p, rs = r.copy(), float((r * r).sum())
    for _ in range(iters):
        if rs < 1e-20 or (noise_rms is not None and float(np.sqrt(np.mean((kx - obs) ** 2))) <= noise_rms):
            break  # converged, or within the noise: fitting closer fits the noise
        kp, ap = normal(p)
        a = rs / float((p * ap).sum())
        x += a * p
        kx += a * kp  # K x, kept in step with x
        r -= a * ap
        rn = float((r * r).sum())
        p = r + (rn / rs) * p
        rs = rn
    return np.ascontiguousarray(_crop(x, margin), np.float32)


def deconvolve(y: np.ndarray, sigma: float, noisy: bool = False, border: Border | None = None) -> np.ndarray:
    """The classical deblurring of ``y`` (C, H, W) in [0, 1] for a Gaussian of width ``sigma`` px: Richardson–Lucy
    (100 iterations) for a noiseless observation, Tikhonov-regularised conjugate gradients when it is
    ``noisy`` (after denoising some noise remains, and Richardson–Lucy would amplify it); → (C, H, W) float32.
    ``border``: the blur's boundary (:data:`Border`; None: read from ``y``, :func:`border_of`)."""
    return tikhonov(y, sigma, border=border) if noisy else richardson_lucy(y, sigma, border=border)
