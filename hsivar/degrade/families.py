"""The degradation families of the all-in-one protocol of MP-HSIR ("MP-HSIR: A Multi-Prompt Framework for
Universal Hyperspectral Image Restoration", arXiv:2503.09131): one function and one :class:`Family` row each,
in :data:`FAMILIES`.

Everything else derives from the table: the task names and their order (:data:`TASKS`, the model's
embedding order), the test protocol and its case names, the training sampler, the order of mixtures,
the natural type of a level and the classical baseline scored in evaluations.

========== ========================================= ==================== ===========================
task       level                                     test levels (middle) training draw
========== ========================================= ==================== ===========================
gaussian   σ in 0–255 units (σ/255 on [0,1] data)    30, (50), 70         σ ~ U(30, 70)
complex    case 1–4 (also ``"case2"``)               1, (2), 3, 4         case 2, 3 or 4 (uniform)
blur       kernel size k in pixels (odd)             9, (15), 21          k ∈ {9, 15, 21}
sr         scale factor s (int)                      2, (4), 8            s ∈ {2, 4, 8}
inpaint    fraction r of voxels removed              0.7, (0.8), 0.9      r ∈ {0.7, 0.8, 0.9}
bandmiss   fraction r of bands removed               0.1, (0.2), 0.3      r ∈ {0.1, 0.2, 0.3}
haze       optical depth β of the haze at 550 nm      0.5, (1.0), 1.5      β ~ U(0.4, 1.6)
lowlight   exposure e (fraction of a normal one)      0.2, (0.1), 0.05     e ~ log-U(0.04, 0.25)
========== ========================================= ==================== ===========================

The first six are MP-HSIR's all-in-one protocol (:data:`DEFAULT_TASKS`): the families a model trains on and
is judged on unless its configuration lists others (``model.dag.tasks``). Haze and low light are the
RGB all-in-one degradations (RestoreVAR, VarFormer) that are physical for spectral cubes too.

Protocol details (as MP-HSIR's public degradation code synthesises them, differences noted):

* gaussian: ``x + σ/255·N(0,1)`` i.i.d., **not clipped** (noisy inputs may leave [0,1]).
* complex: non-i.i.d. Gaussian noise on *all* bands, per-band σ drawn uniformly from
  {10,30,50,70}/255 (case 1); then on ``⌊C/3⌋`` random bands: case 2 stripes (per band
  ``randint(⌊0.05W⌋, ⌊0.15W⌋)`` columns, upper bound exclusive as numpy's ``randint``, each column
  offset by ``−(U(0,1)·0.5 − 0.25)`` ∈ (−0.25, 0.25]); case 3 dead lines (``randint(⌈0.05W⌉,
  ⌈0.15W⌉)`` columns set to 0); case 4 impulse (salt & pepper with one rate per image from
  {0.1,0.3,0.5,0.7}, salt/pepper 50/50, values set to 1 / 0). Extras are applied after the noise.
* blur: Gaussian kernel size k, ``σ = 0.3((k−1)/2 − 1) + 0.8`` (OpenCV's rule: 1.7, 2.6, 3.5),
  separable normalised kernel, depthwise convolution with **zero padding** k//2 (borders darken).
* sr: bicubic down-sampling by s with ``align_corners=True`` and no antialiasing (torch
  ``F.interpolate``), then pixel replication (nearest) back to H×W. Values are not clipped
  (bicubic overshoot is kept).
* inpaint: independent per-voxel mask, a voxel is removed (set to 0) where ``U(0,1) ≤ r``
  (MP-HSIR keeps ``rand > r``).
* bandmiss: ``⌊r·C⌋`` bands chosen without replacement and set to 0; metrics score those bands only.
* haze: the atmospheric scattering model ``I = J·t + A·(1 − t)`` (Koschmieder; the model of dark channel
  dehazing and of RESIDE's synthetic haze) with transmission ``t_c(x) = exp(−β·(λ_c/550 nm)^(−α)·d(x))``:
  ``d`` a smooth random density field in [0.3, 1] (a Gaussian-filtered random field, σ a quarter of the image
  side: haze thickens and thins across a scene), α = :data:`HAZE_ANGSTROM` (haze and aerosol scatter short
  wavelengths more), airlight ``A ~ U(0.75, 0.95)`` the same in every band (white sky light). Band
  wavelengths are not known to a degradation: a cube of C ≥ 4 bands is taken to span 400–700 nm evenly in
  band order (the demo cubes do); 1–3 bands get a spectrally flat transmission (an RGB image's channel
  order is red first, and RGB haze datasets use one t).
* lowlight: a short exposure: ``y = e·x^γ + n`` with γ ~ U(1, 1.4) (the camera's tone curve bends dark
  tones; γ = 1 is a linear sensor) and Poisson–Gaussian noise of variance ``e·x^γ / P + σ_r²``
  (:data:`LOWLIGHT_PHOTONS` photons at full scale, read noise σ_r = 2/255); not clipped.

Edge cases (any C ≥ 1, any H, W ≥ 1) — choices made where the protocol is silent or degenerate:

* complex: extras hit ``max(1, ⌊C/3⌋)`` bands, so for C < 3 the single extra-degraded band keeps
  cases 2–4 distinct from case 1 (for C ≥ 3 this is exactly ``⌊C/3⌋``). Stripe/dead-line column
  counts are raised to at least 1 (and the exclusive upper bound to at least lower + 1) for narrow
  images where ``⌊0.05W⌋ = ⌊0.15W⌋``.
* bandmiss: ``n = min(max(1, ⌊r·C⌋), C − 1)``: at least one band goes missing when ``⌊r·C⌋ = 0``
  (C < 10 at r = 0.1) and at least one band stays observed. For C = 1 nothing can be removed:
  the cube is returned unchanged and ``record.missing_bands`` is empty.
* sr: when H or W is not divisible by s the low-resolution grid is ``⌈H/s⌉ × ⌈W/s⌉`` (the last
  low-res pixel covers the remaining < s rows/columns, like a sensor's partial last pixel); the
  replicated image is cropped back to H×W. For divisible sizes this is exactly MP-HSIR's H/s.
* blur: kernels larger than the image are fine (zero padding), output is always H×W.

A family function is ``apply(x, level, rng, record) -> degraded``: ``x`` the clean cube (C, H, W)
float32, owned by the caller and modified in place where convenient; ``level`` already parsed by the
row's ``parse_level``; ``rng`` the only source of randomness; it fills the ``record`` fields its row
lists and returns the degraded cube (C, H, W) float32. :mod:`hsivar.degrade.protocol` dispatches by
the table and builds the record (task, level as given, shape, task weights).

torch and scipy are imported inside the functions that use them: :mod:`hsivar.tasks` and with it
:mod:`hsivar.config` and the command line import this table, and should not pay for them.

Levels are parsed and drawn by the functions of :mod:`hsivar.degrade.levels`.

Adding a family: write its function and append its row to :data:`FAMILIES` (and, if it needs a new
one, its classical method to :mod:`hsivar.classical`). Rows are appended, never reordered: a model
indexes tasks by position. Models trained before keep their own task list (``DAGConfig.tasks`` in
their config) and know nothing of the new family; new training runs get one more task embedding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from hsivar.classical import (
    BICUBIC,
    BIHARMONIC,
    BLIND_DEBLUR,
    BLIND_EXPOSURE,
    DARK_CHANNEL,
    RICHARDSON_LUCY,
    SPECTRAL_INTERP,
    TV_ADAPTIVE,
    TV_CHAMBOLLE,
    Baseline,
    first_estimate_baseline,
)
from hsivar.degrade.levels import (
    Level,
    complex_case,
    draw_choice,
    draw_log_uniform,
    draw_uniform,
    exposure,
    fraction,
    nonnegative,
    odd_size,
    positive_int,
)
from hsivar.degrade.record import DegradationRecord
from hsivar.kernels import blur_sigma, gaussian_kernel1d

__all__ = [
    "COMPLEX_SIGMAS",
    "DEFAULT_TASKS",
    "FAMILIES",
    "HAZE_AIRLIGHT",
    "HAZE_ANGSTROM",
    "LOWLIGHT_GAMMA",
    "LOWLIGHT_PHOTONS",
    "LOWLIGHT_READ_NOISE",
    "IMPULSE_AMOUNTS",
    "TASKS",
    "Family",
    "Level",
    "ImagingStep",
    "draw_choice",
    "draw_log_uniform",
    "draw_uniform",
    "family",
    "haze_band_factors",
    "task_index",
    "task_weights",
    "weights_in",
]

COMPLEX_SIGMAS: tuple[float, ...] = (10, 30, 50, 70)
"""Per-band noise levels (0–255 units) of the non-i.i.d. complex noise."""

IMPULSE_AMOUNTS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
"""Salt & pepper rates; one is chosen per image."""

HAZE_ANGSTROM = 1.0
"""Ångström exponent α of the haze's optical depth, β(λ) ∝ λ^(−α) (≈1 for haze and aerosols; 4 is Rayleigh)."""
HAZE_AIRLIGHT: tuple[float, float] = (0.75, 0.95)
"""Range of the airlight A drawn per image ([0, 1] units)."""
LOWLIGHT_GAMMA: tuple[float, float] = (1.0, 1.4)
"""Range of the tone curve exponent γ of a low-light image."""
LOWLIGHT_PHOTONS = 400.0
"""Photons collected at full scale of a normal exposure (shot noise of a short exposure e: e·x/P variance)."""
LOWLIGHT_READ_NOISE = 2.0 / 255.0
"""Read noise σ of the sensor, [0, 1] units."""


