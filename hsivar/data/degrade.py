"""Degradation synthesis for the all-in-one protocol (DESIGN.md §4, MP-HSIR's protocol).

Every function takes a clean cube ``(C, H, W)`` float32 with values in [0, 1] (a numpy array, or a
torch tensor: the result then comes back as a tensor of the same dtype and device) and a
``numpy.random.Generator``; it returns the degraded cube, same shape, float32, and a
:class:`DegradationRecord` saying exactly what was done (masks, affected bands, sigmas, kernel...).

The six families, in the order of :data:`hsivar.tasks.TASKS`, and their ``level`` argument:

========== ========================================= ==================== ===========================
task       level                                     test levels          training draw
========== ========================================= ==================== ===========================
gaussian   σ in 0–255 units (σ/255 on [0,1] data)    30, 50, 70           σ ~ U(30, 70)
complex    case 1–4 (also ``"case2"``)               1, 2, 3, 4           case 2, 3 or 4 (uniform)
blur       kernel size k (odd)                       9, 15, 21            k ∈ {9, 15, 21}
sr         scale factor s (int)                      2, 4, 8              s ∈ {2, 4, 8}
inpaint    fraction r of voxels removed              0.7, 0.8, 0.9        r ∈ {0.7, 0.8, 0.9}
bandmiss   fraction r of bands removed               0.1, 0.2, 0.3        r ∈ {0.1, 0.2, 0.3}
========== ========================================= ==================== ===========================

Protocol details (REFERENCE.md, "Degradation synthesis"):

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

Mixtures (:func:`degrade_mixture`) chain several degradations; by default in a physical order
(blur → sr → noise → missing data), with per-task weights uniform over the components.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import correlate1d

from hsivar.tasks import TASKS, task_index

__all__ = [
    "TEST_LEVELS",
    "TRAIN_LEVELS",
    "COMPLEX_SIGMAS",
    "IMPULSE_AMOUNTS",
    "DegradationRecord",
    "ProtocolCase",
    "task_weights",
    "blur_sigma",
    "gaussian_kernel1d",
    "degrade",
    "degrade_mixture",
    "sample_training_degradation",
    "test_protocol",
    "degrade_for_test",
    "missing_band_mask",
]

TEST_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian": (30, 50, 70),
    "complex": (1, 2, 3, 4),
    "blur": (9, 15, 21),
    "sr": (2, 4, 8),
    "inpaint": (0.7, 0.8, 0.9),
    "bandmiss": (0.1, 0.2, 0.3),
}
"""Test levels per task family (units as in the module table)."""

TRAIN_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian": (30.0, 70.0),  # continuous range U(30, 70)
    "complex": (2, 3, 4),  # non-i.i.d. + exactly one of stripe / deadline / impulse
    "blur": (9, 15, 21),
    "sr": (2, 4, 8),
    "inpaint": (0.7, 0.8, 0.9),
    "bandmiss": (0.1, 0.2, 0.3),
}
"""Training draws per task family (gaussian: the (low, high) of a uniform σ; others: a choice)."""

COMPLEX_SIGMAS: tuple[float, ...] = (10, 30, 50, 70)
"""Per-band noise levels (0–255 units) of the non-i.i.d. complex noise."""

IMPULSE_AMOUNTS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
"""Salt & pepper rates; one is chosen per image."""

_COMPLEX_EXTRAS = {1: None, 2: "stripe", 3: "deadline", 4: "impulse"}
# Physical order used by degrade_mixture: optics and sampling, then sensor noise, then data loss.
_PHYSICAL_ORDER = ("blur", "sr", "gaussian", "complex", "inpaint", "bandmiss")


def task_weights(tasks: Sequence[str]) -> np.ndarray:
    """Task weight vector, shape (6,) float32 in :data:`hsivar.tasks.TASKS` order.

    Uniform over the given components (one task → one-hot; a task listed twice counts twice).
    """
    w = np.zeros(len(TASKS), dtype=np.float32)
    if not tasks:
        raise ValueError("task_weights needs at least one task")
    for t in tasks:
        w[task_index(t)] += 1.0
    return w / w.sum()


@dataclass
class DegradationRecord:
    """What one degradation did to a cube of shape ``shape = (C, H, W)``.

    Only the fields of the family concerned are set; noise levels are in [0, 1] data units
    (σ/255). Masks are boolean numpy arrays, True where the voxel / column was hit.

    Attributes:
        task: family name from :data:`~hsivar.tasks.TASKS`, or ``"mixture"``.
        level: the level argument as given (σ in 0–255, case, k, s or r); None for mixtures.
        shape: (C, H, W) of the cube.
        weights: (6,) float32 task weights (one-hot, or uniform over a mixture's components).
        sigma: gaussian σ in data units.
        band_sigmas: complex, (C,) per-band σ in data units.
        case: complex case 1–4.
        extra: complex extra, ``"stripe"``, ``"deadline"``, ``"impulse"`` or None (case 1).
        affected_bands: complex, sorted band indices that got the extra.
        column_mask: complex stripe/deadline, (C, W) bool, the hit columns of each band.
        stripe_offsets: complex stripe, (C, W) float32 value added to each column (0 elsewhere).
        impulse_amount: complex impulse, the salt & pepper rate of this image.
        impulse_mask: complex impulse, (C, H, W) bool, voxels set to 0 or 1.
        kernel: blur, (k,) float32 separable kernel (sums to 1); the 2-D kernel is its outer product.
        kernel_size: blur k.
        blur_sigma: blur σ in pixels.
        scale: sr factor s.
        lr_shape: sr low-resolution (h, w).
        removed_mask: inpaint, (C, H, W) bool, True where the voxel was removed (set to 0).
        removed_fraction: inpaint r (target fraction removed).
        missing_bands: bandmiss, sorted int64 indices of the zeroed bands (mixtures: the union).
        components: mixture, the component records in the order applied.
    """

    task: str
    level: float | int | None
    shape: tuple[int, int, int]
    weights: np.ndarray
    sigma: float | None = None
    band_sigmas: np.ndarray | None = None
    case: int | None = None
    extra: str | None = None
    affected_bands: np.ndarray | None = None
    column_mask: np.ndarray | None = None
    stripe_offsets: np.ndarray | None = None
    impulse_amount: float | None = None
    impulse_mask: np.ndarray | None = None
    kernel: np.ndarray | None = None
    kernel_size: int | None = None
    blur_sigma: float | None = None
    scale: int | None = None
    lr_shape: tuple[int, int] | None = None
    removed_mask: np.ndarray | None = None
    removed_fraction: float | None = None
    missing_bands: np.ndarray | None = None
    components: tuple[DegradationRecord, ...] = field(default_factory=tuple)

    @property
    def task_id(self) -> int:
        """Index of the task in :data:`~hsivar.tasks.TASKS`; −1 for a mixture."""
        return -1 if self.task == "mixture" else task_index(self.task)

    @property
    def band_mask(self) -> np.ndarray | None:
        """(C,) bool mask of the bands a metric should score, or None for all bands.

        Band completion scores the missing bands only (MP-HSIR's ``compute_psnr_ssim2``). A mixture
        that also degrades the observed bands (any non-bandmiss component) is scored on all bands.
        """
        if self.task == "bandmiss" or (
            self.task == "mixture" and self.components and all(c.task == "bandmiss" for c in self.components)
        ):
            if self.missing_bands is None or self.missing_bands.size == 0:
                return None
            mask = np.zeros(self.shape[0], dtype=bool)
            mask[self.missing_bands] = True
            return mask
        return None

    @property
    def kernel2d(self) -> np.ndarray | None:
        """Blur only: the (k, k) float32 kernel (outer product of :attr:`kernel`), else None."""
        return None if self.kernel is None else np.outer(self.kernel, self.kernel).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly dict: scalars and small lists; masks are reduced to hit fractions."""
        out: dict[str, Any] = {"task": self.task, "level": self.level, "shape": list(self.shape)}
        out["weights"] = [round(float(v), 6) for v in self.weights]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in out or v is None or f.name == "components":
                continue
            if f.name.endswith("_mask"):
                out[f"{f.name}_fraction"] = float(np.mean(v))
            elif isinstance(v, np.ndarray):
                if v.size <= 64:
                    out[f.name] = v.tolist()
            elif isinstance(v, tuple):
                out[f.name] = list(v)
            else:
                out[f.name] = v
        if self.components:
            out["components"] = [c.summary() for c in self.components]
        return out


# --------------------------------------------------------------------------------------------- helpers


def _to_numpy(cube: np.ndarray | torch.Tensor) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """Validate ``cube`` (C, H, W) and return a float32 numpy copy plus a function mapping results back
    to the caller's type (numpy, or a torch tensor of the input's dtype and device)."""
    if isinstance(cube, torch.Tensor):
        arr = cube.detach().to("cpu", torch.float32).numpy().copy()
        dtype, device = cube.dtype, cube.device

        def back(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x).to(device=device, dtype=dtype)
    else:
        arr = np.array(cube, dtype=np.float32, copy=True)

        def back(x: np.ndarray) -> np.ndarray:
            return x

    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"expected a cube of shape (C, H, W) with C, H, W >= 1, got shape {tuple(arr.shape)}")
    return arr, back


def _weights(task: str) -> np.ndarray:
    return task_weights([task])


def blur_sigma(kernel_size: int) -> float:
    """Gaussian σ in pixels for kernel size k by OpenCV's rule ``0.3((k−1)/2 − 1) + 0.8``."""
    return 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8


def gaussian_kernel1d(kernel_size: int, sigma: float | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian kernel, shape (k,) float32, summing to 1; σ defaults to :func:`blur_sigma`."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel size must be a positive odd integer, got {kernel_size}")
    sigma = blur_sigma(kernel_size) if sigma is None else sigma
    x = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _column_mask(rng: np.random.Generator, n_bands: int, width: int, lo: int, hi: int) -> np.ndarray:
    """(n_bands, W) bool: each row has ``randint(lo, hi)`` (hi exclusive) distinct random columns."""
    lo = max(lo, 1)
    hi = min(max(hi, lo + 1), width + 1)
    lo = min(lo, hi - 1)
    counts = rng.integers(lo, hi, size=n_bands)
    # Rank of a uniform key per column = a random permutation per band, drawn in one call.
    ranks = np.argsort(np.argsort(rng.random((n_bands, width)), axis=1), axis=1)
    return ranks < counts[:, None]


def _affected_bands(rng: np.random.Generator, c: int) -> np.ndarray:
    n = max(1, c // 3)
    return np.sort(rng.permutation(c)[:n])


# --------------------------------------------------------------------------------------------- families


def _gaussian(x: np.ndarray, level: Any, rng: np.random.Generator) -> tuple[np.ndarray, DegradationRecord]:
    sigma = float(level) / 255.0
    if not sigma >= 0:
        raise ValueError(f"gaussian sigma must be >= 0 (0-255 units), got {level!r}")
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma)
    return x, DegradationRecord("gaussian", level, x.shape, _weights("gaussian"), sigma=sigma)


def _complex(x: np.ndarray, case: int, rng: np.random.Generator, level: Any) -> tuple[np.ndarray, DegradationRecord]:
    c, h, w = x.shape
    band_sigmas = (np.asarray(COMPLEX_SIGMAS, np.float32) / 255.0)[rng.integers(0, len(COMPLEX_SIGMAS), size=c)]
    x += rng.standard_normal(x.shape, dtype=np.float32) * band_sigmas[:, None, None]
    extra = _COMPLEX_EXTRAS[case]
    rec = DegradationRecord(
        "complex", level, x.shape, _weights("complex"), band_sigmas=band_sigmas, case=case, extra=extra
    )
    if extra is None:
        return x, rec
    bands = _affected_bands(rng, c)
    rec.affected_bands = bands
    if extra == "stripe":
        cols = _column_mask(rng, bands.size, w, int(0.05 * w), int(0.15 * w))
        offsets = np.zeros((c, w), np.float32)
        offsets[bands] = np.where(cols, -(rng.random(cols.shape, dtype=np.float32) * 0.5 - 0.25), 0.0)
        x += offsets[:, None, :]
        rec.column_mask = np.zeros((c, w), bool)
        rec.column_mask[bands] = cols
        rec.stripe_offsets = offsets
    elif extra == "deadline":
        cols = _column_mask(rng, bands.size, w, math.ceil(0.05 * w), math.ceil(0.15 * w))
        rec.column_mask = np.zeros((c, w), bool)
        rec.column_mask[bands] = cols
        x *= ~rec.column_mask[:, None, :]
    else:  # impulse
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
    return x, rec


def _blur(x: np.ndarray, k: int) -> tuple[np.ndarray, DegradationRecord]:
    kern = gaussian_kernel1d(k)
    # Separable passes with zero padding (mode="constant", cval=0) equal MP-HSIR's depthwise F.conv2d
    # with padding k//2 (symmetric kernel, so correlation = convolution); scipy is ~3x faster on CPU.
    out = correlate1d(x, kern, axis=2, mode="constant", cval=0.0)
    out = correlate1d(out, kern, axis=1, mode="constant", cval=0.0)
    rec = DegradationRecord("blur", k, x.shape, _weights("blur"), kernel=kern, kernel_size=k, blur_sigma=blur_sigma(k))
    return out, rec


def _sr(x: np.ndarray, s: int) -> tuple[np.ndarray, DegradationRecord]:
    c, h, w = x.shape
    lh, lw = math.ceil(h / s), math.ceil(w / s)
    with torch.no_grad():
        lr = F.interpolate(
            torch.from_numpy(x)[None], size=(lh, lw), mode="bicubic", align_corners=True, antialias=False
        )[0].numpy()
    up = np.repeat(np.repeat(lr, s, axis=1), s, axis=2)[:, :h, :w]
    rec = DegradationRecord("sr", s, x.shape, _weights("sr"), scale=s, lr_shape=(lh, lw))
    return np.ascontiguousarray(up), rec


def _inpaint(x: np.ndarray, r: float, rng: np.random.Generator) -> tuple[np.ndarray, DegradationRecord]:
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"inpaint ratio must be in [0, 1], got {r}")
    removed = ~(rng.random(x.shape, dtype=np.float32) > r)
    x[removed] = 0.0
    rec = DegradationRecord("inpaint", r, x.shape, _weights("inpaint"), removed_mask=removed, removed_fraction=float(r))
    return x, rec


