"""The observation model: how a degraded cube was observed, and what is known about it.

A degradation family is an operator A on the clean cube x (C, H, W) in [0, 1] plus noise: the degraded
cube is y = A(x) + n. :class:`Observation` holds what is known about A and n for one cube:

* ``missing`` — (C, H, W) bool, entries that were not observed: removed voxels (inpaint), missing bands
  (bandmiss), dead lines and impulse-hit voxels (complex), a file's nodata or bad bands, a user's mask.
  The entries that were observed are exact up to the noise, so the restoration keeps them.
* ``sr_scale`` — y is x down-sampled by s (bicubic, ``align_corners=True``) and pixel-replicated back to
  H×W; what was observed is the low-resolution grid ``y[:, ::s, ::s]``.
* ``blur_sigma`` — y is x blurred by a separable Gaussian of this width (pixels).
* ``blur_border`` — the blur's boundary (:data:`hsivar.deblur.Border`): ``"zero"``, zero padding beyond the frame
  (the blur family's, so its records say so), or ``"free"``, a scene going on beyond it (a
  camera's image, a tile of a larger one); None: read from the cube's border when deblurring
  (:func:`hsivar.deblur.border_of`).
* ``noise_sigma`` — (C,) per-band noise σ in [0, 1] units.
* ``stripes`` — some bands carry column offsets (complex noise, case 2); None: not known (detection decides),
  False: known to have none (a record or a protocol level says so, and detection does not override it).
* ``haze`` — y is x seen through haze, ``x·t + A·(1 − t)`` (:mod:`hsivar.dehaze` estimates t and A).
* ``exposure`` — y is a short exposure, about ``exposure``·x plus shot and read noise (:mod:`hsivar.exposure`).

It comes from the degradation record (training, evaluation with the true task, a user who says so:
:meth:`Observation.from_record`), from a file's metadata or a request (nodata, bad bands, a mask:
:meth:`Observation.merge`), and in blind ``auto`` mode from the cube itself (:meth:`Observation.detect`):
bands that are zero everywhere, voxels that hold exactly 0, 1 or the cube's minimum or maximum when many do
(removed, impulse-hit or saturated entries), pixel replication in s×s blocks, and each band's noise σ from its finest
diagonal Haar coefficients (Donoho's median absolute deviation estimator). A blur, haze or a short exposure cannot
be told from the cube by these rules; the model's task classifier weighs them (:mod:`hsivar.restore`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hsivar.deblur import Border
from hsivar.degrade.record import DegradationRecord
from hsivar.exposure import brightness

SR_SCALES: tuple[int, ...] = (8, 4, 2)
"""Replication factors :meth:`Observation.detect` looks for, largest first."""

SCATTERED_FRACTION = 0.05
"""Scattered (not whole-band) unobserved entries above this fraction of the cube point to inpainting."""

IID_NOISE_CV, NON_IID_NOISE_CV = 0.12, 0.25
"""Coefficients of variation of the per-band noise σ below which noise reads as i.i.d. (gaussian) and above which
as band-dependent (complex); between both, either."""

UNSEEN_FAMILIES: tuple[str, ...] = ("blur", "haze", "lowlight")
"""Families whose facts (a blur's width, haze, the exposure) the cube's rules cannot show: when nothing else shows,
``task="auto"`` weighs them, and the model's classifier decides (:meth:`Observation.unknown_facts`)."""

DARK_LEVEL = 0.35
"""A noisy cube whose 99.5th percentile ([0, 1] units) is below this may be a short exposure (low light)."""

SATURATED_FRACTION = 1e-3
"""Exact minimum / maximum values count as unobserved entries when they hold more than this fraction of the
cube's voxels (a clean normalised cube has one voxel at each extreme)."""


@dataclass
class Observation:
    """What is known about how a cube of shape ``shape`` (C, H, W) was observed (see the module docstring)."""

    shape: tuple[int, int, int]
    missing: np.ndarray | None = None
    sr_scale: int | None = None
    blur_sigma: float | None = None
    noise_sigma: np.ndarray | None = None
    stripes: bool | None = None
    source: dict[str, str] = field(default_factory=dict)
    plausible: tuple[str, ...] | None = None
    haze: bool | None = None
    exposure: float | None = None
    blur_border: Border | None = None

    def unknown_facts(self) -> tuple[str, ...]:
        """The families of :data:`UNSEEN_FAMILIES` whose fact this observation does not know yet: blur (its width),
        haze (whether there is any), low light (its exposure)."""
        known = {"blur": bool(self.blur_sigma), "haze": self.haze is not None, "lowlight": self.exposure is not None}
        return tuple(f for f in UNSEEN_FAMILIES if not known[f])

    @property
    def underexposed(self) -> bool:
        """Whether a short exposure is known or estimated (``exposure`` below 1)."""
        return self.exposure is not None and self.exposure < 1.0

    @property
    def observed(self) -> np.ndarray:
        """(C, H, W) bool: True where the entry was observed."""
        return np.ones(self.shape, bool) if self.missing is None else ~self.missing

    @property
    def missing_bands(self) -> np.ndarray:
        """(C,) bool: bands with no observed entry."""
        if self.missing is None:
            return np.zeros(self.shape[0], bool)
        return self.missing.reshape(self.shape[0], -1).all(axis=1)

    @property
    def has_missing(self) -> bool:
        """Whether any entry is unobserved."""
        return self.missing is not None and bool(self.missing.any())

    def noisy(self, threshold: float = 5 / 255) -> bool:
        """Whether the noisiest tenth of the bands has σ above ``threshold`` ([0, 1] units; 5/255 by default:
        lighter noise is left to the model, the denoiser's smoothing would cost more than it removes). The 90th
        percentile rather than the maximum: one band's estimate from few samples must not flip the decision."""
        return self.noise_sigma is not None and bool(np.quantile(self.noise_sigma, 0.9) > threshold)

    def merge(self, other: Observation) -> Observation:
        """Both observations at once: the union of the unobserved entries; for every other field, this one's
        value when known, else ``other``'s."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge observations of shapes {self.shape} and {other.shape}")
        missing = self.missing if other.missing is None else (
            other.missing if self.missing is None else self.missing | other.missing)
        noise = self.noise_sigma if self.noise_sigma is not None else other.noise_sigma
        return Observation(self.shape, missing, self.sr_scale or other.sr_scale,
                           self.blur_sigma if self.blur_sigma is not None else other.blur_sigma, noise,
                           self.stripes if self.stripes is not None else other.stripes,
                           {**other.source, **self.source},
                           self.plausible if self.plausible is not None else other.plausible,
                           self.haze if self.haze is not None else other.haze,
                           self.exposure if self.exposure is not None else other.exposure,
                           self.blur_border or other.blur_border)

    def with_missing(self, mask: np.ndarray, source: str) -> Observation:
        """This observation with the (C, H, W) bool ``mask`` of entries known to be unobserved added."""
        return self.merge(Observation(self.shape, np.asarray(mask, bool), source={"missing": source}))

    def facts(self) -> dict[str, Any]:
        """Everything but the mask, JSON-able (for :meth:`from_facts` after travelling)."""
        return {"shape": list(self.shape), "sr_scale": self.sr_scale, "blur_sigma": self.blur_sigma,
                "noise_sigma": None if self.noise_sigma is None else [float(v) for v in self.noise_sigma],
                "stripes": self.stripes, "source": dict(self.source),
                "plausible": None if self.plausible is None else list(self.plausible),
                "haze": self.haze, "exposure": self.exposure, "blur_border": self.blur_border}

    @classmethod
    def from_facts(cls, facts: dict[str, Any], missing: np.ndarray | None = None) -> Observation:
        """The observation of :meth:`facts` and its ``missing`` mask (C, H, W) bool."""
        noise = facts.get("noise_sigma")
        if facts.get("blur_border") not in (None, "zero", "free"):
            raise ValueError(f"blur_border must be 'zero', 'free' or None, got {facts['blur_border']!r}")
        return cls(tuple(facts["shape"]), missing, facts.get("sr_scale"), facts.get("blur_sigma"),  # type: ignore[arg-type]
                   None if noise is None else np.asarray(noise, np.float32), facts.get("stripes"),
                   dict(facts.get("source") or {}),
                   None if facts.get("plausible") is None else tuple(facts["plausible"]),
                   facts.get("haze"), facts.get("exposure"), facts.get("blur_border"))

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts: fraction of unobserved entries, missing bands, sr scale, blur σ and border, mean noise
        σ."""
        return {"missing_fraction": float(self.missing.mean()) if self.missing is not None else 0.0,
                "missing_bands": np.flatnonzero(self.missing_bands).tolist(), "sr_scale": self.sr_scale,
                "blur_sigma": self.blur_sigma, "blur_border": self.blur_border, "stripes": self.stripes,
                "noise_sigma": float(np.mean(self.noise_sigma)) if self.noise_sigma is not None else None,
                "plausible_tasks": None if self.plausible is None else list(self.plausible),
                "haze": self.haze, "exposure": self.exposure, "source": dict(self.source)}

    # ------------------------------------------------------------------------------------------ sources

    @classmethod
    def from_record(cls, record: DegradationRecord) -> Observation:
        """What a degradation record says (mixtures: every component's facts merged)."""
        if record.components:
            obs = cls(tuple(record.shape))  # type: ignore[arg-type]
            parts = [cls.from_record(comp) for comp in record.components]
            for part in parts:
                obs = obs.merge(part)
            obs.stripes = any(bool(p.stripes) for p in parts)  # known for every component
            return obs
        C, H, W = record.shape
        obs = cls((C, H, W), source={"record": record.task})
        if record.removed_mask is not None:
            obs.missing = np.asarray(record.removed_mask, bool).copy()
        if record.missing_bands is not None and len(record.missing_bands):
            obs.missing = np.zeros((C, H, W), bool)
            obs.missing[np.asarray(record.missing_bands)] = True
        if record.extra == "deadline" and record.column_mask is not None:
            obs.missing = np.broadcast_to(np.asarray(record.column_mask, bool)[:, None, :], (C, H, W)).copy()
        if record.extra == "impulse" and record.impulse_mask is not None:
            obs.missing = np.asarray(record.impulse_mask, bool).copy()
        obs.stripes = record.extra == "stripe"
        if record.band_sigmas is not None:
            obs.noise_sigma = np.asarray(record.band_sigmas, np.float32).copy()
        if record.sigma is not None:
            obs.noise_sigma = np.full(C, record.sigma, np.float32)
        if record.scale:
            obs.sr_scale = int(record.scale)
        if record.blur_sigma is not None:
            obs.blur_sigma, obs.blur_border = float(record.blur_sigma), "zero"  # the blur family zero-pads
        obs.haze = record.haze_beta is not None
        if record.exposure is not None:
            obs.exposure = float(record.exposure)
        return obs

    @classmethod
    def detect(cls, cube01: np.ndarray, *, noise: bool = True, known: np.ndarray | None = None) -> Observation:
        """What the cube (C, H, W) in [0, 1] units shows of its own observation (see the module docstring),
        and with ``noise`` the families that could explain it (``plausible``, :meth:`plausible_tasks`).

        ``known``: (C, H, W) bool entries already known not to be observed (nodata, a file's bad bands or mask, a
        request's mask): they are in ``missing`` and left out of every rule (their values do not count)."""
        x = np.asarray(cube01, np.float32)
        C, H, W = x.shape
        obs = cls((C, H, W), source={"detected": "cube"})
        missing = np.zeros(x.shape, bool) if known is None else np.asarray(known, bool).copy()
        flat, known_flat = x.reshape(C, -1), missing.reshape(C, -1)
        known_bands = known_flat.all(axis=1)
        zero_bands = ~np.any((flat != 0) & ~known_flat, axis=1) & ~known_bands
        if C > 1 and zero_bands.any() and not (zero_bands | known_bands).all():
            missing[zero_bands] = True
        rest = ~missing
        lo, hi = float(x[rest].min()) if rest.any() else 0.0, float(x[rest].max()) if rest.any() else 0.0
        limit = max(10, SATURATED_FRACTION * x.size)
        for value in {0.0, 1.0, lo, hi}:  # [0, 1] units: the protocol's removed / impulse values, saturation
            hits = (x == value) & rest
            if hits.sum() > limit:
                missing |= hits
        if missing.any():
            obs.missing = missing
        obs.sr_scale = replication_scale(x, obs.observed)
        if noise and not obs.sr_scale:  # a replicated cube shows no noise at the scale the estimator reads
            obs.noise_sigma = band_noise_sigma(x, obs.observed)
            obs.stripes = obs.noisy() and bool(striped_bands(x, obs.noise_sigma, obs.observed).any())
        if noise:  # the families this cube's own signs point to; entries a file or caller marked do not count
            shown = obs if known is None or obs.missing is None else obs.replaced(missing=obs.missing & ~known)
            obs.plausible = shown.plausible_tasks()
            if obs.plausible and obs.plausible[0] in ("gaussian", "complex") and rest.any() \
                    and brightness(x[rest]) < DARK_LEVEL:
                obs.plausible = (*obs.plausible, "lowlight")  # noise on a dark cube: a short exposure, perhaps
        return obs

    def plausible_tasks(self) -> tuple[str, ...] | None:
        """The degradation families that could explain what this observation shows, for ``task="auto"`` to choose
        among (the task classifier weighs them; see :class:`hsivar.models.dag.AutoAmong`); None: no rule applies.

        Pixel replication → sr; unobserved entries with noise → complex (dead lines, impulse); whole missing bands
        alone → bandmiss; scattered missing entries → inpaint (with bandmiss when whole bands are missing too).
        Scattered entries count only above :data:`SCATTERED_FRACTION` of the cube (a clean cube's exact zeros or
        a few saturated pixels are no inpainting task; the protocol removes 70–90 %); then
        noise alone → gaussian when its σ is nearly the same in every band, complex when it varies (the
        coefficient of variation of the band σ: below :data:`IID_NOISE_CV` gaussian, above
        :data:`NON_IID_NOISE_CV` complex, between both) or shows stripes (and in :meth:`detect`, noise on a cube
        darker than :data:`DARK_LEVEL` → low light too); nothing → blur, haze or low light (or a clean cube, which
        the blur path leaves nearly unchanged when no blur shows). Mixtures are not told apart: pass them as a
        mixture.
        """
        if self.sr_scale:
            return ("sr",)
        noisy = self.noisy()
        bands = self.missing_bands
        scattered = 0.0 if self.missing is None else float((self.missing & ~bands[:, None, None]).mean())
        if self.has_missing and (bands.any() or scattered > SCATTERED_FRACTION):
            if noisy:
                return ("complex",)
            if scattered <= SCATTERED_FRACTION:
                return ("bandmiss",)
            return ("inpaint", "bandmiss") if bands.any() else ("inpaint",)
        if noisy:
            sigma = np.asarray(self.noise_sigma, np.float64)
            cv = float(sigma.std() / max(sigma.mean(), 1e-12))
            if self.stripes or cv > NON_IID_NOISE_CV:
                return ("complex",)
            return ("gaussian",) if cv < IID_NOISE_CV else ("gaussian", "complex")
        return UNSEEN_FAMILIES

    def replaced(self, **changes: Any) -> Observation:
        """A copy with some fields replaced (e.g. ``blur_sigma`` estimated by the model)."""
        return replace(self, **changes)


MAD_TO_SIGMA = 0.6744897501960817
"""The median absolute value of a standard normal variable, Φ⁻¹(0.75) (``scipy.stats.norm.ppf(0.75)``): a median
absolute deviation over it estimates σ."""

NEIGHBOUR_BANDS = 4  # predictors of a band in the noise estimate when few pixels are complete
MIN_NOISE_SAMPLES = 128  # a band with fewer samples takes the other bands' median σ


STRIPE_Z = 5.0
"""A column is offset when its median departs from its neighbours' by this many standard errors of a median."""
STRIPE_REACH = 2
"""Bands on each side whose column profiles predict a band's own (:func:`own_column_profile`)."""


def own_column_profile(cols: np.ndarray) -> np.ndarray:
    """What of each band's column profile is the band's own: ``cols`` (C, W), each band's column medians (NaN
    where a column has no observed entry), minus its least-squares fit (a scale and an offset) to the median
    profile of its :data:`STRIPE_REACH` neighbouring bands on each side; → (C, W). Content is shared across
    neighbouring bands and cancels; a band's stripes are not (they hit random columns of random bands). With
    fewer than 3 bands, or too few columns seen in a band and its neighbours, the profile is returned as it is.
    """
    C, W = cols.shape
    out = np.array(cols, np.float64)
    if C < 3:
        return out
    padded = np.pad(out, ((STRIPE_REACH, STRIPE_REACH), (0, 0)), constant_values=np.nan)  # no band beyond the ends
    offsets = [d for d in range(-STRIPE_REACH, STRIPE_REACH + 1) if d != 0]
    near = np.stack([padded[STRIPE_REACH + d:STRIPE_REACH + d + C] for d in offsets], axis=1)  # (C, 2·reach, W)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns no neighbour observed
        refs = np.nanmedian(near, axis=1)  # (C, W): every band's neighbours at once
    for b in range(C):
        ref = refs[b]
        ok = np.isfinite(ref) & np.isfinite(cols[b])
        if ok.sum() < 3:
            continue
        design = np.stack([ref[ok], np.ones(int(ok.sum()))], axis=1)
        (scale, offset), *_ = np.linalg.lstsq(design, cols[b][ok], rcond=None)
        out[b] = cols[b] - (scale * ref + offset)
    return out
STRIPE_COLUMNS = 0.03
"""A band is striped when more than this fraction of its columns (and at least 3) are offset."""

STRIPE_POOLED = 2
"""How many bands with at least 2 offset columns each make all of them striped, on a cube narrow enough that the
per-band rule asks for its floor of 3 columns (:data:`STRIPE_COLUMNS` · W < 3, W < 100 px): the stripes of a cube
hit several bands, and a narrow cube shows each band only a few of its columns (:func:`striped_bands`). On wider
cubes chance hits of the content grow with W, and the per-band rule alone decides."""


def striped_bands(cube: np.ndarray, noise_sigma: np.ndarray, observed: np.ndarray | None = None) -> np.ndarray:
    """(C,) bool: bands of ``cube`` (C, H, W) whose columns carry offsets (stripes, complex noise case 2).

    In each band, each column's median over its observed entries, less what the neighbouring bands' profiles
    predict of it (:func:`own_column_profile`: vertical content shared across bands is not a stripe), minus the
    median of its 9 neighbouring columns (edges and smooth content follow the running median; an offset column
    does not), against the larger of the standard error of a column median under the band's noise σ alone,
    1.2533·σ/√H, and the robust spread of those departures over the band's columns. A column is offset when it
    departs by more than :data:`STRIPE_Z` times that from the 9-column median and, in the same direction and by
    comparable amounts (within a factor 2), from the medians of its 4 left and its 4 right neighbours (a column at
    a step edge matches one side); a band with more than :data:`STRIPE_COLUMNS` of its columns offset is striped.
    On a cube narrower than 100 px so are the bands with at least 2 offset columns each when there are at least
    :data:`STRIPE_POOLED` of them: on a 40-px window a band shows 2–5 striped columns, some with offsets within the
    noise, and one band alone cannot tell them from chance while several can (docs/experiments.md). Columns with no
    observed entry are skipped.
    """
    x = np.asarray(cube, np.float32)
    C, H, W = x.shape
    out = np.zeros(C, bool)
    if W < 9 or H < 2:
        return out
    ok = np.ones(x.shape, bool) if observed is None else np.asarray(observed, bool)
    if ok.all():
        col_median = np.median(x, axis=1)  # (C, W), every column of every band at once
    else:  # over the observed entries; a column with none is NaN (and skipped below)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            col_median = np.nanmedian(np.where(ok, x, np.float32(np.nan)), axis=1)
    col_median = own_column_profile(col_median)
    seen = ok.any(axis=1)  # (C, W) columns with an observed entry
    sigma = np.asarray(noise_sigma, np.float64)
    full = seen.all(axis=1)
    hits = np.zeros(C, int)
    if full.any():  # bands with every column observed: all at once
        hits[full] = _offset_columns(col_median[full], sigma[full], H)
    for b in np.flatnonzero(~full & (seen.sum(axis=1) >= 9)):  # the others over their observed columns
        hits[b] = _offset_columns(col_median[b][seen[b]][None], sigma[b:b + 1], H)[0]
    out = (hits >= 3) & (hits > STRIPE_COLUMNS * W)
    if STRIPE_COLUMNS * W < 3 and (hits >= 2).sum() >= STRIPE_POOLED:  # narrow: pooled over bands
        out |= hits >= 2
    return out


def column_departures(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's departure from the running median of 9 columns, and the robust spread of those departures
    (their median absolute deviation over :data:`MAD_TO_SIGMA`), per row of ``cols`` (R, n), column profiles;
    → ((R, n), (R,))."""
    from scipy.ndimage import median_filter

    dev = cols - median_filter(cols, size=(1, 9), mode="reflect")
    return dev, np.median(np.abs(dev - np.median(dev, axis=1, keepdims=True)), axis=1) / MAD_TO_SIGMA


def _offset_columns(cols: np.ndarray, sigma: np.ndarray, H: int) -> np.ndarray:
    """(R,) int: how many of the columns of each row of ``cols`` (R, n ≥ 9), column medians of one band each over
    H rows with noise σ ``sigma`` (R,), are offset (:func:`striped_bands`)."""
    n = cols.shape[1]
    dev, spread = column_departures(cols)
    se = np.maximum(np.maximum(1.2533 * sigma / np.sqrt(H), spread), 1e-6)
    # an offset column stands out from both sides; at a step edge a column matches one side
    pad = np.pad(cols, ((0, 0), (4, 4)), mode="reflect")
    left = cols - np.median(np.stack([pad[:, i:i + n] for i in range(4)]), axis=0)
    right = cols - np.median(np.stack([pad[:, 5 + i:5 + i + n] for i in range(4)]), axis=0)
    limit = STRIPE_Z * se[:, None]
    near, far = np.minimum(np.abs(left), np.abs(right)), np.maximum(np.abs(left), np.abs(right))
    both = (np.sign(left) == np.sign(right)) & (near > limit) & (near >= 0.5 * far)
    return (both & (np.abs(dev) > limit)).sum(axis=1)


def replication_scale(cube: np.ndarray, observed: np.ndarray | None = None, tolerance: float = 0.99) -> int | None:
    """The largest s of :data:`SR_SCALES` such that the cube (C, H, W) is constant over s×s blocks (aligned with
    its origin) in at least ``tolerance`` of the blocks whose entries were all observed; None if none is."""
    x = np.asarray(cube)
    C, H, W = x.shape
    ok = np.ones(x.shape, bool) if observed is None else np.asarray(observed, bool)
    for s in SR_SCALES:
        h, w = (H // s) * s, (W // s) * s
        if h < 2 * s or w < 2 * s:
            continue
        blocks = x[:, :h, :w].reshape(C, h // s, s, w // s, s)
        full = ok[:, :h, :w].reshape(C, h // s, s, w // s, s).all(axis=(2, 4))
        if not full.any():
            continue
        same = (blocks == blocks[:, :, :1, :, :1]).all(axis=(2, 4))
        if same[full].mean() >= tolerance:
            return s
    return None


def band_noise_sigma(cube: np.ndarray, observed: np.ndarray | None = None) -> np.ndarray:
    """(C,) float32 noise σ of each band of a cube (C, H, W) in its units.

    The finest diagonal Haar coefficients of each band, on the 2×2 blocks whose entries were all observed;
    with 3 bands or more, of the band's residual after its least-squares prediction from the other bands
    (HySime's noise estimate: texture shared across bands is predicted, noise is not), so a textured clean
    cube reads as noise-free; that residual is defined on the pixels with every band observed (the prediction
    reads them all). When too few pixels have every band observed (heavy inpainting), each band is
    predicted from its nearest :data:`NEIGHBOUR_BANDS` bands instead, on the pixels where those are observed.
    σ is their median absolute value over :data:`MAD_TO_SIGMA` (Donoho); a band with too few samples gets the other
    bands' median, all 0 when no band has enough.
    """
    x = np.asarray(cube, np.float64)
    C, H, W = x.shape
    ok = np.ones(x.shape, bool) if observed is None else np.asarray(observed, bool)
    if C >= 3:
        flat, okf = x.reshape(C, -1), ok.reshape(C, -1)
        cols = okf.all(axis=0)
        if cols.sum() > max(4 * C, MIN_NOISE_SAMPLES):  # enough complete pixels to fit and to measure on
            x = noise_by_regression(flat - flat[:, cols].mean(1, keepdims=True), cols).reshape(C, H, W)
            # a residual is defined where its pixel has every band observed (the prediction reads them all)
            ok = np.broadcast_to(cols.reshape(1, H, W), (C, H, W))
        else:
            x, ok = _neighbour_residuals(flat, okf)
            x, ok = x.reshape(C, H, W), ok.reshape(C, H, W)
    h, w = (H // 2) * 2, (W // 2) * 2
    if h == 0 or w == 0:
        return np.zeros(C, np.float32)
    q = x[:, :h, :w]
    hh = (q[:, 0::2, 0::2] - q[:, 0::2, 1::2] - q[:, 1::2, 0::2] + q[:, 1::2, 1::2]) / 2
    full = ok[:, :h, :w].reshape(C, h // 2, 2, w // 2, 2).all(axis=(2, 4))
    out = np.full(C, np.nan, np.float32)
    for b in range(C):
        v = np.abs(hh[b][full[b]])
        if v.size < MIN_NOISE_SAMPLES:  # too few full blocks: the residual itself (white noise, no texture left)
            r = x[b][ok[b]]
            v = np.abs(r - np.median(r)) if r.size else r
        if v.size >= MIN_NOISE_SAMPLES:
            out[b] = float(np.median(v)) / MAD_TO_SIGMA
    known = np.isfinite(out)
    # a band with too few samples takes the median of the others (unknown is not noise-free); none known → 0
    return np.where(known, out, np.median(out[known]) if known.any() else 0.0).astype(np.float32)


def _neighbour_residuals(flat: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each band of ``flat`` (C, N) minus its least-squares prediction from its nearest bands, fitted and
    defined where the band and those bands are observed (``ok`` (C, N) bool); → residuals, where defined."""
    C, N = flat.shape
    res, defined = np.zeros_like(flat), np.zeros_like(ok)
    for b in range(C):
        nb = [j for j in range(max(0, b - NEIGHBOUR_BANDS // 2), min(C, b + NEIGHBOUR_BANDS // 2 + 1)) if j != b]
        cols = ok[[b, *nb]].all(axis=0)
        if cols.sum() < MIN_NOISE_SAMPLES:
            continue
        A = np.vstack([flat[nb][:, cols], np.ones(int(cols.sum()))]).T
        beta, *_ = np.linalg.lstsq(A, flat[b, cols], rcond=None)
        # the prediction carries the neighbours' noise too: σ_res² = σ²(1 + Σβ²) for equal σ, undone here
        res[b, cols] = (flat[b, cols] - A @ beta) / np.sqrt(1 + float(np.sum(beta[:-1] ** 2)))
        defined[b] = cols
    return res, defined


def noise_by_regression(flat: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """HySime's noise estimate: each band of ``flat`` (C, N) minus its least-squares prediction from the other
    bands, fitted on the ``columns`` (N,) bool pixels (default all); → (C, N)."""
    C = flat.shape[0]
    fit = flat if columns is None else flat[:, columns]
    R = fit @ fit.T
    Rinv = np.linalg.inv(R + 1e-9 * np.trace(R) / C * np.eye(C))
    noise = np.empty_like(flat)
    for i in range(C):
        beta = (Rinv - np.outer(Rinv[:, i], Rinv[i]) / Rinv[i, i]) @ R[:, i]
        beta[i] = 0.0
        noise[i] = flat[i] - beta @ flat
    return noise