class ImagingStep(IntEnum):
    """Where a degradation happens in the imaging chain; mixtures apply components in this order."""

    ATMOSPHERE = 0
    OPTICS = 1
    SAMPLING = 2
    EXPOSURE = 3
    SENSOR_NOISE = 4
    DATA_LOSS = 5


# ------------------------------------------------------------------------------------------ families


def _gaussian(x: np.ndarray, level: float, rng: np.random.Generator, rec: DegradationRecord) -> np.ndarray:
    """Add i.i.d. Gaussian noise of σ = level/255 (level in 0–255 units) to x (C, H, W); not clipped."""
    sigma = level / 255.0
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma)
    rec.sigma = sigma
    return x


def _column_mask(rng: np.random.Generator, n_bands: int, width: int, lo: int, hi: int) -> np.ndarray:
    """(n_bands, W) bool: each row has ``randint(lo, hi)`` (hi exclusive) distinct random columns."""
    lo = max(lo, 1)
    hi = min(max(hi, lo + 1), width + 1)
    lo = min(lo, hi - 1)
    counts = rng.integers(lo, hi, size=n_bands)
    # Rank of a uniform key per column = a random permutation per band, drawn in one call.
    ranks = np.argsort(np.argsort(rng.random((n_bands, width)), axis=1), axis=1)
    return ranks < counts[:, None]