def _bandmiss(x: np.ndarray, r: float, rng: np.random.Generator) -> tuple[np.ndarray, DegradationRecord]:
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"bandmiss ratio must be in [0, 1], got {r}")
    c = x.shape[0]
    n = min(max(1, int(r * c)), c - 1)
    bands = np.sort(rng.choice(c, size=n, replace=False)).astype(np.int64)
    x[bands] = 0.0
    return x, DegradationRecord("bandmiss", r, x.shape, _weights("bandmiss"), missing_bands=bands)


def _parse_case(level: Any) -> int:
    if isinstance(level, str):
        s = level.lower().removeprefix("case")
        if s.isdigit():
            level = int(s)
    if isinstance(level, (int, np.integer, float)) and float(level) in (1, 2, 3, 4):
        return int(level)
    raise ValueError(f"complex level must be a case 1-4 (or 'case1'..'case4'), got {level!r}")


def _parse_int(task: str, level: Any) -> int:
    if isinstance(level, (int, np.integer)) or (isinstance(level, float) and level.is_integer()):
        if int(level) >= 1:
            return int(level)
    raise ValueError(f"{task} level must be a positive integer, got {level!r}")


def _apply(x: np.ndarray, task: str, level: Any, rng: np.random.Generator) -> tuple[np.ndarray, DegradationRecord]:
    """Degrade numpy float32 ``x`` (C, H, W), owned by the caller (may be modified in place)."""
    task_index(task)  # validates the name
    if task == "gaussian":
        return _gaussian(x, level, rng)
    if task == "complex":
        return _complex(x, _parse_case(level), rng, level)
    if task == "blur":
        return _blur(x, _parse_int(task, level))
    if task == "sr":
        return _sr(x, _parse_int(task, level))
    if task == "inpaint":
        return _inpaint(x, float(level), rng)
    return _bandmiss(x, float(level), rng)


