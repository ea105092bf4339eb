"""Calibrated per-pixel uncertainty: an error bar σ such that |restored − clean| ≤ 2σ for ≈95 % of entries.

The spread over N seeded samples alone is no error bar: a confident model decodes nearly the same tokens every
time, and a family whose output is the first estimate (trust τ = 0) has no spread at all, while the error is
that of the whole restoration. So the error variance of every synthesised entry is modelled from what the
restoration itself shows, per task family t, with non-negative coefficients a_t fitted on held-out validation
examples after training (:func:`fit_coefficients`; :func:`hsivar.calibrate.calibrate`)::

    σ² = a_t · f + s²      f = (|∇ₓᵧ x̂|², |∂_λ x̂|², (x̂ − x₀)², σ_noise², 1)   (one value per entry)

* ``spatial``: squared spatial gradient of the restored cube x̂ (central differences): errors gather at edges
  and texture, where a blur, a lower resolution or a denoiser loses most;
* ``spectral``: squared gradient over bands: a band synthesised between its neighbours is least sure where the
  spectrum bends;
* ``correction``: squared change from the model's starting point x₀ (the classical first estimate, or the
  input for a model without one): the larger the learned correction, the less certain;
* ``noise``: the cube's estimated noise variance in that band (:class:`~hsivar.degrade.observation.Observation`);
* ``floor``: a constant, the family's irreducible error.

s² is the unbiased variance over the seeded samples when there are several (the decoding's own variability,
added in quadrature, not fitted): one greedy decoding gets an error bar too. After the least-squares fit of
e² on f (NNLS), the coefficients are scaled so that on the validation entries exactly the ``coverage`` share
(0.95) has |e| ≤ 2σ (a split-conformal quantile), which is what makes σ read as an error bar. A mixture of
families (``"auto"``) mixes the coefficients by the task weights.

What it does not capture: errors the features do not see (a misread family, a scene unlike the training
data), and the correlation between neighbouring entries (σ is per entry, not for a region's mean). Coverage
holds on average over the entries of data like the validation set; evaluation reports it per family on
held-out data (``hsivar evaluate``: coverage at 1σ and 2σ, correlation of σ with |error|).
All values are in [0, 1] units here; :func:`hsivar.prepared.finish` converts σ to the input's units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FEATURES: tuple[str, ...] = ("spatial", "spectral", "correction", "noise", "floor")
"""The error-variance features, in the order of every coefficient vector (see the module docstring)."""

COVERAGE = 0.95
"""Share of validation entries with |error| ≤ 2σ that the fitted coefficients are scaled to."""

MAX_FIT_ENTRIES = 200_000
"""Entries drawn (seeded) for the least-squares fit; the conformal scale uses every entry."""

_TINY_VAR = 1e-12  # [0, 1]² units: keeps σ > 0 where every feature is 0, so |e|/σ is finite


def features(restored01: np.ndarray, start01: np.ndarray | None, noise_sigma: np.ndarray | None) -> np.ndarray:
    """The error-variance features of a restored cube.

    Args:
        restored01: (C, H, W) the restored cube in [0, 1] units.
        start01: (C, H, W) the model's starting point (first estimate or input) in [0, 1]; None: zeros.
        noise_sigma: (C,) the estimated noise σ per band in [0, 1] units (or a scalar); None: 0.
    Returns:
        (len(FEATURES), C, H, W) float32, each in [0, 1]² units.
    """
    x = np.asarray(restored01, np.float32)
    C, H, W = x.shape
    spatial = np.zeros_like(x)
    spatial[:, :, 1:-1] += ((x[:, :, 2:] - x[:, :, :-2]) / 2) ** 2
    spatial[:, 1:-1, :] += ((x[:, 2:, :] - x[:, :-2, :]) / 2) ** 2
    spectral = np.zeros_like(x)
    spectral[1:-1] = ((x[2:] - x[:-2]) / 2) ** 2
    if C > 1:  # one-sided at the first and last band
        spectral[0], spectral[-1] = (x[1] - x[0]) ** 2, (x[-1] - x[-2]) ** 2
    correction = np.zeros_like(x) if start01 is None else (x - np.asarray(start01, np.float32)) ** 2
    sigma = np.zeros(C, np.float32) if noise_sigma is None else \
        np.broadcast_to(np.asarray(noise_sigma, np.float32), (C,))
    noise = np.broadcast_to((sigma ** 2)[:, None, None], x.shape)
    return np.stack([spatial, spectral, correction, noise, np.ones_like(x)]).astype(np.float32)


def mix(coefficients: Sequence[Sequence[float]], task_weights: Sequence[float]) -> np.ndarray:
    """Per-task coefficient vectors (N, F) mixed by task weights (N,) (normalised to sum 1) → (F,) float64."""
    a = np.asarray(coefficients, np.float64)
    w = np.clip(np.asarray(task_weights, np.float64), 0.0, None)
    if a.ndim != 2 or a.shape[0] != w.shape[0]:
        raise ValueError(f"{a.shape[0] if a.ndim == 2 else '?'} coefficient vectors for {w.shape[0]} task weights")
    return (w / w.sum() if w.sum() > 0 else np.full_like(w, 1 / len(w))) @ a


def std_from(feats: np.ndarray, coefficients: np.ndarray, sample_var01: np.ndarray | None = None) -> np.ndarray:
    """σ (C, H, W) float32 in [0, 1] units: √(a · f + s²) for features (F, C, H, W), coefficients (F,) and the
    unbiased variance over samples s² (C, H, W) (None: one decoding)."""
    var = np.tensordot(np.asarray(coefficients, np.float64), feats, axes=1)
    if sample_var01 is not None:
        var = var + sample_var01
    return np.sqrt(np.maximum(var, _TINY_VAR)).astype(np.float32)


def fit_coefficients(errors: np.ndarray, feats: np.ndarray, *, coverage: float = COVERAGE, seed: int = 0) -> np.ndarray:
    """Coefficients (F,) for one family: non-negative least squares of e² on the features, then scaled so that
    ``coverage`` of the entries have |e| ≤ 2σ.

    Args:
        errors: (n,) restored − clean of the synthesised validation entries of greedy decodings, [0, 1] units.
        feats: (F, n) their features (:func:`features`, flattened to the same entries).
        coverage: the share of entries within 2σ after scaling, in (0, 1).
        seed: seeds the draw of at most :data:`MAX_FIT_ENTRIES` entries for the least-squares step.
    Returns:
        (F,) float64, ≥ 0.
    Raises:
        ValueError: shapes disagree, no entries, or coverage outside (0, 1).
    """
    e = np.abs(np.asarray(errors, np.float64)).ravel()
    f = np.asarray(feats, np.float64).reshape(len(FEATURES), -1)
    if f.shape[1] != e.size or e.size == 0:
        raise ValueError(f"{e.size} errors for features of shape {np.shape(feats)}; need one feature column each")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    from scipy.optimize import nnls  # here: hsivar.config imports this module's names

    pick = np.random.default_rng(seed).choice(e.size, min(e.size, MAX_FIT_ENTRIES), replace=False)
    A, y = f[:, pick].T, e[pick] ** 2
    scale = np.sqrt((A ** 2).mean(0))
    scale[scale == 0] = 1.0  # a feature that is 0 everywhere (e.g. no noise) keeps coefficient 0
    a, _ = nnls(A / scale, y)
    a = a / scale
    if not a.any():  # no feature explains anything (e.g. all errors 0): the floor alone
        a[FEATURES.index("floor")] = float(np.mean(e ** 2))
    # split-conformal: the share `coverage` of |e| / σ̂ lies below q; σ = q/2 · σ̂ puts it within 2σ
    sigma_hat = np.sqrt(np.maximum(a @ f, _TINY_VAR))
    q = float(np.quantile(e / sigma_hat, coverage)) / 2
    return a * q ** 2


def coverage_stats(errors: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """Share of entries with |e| ≤ σ and ≤ 2σ, and the Pearson correlation of σ with |e| (NaN when either is
    constant), for (n,) errors and (n,) σ in the same units (finite entries only)."""
    e, s = np.abs(np.asarray(errors, np.float64)).ravel(), np.asarray(std, np.float64).ravel()
    ok = np.isfinite(e) & np.isfinite(s)
    e, s = e[ok], s[ok]
    if e.size == 0:
        return {"cover_1sigma": float("nan"), "cover_2sigma": float("nan"), "std_error_corr": float("nan")}
    corr = float(np.corrcoef(e, s)[0, 1]) if e.std() > 0 and s.std() > 0 else float("nan")
    return {"cover_1sigma": float(np.mean(e <= s)), "cover_2sigma": float(np.mean(e <= 2 * s)),
            "std_error_corr": corr}