def _complex(x: np.ndarray, case: int, rng: np.random.Generator, rec: DegradationRecord) -> np.ndarray:
    """Non-i.i.d. noise on every band of x (C, H, W), plus case 2 stripes / 3 dead lines / 4 impulse on
    ``max(1, ⌊C/3⌋)`` random bands (see the module notes)."""
    c, h, w = x.shape
    band_sigmas = (np.asarray(COMPLEX_SIGMAS, np.float32) / 255.0)[rng.integers(0, len(COMPLEX_SIGMAS), size=c)]
    x += rng.standard_normal(x.shape, dtype=np.float32) * band_sigmas[:, None, None]
    rec.band_sigmas, rec.case = band_sigmas, case
    if case == 1:
        return x
    bands = np.sort(rng.permutation(c)[: max(1, c // 3)])
    rec.affected_bands = bands
    if case == 2:
        rec.extra = "stripe"
        cols = _column_mask(rng, bands.size, w, int(0.05 * w), int(0.15 * w))
        offsets = np.zeros((c, w), np.float32)
        offsets[bands] = np.where(cols, -(rng.random(cols.shape, dtype=np.float32) * 0.5 - 0.25), 0.0)
        x += offsets[:, None, :]
        rec.column_mask = np.zeros((c, w), bool)
        rec.column_mask[bands] = cols
        rec.stripe_offsets = offsets
    elif case == 3:
        rec.extra = "deadline"
        cols = _column_mask(rng, bands.size, w, math.ceil(0.05 * w), math.ceil(0.15 * w))
        rec.column_mask = np.zeros((c, w), bool)
        rec.column_mask[bands] = cols
        x *= ~rec.column_mask[:, None, :]
    else:
        rec.extra = "impulse"
        amount = float(IMPULSE_AMOUNTS[rng.integers(len(IMPULSE_AMOUNTS))])
        flipped = rng.random((bands.size, h, w), dtype=np.float32) < amount
        salted = rng.random((bands.size, h, w), dtype=np.float32) < 0.5
        sub = x[bands]
        sub[flipped] = 0.0
        sub[flipped & salted] = 1.0
        x[bands] = sub
        rec.impulse_amount = amount
        rec.impulse_mask = np.zeros(x.shape, bool)
        rec.impulse_mask[bands] = flipped
    return x


def _blur(x: np.ndarray, k: int, rng: np.random.Generator, rec: DegradationRecord) -> np.ndarray:
    """Blur every band of x (C, H, W) with the k×k Gaussian (k odd, in pixels), zero padding; no randomness."""
    from hsivar.deblur import blur

    kern = gaussian_kernel1d(k)
    # Separable passes with zero padding equal MP-HSIR's depthwise F.conv2d with padding k//2 (symmetric
    # kernel, so correlation = convolution); scipy is ~3x faster on CPU.
    out = blur(x, kern)
    rec.kernel, rec.kernel_size, rec.blur_sigma = kern, k, blur_sigma(k)
    return out


def _sr(x: np.ndarray, s: int, rng: np.random.Generator, rec: DegradationRecord) -> np.ndarray:
    """Bicubic down-sampling of x (C, H, W) by the integer factor s, replicated back to H×W; no randomness."""
    import torch
    import torch.nn.functional as F

    c, h, w = x.shape
    lh, lw = math.ceil(h / s), math.ceil(w / s)
    with torch.no_grad():
        lr = F.interpolate(
            torch.from_numpy(x)[None], size=(lh, lw), mode="bicubic", align_corners=True, antialias=False
        )[0].numpy()
    up = np.repeat(np.repeat(lr, s, axis=1), s, axis=2)[:, :h, :w]
    rec.scale, rec.lr_shape = s, (lh, lw)
    return np.ascontiguousarray(up)


def _inpaint(x: np.ndarray, r: float, rng: np.random.Generator, rec: DegradationRecord) -> np.ndarray:
    """Set each voxel of x (C, H, W) to 0 independently with probability r (a fraction)."""
    removed = ~(rng.random(x.shape, dtype=np.float32) > r)
    x[removed] = 0.0
    rec.removed_mask, rec.removed_fraction = removed, r
    return x


def _bandmiss(x: np.ndarray, r: float, rng: np.random.Generator, rec: DegradationRecord) -> np.ndarray:
    """Set ``min(max(1, ⌊r·C⌋), C − 1)`` random bands of x (C, H, W) to 0 (r a fraction of the bands)."""
    c = x.shape[0]
    n = min(max(1, int(r * c)), c - 1)
    bands = np.sort(rng.choice(c, size=n, replace=False)).astype(np.int64)
    x[bands] = 0.0
    rec.missing_bands = bands
    return x


def haze_band_factors(bands: int) -> np.ndarray:
    """(C,) float32 optical depth of each band relative to 550 nm, (λ_c/550)^(−α), under the protocol's
    wavelength convention (C ≥ 4: 400–700 nm evenly in band order; 1–3 bands: flat; see the module notes)."""
    if bands < 4:
        return np.ones(bands, np.float32)
    wl = np.linspace(400.0, 700.0, bands)
    return ((wl / 550.0) ** -HAZE_ANGSTROM).astype(np.float32)


def _haze(x: np.ndarray, beta: float, rng: np.random.Generator, rec: DegradationRecord) -> np.ndarray:
    """Haze over x (C, H, W): ``x·t + A·(1 − t)``, ``t_c = exp(−β·f_c·d)`` (optical depth β at 550 nm, the band
    factors f of :func:`haze_band_factors`, a smooth density d in [0.3, 1]; see the module notes)."""
    from scipy.ndimage import gaussian_filter

    c, h, w = x.shape
    field = gaussian_filter(rng.standard_normal((h, w)), max(h, w) / 4.0, mode="reflect")
    span = float(field.max() - field.min())
    density = 0.3 + 0.7 * ((field - field.min()) / span if span > 0 else np.ones_like(field))
    factors = haze_band_factors(c)
    t = np.exp(-beta * factors[:, None, None] * density[None]).astype(np.float32)
    airlight = np.float32(rng.uniform(*HAZE_AIRLIGHT))
    rec.haze_beta, rec.airlight = beta, np.full(c, airlight, np.float32)
    rec.transmission = t
    return (x * t + airlight * (1.0 - t)).astype(np.float32)


def _lowlight(x: np.ndarray, e: float, rng: np.random.Generator, rec: DegradationRecord) -> np.ndarray:
    """A short exposure e of x (C, H, W): ``e·x^γ`` plus Poisson–Gaussian noise (module notes); not clipped."""
    gamma = float(rng.uniform(*LOWLIGHT_GAMMA))
    signal = e * np.clip(x, 0.0, None) ** gamma
    std = np.sqrt(signal / LOWLIGHT_PHOTONS + LOWLIGHT_READ_NOISE**2)
    rec.exposure, rec.gamma = e, gamma
    return (signal + rng.standard_normal(x.shape, dtype=np.float32) * std).astype(np.float32)


# ------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Family:
    """One degradation family: its function and everything the protocol, training and evaluation need.

    Attributes:
        name: task name (the position of the row in :data:`FAMILIES` is its task index).
        apply: the degradation, ``apply(x, level, rng, record) -> degraded`` (see the module notes).
        parse_level: validates a level and returns it in its natural type (int or float); raises
            ValueError with the reason.
        level_unit: what a level means, with its unit.
        test_levels: the levels of the fixed test protocol.
        middle_level: the one test level of quick validations and demos.
        train_levels: what :attr:`draw_train_level` draws from.
        draw_train_level: ``draw(train_levels, rng) -> level`` for the training sampler.
        step: where in the imaging chain it acts (mixture order; ties keep the table order).
        case_format: protocol case name, formatted with ``name`` and ``level``.
        record_fields: the :class:`~hsivar.degrade.DegradationRecord` fields ``apply`` may set.
        baselines: the classical methods scored next to the model, the strongest first.
        level_facts: what a level says about the observation, ``facts(level, bands) -> {Observation field:
            value}`` (noise σ, blur width, sr scale, stripes); None when only the cube tells (masks).
    """

    name: str
    apply: Callable[[np.ndarray, Any, np.random.Generator, DegradationRecord], np.ndarray]
    parse_level: Callable[[Any], Level]
    level_unit: str
    test_levels: tuple[Level, ...]
    middle_level: Level
    train_levels: tuple[Level, ...]
    draw_train_level: Callable[[Sequence[Level], np.random.Generator], Level]
    step: ImagingStep
    case_format: str
    record_fields: tuple[str, ...]
    baselines: tuple[Baseline, ...]
    level_facts: Callable[[Level, int], dict[str, Any]] | None = None

    def parse(self, level: Any) -> Level:
        """``level`` in its natural type (int or float), validated.

        Raises:
            ValueError: not a valid level of this family (the message names the family and the rule).
        """
        try:
            return self.parse_level(level)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.name} level {level!r}: {e}") from None

    def case_name(self, level: Level) -> str:
        """Name of the protocol case at ``level``, e.g. ``"gaussian_30"``, ``"complex_case2"``."""
        return self.case_format.format(name=self.name, level=level)


def _noise_facts(level: Level, bands: int) -> dict[str, Any]:
    return {"noise_sigma": np.full(bands, float(level) / 255.0, np.float32)}


def _complex_facts(level: Level, bands: int) -> dict[str, Any]:
    return {"stripes": int(level) == 2}


def _blur_facts(level: Level, bands: int) -> dict[str, Any]:
    # the level says nothing of the border: read from the cube (zero-padded crops, or the scene beyond a crop that
    # an evaluation blurred with a margin)
    return {"blur_sigma": blur_sigma(int(level))}


def _sr_facts(level: Level, bands: int) -> dict[str, Any]:
    return {"sr_scale": int(level)}


def _haze_facts(level: Level, bands: int) -> dict[str, Any]:
    return {"haze": True}


def _lowlight_facts(level: Level, bands: int) -> dict[str, Any]:
    return {"exposure": float(level)}


FAMILIES: tuple[Family, ...] = (
    Family("gaussian", _gaussian, nonnegative, "σ in 0–255 units (σ/255 on [0, 1] data)",
           test_levels=(30, 50, 70), middle_level=50, train_levels=(30.0, 70.0), draw_train_level=draw_uniform,
           step=ImagingStep.SENSOR_NOISE, case_format="{name}_{level:g}", record_fields=("sigma",),
           baselines=(first_estimate_baseline("gaussian"), TV_ADAPTIVE, TV_CHAMBOLLE), level_facts=_noise_facts),
    # Training: non-i.i.d. noise plus exactly one extra (cases 2–4); pure non-i.i.d. is never trained.
    Family("complex", _complex, complex_case, "case 1–4 (non-i.i.d. noise; + stripes, dead lines, impulse)",
           test_levels=(1, 2, 3, 4), middle_level=2, train_levels=(2, 3, 4), draw_train_level=draw_choice,
           step=ImagingStep.SENSOR_NOISE, case_format="{name}_case{level:g}",
           record_fields=("band_sigmas", "case", "extra", "affected_bands", "column_mask", "stripe_offsets",
                          "impulse_amount", "impulse_mask"),
           baselines=(first_estimate_baseline("complex"), TV_ADAPTIVE, TV_CHAMBOLLE), level_facts=_complex_facts),
    Family("blur", _blur, odd_size, "Gaussian kernel size k in pixels (odd)",
           test_levels=(9, 15, 21), middle_level=15, train_levels=(9, 15, 21), draw_train_level=draw_choice,
           step=ImagingStep.OPTICS, case_format="{name}_{level:g}",
           record_fields=("kernel", "kernel_size", "blur_sigma"),
           baselines=(first_estimate_baseline("blur"), BLIND_DEBLUR, RICHARDSON_LUCY), level_facts=_blur_facts),
    Family("sr", _sr, positive_int, "integer scale factor s",
           test_levels=(2, 4, 8), middle_level=4, train_levels=(2, 4, 8), draw_train_level=draw_choice,
           step=ImagingStep.SAMPLING, case_format="{name}_{level:g}", record_fields=("scale", "lr_shape"),
           baselines=(first_estimate_baseline("sr"), BICUBIC), level_facts=_sr_facts),
    Family("inpaint", _inpaint, fraction, "fraction r of voxels removed",
           test_levels=(0.7, 0.8, 0.9), middle_level=0.8, train_levels=(0.7, 0.8, 0.9), draw_train_level=draw_choice,
           step=ImagingStep.DATA_LOSS, case_format="{name}_{level:g}",
           record_fields=("removed_mask", "removed_fraction"),
           baselines=(first_estimate_baseline("inpaint"), BIHARMONIC)),
    Family("bandmiss", _bandmiss, fraction, "fraction r of bands removed",
           test_levels=(0.1, 0.2, 0.3), middle_level=0.2, train_levels=(0.1, 0.2, 0.3), draw_train_level=draw_choice,
           step=ImagingStep.DATA_LOSS, case_format="{name}_{level:g}", record_fields=("missing_bands",),
           baselines=(first_estimate_baseline("bandmiss"), SPECTRAL_INTERP)),
    Family("haze", _haze, nonnegative, "optical depth β of the haze at 550 nm",
           test_levels=(0.5, 1.0, 1.5), middle_level=1.0, train_levels=(0.4, 1.6), draw_train_level=draw_uniform,
           step=ImagingStep.ATMOSPHERE, case_format="{name}_{level:g}",
           record_fields=("haze_beta", "airlight", "transmission"),
           baselines=(first_estimate_baseline("haze"), DARK_CHANNEL), level_facts=_haze_facts),
    Family("lowlight", _lowlight, exposure, "exposure e, a fraction of a normal exposure",
           test_levels=(0.2, 0.1, 0.05), middle_level=0.1, train_levels=(0.04, 0.25),
           draw_train_level=draw_log_uniform, step=ImagingStep.EXPOSURE, case_format="{name}_{level:g}",
           record_fields=("exposure", "gamma"),
           baselines=(first_estimate_baseline("lowlight"), BLIND_EXPOSURE),
           level_facts=_lowlight_facts),
)
"""The families in task-embedding order (the model's contract: see :data:`TASKS`)."""

TASKS: tuple[str, ...] = tuple(f.name for f in FAMILIES)
"""Task family names, in table order: degradation records' task weights index by it."""

DEFAULT_TASKS: tuple[str, ...] = ("gaussian", "complex", "blur", "sr", "inpaint", "bandmiss")
"""MP-HSIR's all-in-one protocol: the families a model is trained and judged on unless its configuration lists
others (``model.dag.tasks``, whose order is its task embeddings' and classifier's)."""


def family(name: str) -> Family:
    """The row of task family ``name``.

    Raises:
        ValueError: ``name`` is not a family (the message lists the valid ones).
    """
    return FAMILIES[task_index(name)]


def task_index(name: str) -> int:
    """Position of task family ``name`` in :data:`TASKS` (its row in :data:`FAMILIES`).

    Raises:
        ValueError: ``name`` is not a family (the message lists the valid ones).
    """
    try:
        return TASKS.index(name)
    except ValueError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None


def weights_in(weights: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
    """Task weights (N,) in :data:`TASKS` order (a degradation record's) → (len(tasks),) float32 in the order of
    ``tasks`` (a model's own task list, ``model.dag.tasks``).

    Raises:
        ValueError: ``tasks`` names an unknown family.
    """
    return np.asarray(weights, np.float32)[[task_index(t) for t in tasks]]


def task_weights(tasks: Sequence[str]) -> np.ndarray:
    """Task weight vector, shape (N,) float32 in :data:`TASKS` order (N families), summing to 1.

    Uniform over the given components (one task → one-hot; a task listed twice counts twice).

    Raises:
        ValueError: ``tasks`` is empty or names an unknown family.
    """
    if not tasks:
        raise ValueError("task_weights needs at least one task")
    w = np.zeros(len(TASKS), dtype=np.float32)
    for t in tasks:
        w[task_index(t)] += 1.0
    return w / w.sum()