# --------------------------------------------------------------------------------------------- public


def degrade(
    cube: np.ndarray | torch.Tensor, task: str, level: float | int | str, rng: np.random.Generator
) -> tuple[np.ndarray | torch.Tensor, DegradationRecord]:
    """Apply one degradation family at one level.

    Args:
        cube: clean cube (C, H, W), values in [0, 1]; numpy (any float dtype, copied to float32) or
            a torch tensor (computed on CPU, returned with the input's dtype and device).
        task: one of :data:`hsivar.tasks.TASKS`.
        level: gaussian σ (0–255 units), complex case 1–4, blur kernel size (odd pixels), sr scale
            factor, inpaint / bandmiss fraction removed (see the module table).
        rng: the only source of randomness (same generator state → same result).

    Returns:
        ``(degraded, record)``: degraded (C, H, W) float32 (same type as ``cube``; not clipped) and the
        :class:`DegradationRecord`. The input is never modified.
    """
    x, back = _to_numpy(cube)
    out, rec = _apply(x, task, level, rng)
    return back(out), rec


def degrade_mixture(
    cube: np.ndarray | torch.Tensor,
    components: Sequence[tuple[str, float | int | str]],
    rng: np.random.Generator,
    *,
    physical_order: bool = True,
) -> tuple[np.ndarray | torch.Tensor, DegradationRecord]:
    """Chain several degradations, e.g. ``[("gaussian", 30), ("blur", 9)]``.

    Args:
        cube: clean cube (C, H, W) in [0, 1] (numpy or torch, as in :func:`degrade`).
        components: (task, level) pairs, levels as in :func:`degrade`.
        rng: source of randomness.
        physical_order: apply in the order blur → sr → gaussian → complex → inpaint → bandmiss (optics
            and sampling before sensor noise, data loss last; stable for equal tasks). False: as given.

    Returns:
        ``(degraded, record)`` with ``record.task == "mixture"``, ``record.components`` the component
        records in the order applied, ``record.weights`` uniform over the components' families and
        ``record.missing_bands`` the union of any bandmiss components.
    """
    if not components:
        raise ValueError("degrade_mixture needs at least one (task, level) component")
    comps = list(components)
    for t, _ in comps:
        task_index(t)
    if physical_order:
        comps.sort(key=lambda tl: _PHYSICAL_ORDER.index(tl[0]))
    x, back = _to_numpy(cube)
    recs = []
    for t, lvl in comps:
        x, r = _apply(x, t, lvl, rng)
        recs.append(r)
    missing = [r.missing_bands for r in recs if r.missing_bands is not None]
    rec = DegradationRecord(
        "mixture",
        None,
        x.shape,
        task_weights([t for t, _ in comps]),
        missing_bands=np.unique(np.concatenate(missing)).astype(np.int64) if missing else None,
        components=tuple(recs),
    )
    return back(x), rec


def sample_training_degradation(
    cube: np.ndarray | torch.Tensor, rng: np.random.Generator
) -> tuple[np.ndarray | torch.Tensor, DegradationRecord]:
    """Draw one training degradation (MP-HSIR's ``de_id``) and apply it.

    The family is uniform over the six :data:`~hsivar.tasks.TASKS`; levels follow
    :data:`TRAIN_LEVELS`: gaussian σ ~ U(30, 70) (continuous, 0–255 units), complex = non-i.i.d. +
    exactly one of stripe / deadline / impulse (cases 2–4 uniform; pure non-i.i.d. is never
    trained), blur k, sr s, inpaint r and bandmiss r drawn from their sets.

    Args:
        cube: clean cube (C, H, W) in [0, 1] (numpy or torch).
        rng: source of randomness.

    Returns:
        ``(degraded, record)`` as :func:`degrade`.
    """
    task = TASKS[int(rng.integers(len(TASKS)))]
    if task == "gaussian":
        lo, hi = TRAIN_LEVELS["gaussian"]
        level: float | int = float(rng.uniform(lo, hi))
    else:
        choices = TRAIN_LEVELS[task]
        level = choices[int(rng.integers(len(choices)))]
    return degrade(cube, task, level, rng)


@dataclass(frozen=True)
class ProtocolCase:
    """One (task, level) pair of the fixed test protocol; ``name`` is e.g. ``"gaussian_30"``."""

    task: str
    level: float | int
    name: str


def test_protocol() -> tuple[ProtocolCase, ...]:
    """Every (task, level) pair of the test protocol, 19 cases in :data:`TASKS` order:
    gaussian 30/50/70, complex case1–4, blur 9/15/21, sr 2/4/8, inpaint 0.7/0.8/0.9, bandmiss 0.1/0.2/0.3.
    """
    out = []
    for task in TASKS:
        for lvl in TEST_LEVELS[task]:
            name = f"{task}_case{lvl}" if task == "complex" else f"{task}_{lvl:g}"
            out.append(ProtocolCase(task, lvl, name))
    return tuple(out)


test_protocol.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def degrade_for_test(
    cube: np.ndarray | torch.Tensor,
    task: str,
    level: float | int | str,
    seed: int = 2024,
    index: int = 0,
) -> tuple[np.ndarray | torch.Tensor, DegradationRecord]:
    """Reproducible test degradation of image number ``index`` of a test set.

    The generator is seeded from ``(seed, index, task, level)``, so every (image, case) pair gets
    its own fixed noise regardless of evaluation order or which other cases are run (unlike
    MP-HSIR's single ``set_seed(2024)`` stream, which depends on the order).

    Args:
        cube: clean cube (C, H, W) in [0, 1].
        task, level: as in :func:`degrade` (normally a pair from :func:`test_protocol`).
        seed: test-set seed (2024 as in MP-HSIR).
        index: image number within the test set (≥ 0).

    Returns:
        ``(degraded, record)`` as :func:`degrade`.
    """
    level_key = _parse_case(level) if task == "complex" else level
    # Levels can be fractions; a fixed-point integer keeps the seed key exact and hashable.
    key = (int(seed), int(index), task_index(task), round(float(level_key) * 1000))
    return degrade(cube, task, level, np.random.default_rng(key))


def missing_band_mask(degraded: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C,) bool, True for bands that are entirely zero in ``degraded`` (C, H, W) — MP-HSIR's rule for
    which bands ``compute_psnr_ssim2`` scores when no record is at hand."""
    x = degraded.detach().cpu().numpy() if isinstance(degraded, torch.Tensor) else np.asarray(degraded)
    return ~np.any(x.reshape(x.shape[0], -1) != 0, axis=1)
