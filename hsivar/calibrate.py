"""Fitted after training on held-out examples: the per-family trust in the learned correction, the blur width a
sharp cube reads and the ratio to the data fit's blur width that deconvolves best, and the calibrated uncertainty.

**Trust.** A model with ``first_estimate`` outputs ``x0 + τ·(y − x0)``: the classical first estimate x0 plus a
share τ of the fusion head's correction (:class:`~hsivar.models.fusion.OutputFusion`). Training fits y; it does
not ask whether y beats x0 on data it has not seen, and on families where x0 is already near-exact (missing bands
filled over wavelength) a tiny model's correction costs more than it brings. :func:`calibrate` answers that
question per family on validation examples, through the one restoration path (first estimate, model,
consistency): R1 is the restoration at τ = 1 and R0 at τ = 0 — x0 made consistent, which needs no model. The
output is affine in τ (exactly for kept entries and sr back-projection, nearly for the few steps of blur
consistency, whose count on a noisy cube depends on how far the estimate is from the data),
R(τ) = R0 + τ·(R1 − R0), so every τ of a grid is scored without restoring again.
The rule: the τ with the highest mean PSNR among those whose gain over τ = 0 (the first estimate) is positive in
PSNR **and** in spectral angle (SAM) by at least :data:`CONFIDENCE_Z` standard errors of the per-example gains, and
no larger than the τ where the mean SAM is least — the learned correction is kept where it helps on held-out data in
both, clearly enough to hold on other data, and no more of it than improves both (past the angle's least, more
correction trades angle for PSNR, and on other data the angle then came out above the first estimate's:
docs/experiments.md); τ = 0 when none does. (With a bare "mean at least τ = 0's", four validation cubes fitted τ that
lost to the first estimate on the test cubes by up to 0.5 dB: docs/experiments.md.) Metrics are those of the
evaluation (:mod:`hsivar.metrics`),
on the example's ``band_mask`` (a bandmiss example is scored on its missing bands).

**The blur width of a sharp cube.** The spectral blur-width estimate reads a sharp image as slightly blurred (its
sensor's own blur, the estimator's floor); what it reads on the examples' clean cubes (:func:`hsivar.deblur.
sharp_width`) is set on the model, and blind restoration takes it off the width it reads (``ModelConfig.sharp_width``).
Where blind restoration refines the width by the data fit instead (a noiseless, zero-padded cube), the ratio to
that width that deconvolves the blur examples best (:func:`hsivar.deblur.fit_width_scale`) is set on the model
(``ModelConfig.fit_width_scale``): the fit's reading lies 0–1 % either side of the true σ depending on the data.

**Uncertainty.** Then every example is restored once more as users restore it — blind (``task="auto"``, the
observation read off the cube, the blur width estimated from it) at the fitted τ — and the error-variance
coefficients of :mod:`hsivar.uncertainty` are fitted per true family on the entries each restoration
synthesised (not those kept as observed). Fitting on blind restorations matters where the blind task is
harder than the true one (deblurring with an estimated width). A family without examples gets the largest
coefficient of the fitted families for each feature (wide bars rather than none). The blind restorations are
returned (:attr:`CalibrationFit.restored`): they are what a validation in ``auto`` mode computes, so the
training job scores them instead of restoring again. The blind pass decodes again only the examples whose tiles or
first estimates differ from the oracle pass's — or, where the token path reads the task (HSI-VAR), whose task weights
differ (:mod:`hsivar.memo`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from hsivar.deblur import fit_width_scale, sharp_width
from hsivar.degrade import observation_of_level
from hsivar.memo import DecodedTiles
from hsivar.metrics import psnr, sam
from hsivar.prepared import PreparedCube, finish, uncertainty_features
from hsivar.restore import Restorer, resolve_overlap
from hsivar.uncertainty import COVERAGE, FEATURES, coverage_stats, fit_coefficients, std_from

TRUST_GRID = tuple(i / 20 for i in range(21))
"""The τ values scored per family."""

CONFIDENCE_Z = 1.0
"""Standard errors by which a τ's mean gain over the first estimate must clear zero, in PSNR and in SAM."""

TIE = 1e-9
"""Rounding allowance (dB, °) of that test: a family scored on one band has a SAM of 0 nearly everywhere, and its
mean gain then sits exactly one standard error from zero when one example differs."""

TILE_BATCH = 16
"""Tiles per forward pass: a validation cube of 64×64 px is 9 tiles of 32, one pass rather than 8 + 1."""

ENTRIES_PER_EXAMPLE = 20_000
"""Synthesised entries drawn (seeded) from each example for the uncertainty fit."""


@dataclass(frozen=True)
class CalibrationExample:
    """One held-out example: degraded and clean cubes (C, H, W) in [0, 1] units, its true task and level, and
    the bands it is scored on ((C,) bool; None: all)."""

    degraded: np.ndarray
    clean: np.ndarray
    task: str
    level: float
    band_mask: np.ndarray | None = None


@dataclass(frozen=True)
class CalibrationFit:
    """What :func:`calibrate` fitted, per task in the model's task order.

    Attributes:
        trust: τ per task (1 where not fitted: no example, or a model without a first estimate).
        examples: per task the examples used.
        scores: per task with examples, the mean (PSNR dB, SAM °) at τ = 0, at the chosen τ and at τ = 1
            (models with a first estimate).
        uncertainty: (N, F) coefficients of :mod:`hsivar.uncertainty`.
        sharp_width: what the spectral blur-width estimate reads on the examples' clean cubes (px,
            :func:`hsivar.deblur.sharp_width`), set on the model before the blind pass.
        fit_width_scale: the ratio to the data fit's blur width that deconvolves the blur examples best
            (:func:`hsivar.deblur.fit_width_scale`), set on the model before the blind pass; None: no blur example
            takes the data fit, and the model keeps its ratio.
        coverage: per task with examples, the validation entries' coverage at 1σ / 2σ and the correlation of σ
            with |error| (:func:`hsivar.uncertainty.coverage_stats`).
        restored: per example given (in order), its blind restoration (C, H, W) float32 in [0, 1] with the
            calibrated model — what ``Restorer.restore(degraded, "auto", value_range=(0, 1)).cube`` returns.
        reused: the examples whose blind restoration fused the oracle pass's decoded tiles instead of decoding
            (:mod:`hsivar.memo`).
    """

    trust: tuple[float, ...]
    examples: dict[str, int]
    scores: dict[str, dict[str, tuple[float, float]]]
    uncertainty: tuple[tuple[float, ...], ...] = ()
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)
    restored: tuple[np.ndarray, ...] = ()
    reused: int = 0
    sharp_width: float | None = None
    fit_width_scale: float | None = None

    def report(self, tasks: Iterable[str]) -> list[str]:
        """What was fitted, one line each, for a log: the trust per task of ``tasks`` (the model's, in order; when
        it was fitted), the blur width sharp cubes read and the ratio to the data fit's blur width (when fitted)."""
        lines = []
        if self.scores:
            lines.append("trust in the learned correction per family (1: all of it, 0: the first estimate): "
                         + ", ".join(f"{t} {v:.2f}" for t, v in zip(tasks, self.trust)))
        if self.sharp_width is not None:
            lines.append(f"the blur width the cubes read when sharp: {self.sharp_width:.2f} px (blind deblurring "
                         "takes it off the width it reads)")
        if self.fit_width_scale is not None:
            lines.append(f"the ratio to the data fit's blur width that deconvolves best: {self.fit_width_scale:.2f}")
        return lines


@dataclass
class _Restored:
    """One example restored with its true task at τ = 0 and τ = 1 (C, H, W) float64 in [0, 1]."""

    ex: CalibrationExample
    r0: np.ndarray
    r1: np.ndarray


def _restore(restorer: Restorer, ex: CalibrationExample, memo: DecodedTiles | None = None) -> _Restored:
    """``ex`` restored with its true task and level (oracle): one model pass at τ = 1; τ = 0 is the first estimate
    made consistent (the model's output at τ = 0 is x0 itself, clamped to [0, 1] as every output). ``memo`` keeps
    the decoded tiles (:meth:`Restorer.forward`)."""
    obs = observation_of_level(ex.task, ex.level, ex.degraded.shape)
    prep = restorer.prepare(ex.degraded, resolve_overlap(restorer.tile, None, None), value_range=(0.0, 1.0),
                            observation=obs)
    prep = restorer.observe(prep, ex.task)  # unchanged when the level gives the blur width, haze or exposure
    restorer.model.fusion.set_trust(torch.ones(len(restorer.tasks)))
    r1 = restorer.restore_prepared(prep, ex.task, batch_size=TILE_BATCH, memo=memo).samples01
    r1 = finish(prep, r1)[0].astype(np.float64)
    C, H, W = prep.shape
    x0 = prep.consistent(prep.estimate01[:, :H, :W].clamp(0, 1).contiguous())  # type: ignore[index]
    return _Restored(ex, finish(prep, x0[None])[0].astype(np.float64), r1)


def _restore_blind(restorer: Restorer, ex: CalibrationExample,
                   memo: DecodedTiles | None = None) -> tuple[PreparedCube, np.ndarray]:
    """``ex`` restored as :meth:`Restorer.restore` does with ``task="auto"`` and ``value_range=(0, 1)``: its
    prepared cube and the restored cube (C, H, W) float32 in [0, 1]. ``memo``: the oracle pass's decoded tiles, fused
    again where this pass prepares the same tiles and first estimates."""
    prep = restorer.prepare(ex.degraded, resolve_overlap(restorer.tile, None, None), value_range=(0.0, 1.0))
    prep = restorer.observe(prep, "auto")
    return prep, finish(prep, restorer.restore_prepared(prep, "auto", batch_size=TILE_BATCH, memo=memo).samples01)[0]


def _choose(pairs: list[_Restored]) -> tuple[float, dict[str, tuple[float, float]]]:
    """The τ of :data:`TRUST_GRID` the module's rule picks for one family's examples, and the mean (PSNR, SAM)
    at τ = 0, the chosen τ and τ = 1."""
    def scored(r: _Restored, tau: float) -> tuple[float, float]:
        out, clean = np.clip(r.r0 + tau * (r.r1 - r.r0), 0.0, 1.0), np.asarray(r.ex.clean, np.float64)
        return psnr(out, clean, r.ex.band_mask), sam(out, clean, r.ex.band_mask)

    per = np.array([[scored(r, tau) for r in pairs] for tau in TRUST_GRID])  # (τ, examples, [PSNR, SAM])
    gain = per - per[:1]  # (τ, examples, 2): per example, against the first estimate (τ = 0)
    n = len(pairs)
    se = gain.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.full((len(TRUST_GRID), 2), np.inf)  # (τ, 2)
    low_psnr_gain = gain[..., 0].mean(1) - CONFIDENCE_Z * se[:, 0]
    high_sam_gain = gain[..., 1].mean(1) + CONFIDENCE_Z * se[:, 1]  # SAM: lower is better
    clear = (low_psnr_gain >= -TIE) & (high_sam_gain <= TIE)
    scores = per.mean(axis=1)  # (τ, 2)
    # past the τ where the mean angle is least, more correction trades angle for PSNR: stop there
    angle_least = int(np.flatnonzero(scores[:, 1] <= scores[:, 1].min() + TIE).max())
    best = max((i for i in range(angle_least + 1) if i == 0 or clear[i]), key=lambda i: scores[i, 0])

    def pair(i: int) -> tuple[float, float]:
        return float(scores[i, 0]), float(scores[i, 1])

    return TRUST_GRID[best], {"first_estimate": pair(0), "chosen": pair(best), "full": pair(-1)}


def _entries(prep: PreparedCube, out: np.ndarray, clean: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Errors (n,) and features (F, n) of up to :data:`ENTRIES_PER_EXAMPLE` synthesised entries of a restoration
    ``out`` of ``prep`` (C, H, W) in [0, 1] against ``clean`` (seeded draw)."""
    free = np.ones(out.shape, bool) if prep.kept is None else ~prep.kept
    idx = np.flatnonzero(free)
    idx = np.random.default_rng(seed).choice(idx, min(idx.size, ENTRIES_PER_EXAMPLE), replace=False)
    feats = uncertainty_features(prep, out.astype(np.float32)).reshape(len(FEATURES), -1)[:, idx]
    return (out.astype(np.float64) - np.asarray(clean, np.float64)).ravel()[idx], feats


def calibrate(restorer: Restorer, examples: Iterable[CalibrationExample], seed: int = 0,
              fit_trust: bool = True) -> CalibrationFit:
    """Fit τ per task (``fit_trust`` and a model with a fusion head on the first estimate), the blur width the
    examples' clean cubes read, the ratio to the data fit's blur width that deconvolves the blur examples best (kept
    as the model has it when no blur example takes the data fit) and the uncertainty's coefficients per task on
    ``examples`` (see the module docstring), and set them on the restorer's model.

    Returns:
        :class:`CalibrationFit`; tasks without examples keep τ = 1 (τ as it was when not fitted).
    Raises:
        ValueError: no example of any of the model's tasks.
    """
    model = restorer.model
    with_trust = fit_trust and model.fusion is not None and bool(model.cfg.first_estimate)
    tasks = tuple(model.dag.tasks)
    examples = list(examples)
    counts = {t: sum(ex.task == t for ex in examples) for t in tasks}
    if not any(counts.values()):
        raise ValueError(f"calibrate: no example of the model's tasks {tasks}")
    trust = list(model.cfg.fusion.trust or (1.0,) * len(tasks))
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    memo = DecodedTiles()  # the oracle pass's decoded tiles, for the blind pass
    if with_trust:
        oracle: dict[str, list[_Restored]] = {t: [] for t in tasks}
        saved = model.fusion.trust.clone()
        try:
            for ex in examples:
                if ex.task in oracle:
                    oracle[ex.task].append(_restore(restorer, ex, memo))
        finally:
            model.fusion.set_trust(saved)
        for i, t in enumerate(tasks):
            trust[i], scores[t] = _choose(oracle[t]) if oracle[t] else (1.0, {})
        scores = {t: v for t, v in scores.items() if v}
        model.set_trust(tuple(trust))
        del oracle
    sharp = sharp_width({id(ex.clean): ex.clean for ex in examples}.values())  # each clean cube once
    model.set_sharp_width(sharp)
    scale = fit_width_scale((ex.degraded, ex.clean) for ex in examples if ex.task == "blur")
    if scale is not None:  # none of the examples tells (no blur, whole cubes over 128 px): the model's ratio stays
        model.set_fit_width_scale(scale)
    blind, reused = [], 0
    for ex in examples:  # at the fitted τ, as users restore
        hits, misses = memo.hits, memo.misses
        blind.append(_restore_blind(restorer, ex, memo))
        reused += memo.hits > hits and memo.misses == misses
    del memo
    coefficients, coverage = {}, {}
    for t in tasks:
        parts = [_entries(prep, out, ex.clean, seed + k)
                 for k, (ex, (prep, out)) in enumerate(zip(examples, blind)) if ex.task == t]
        if not parts:
            continue
        errors, feats = np.concatenate([e for e, _ in parts]), np.concatenate([f for _, f in parts], axis=1)
        coefficients[t] = fit_coefficients(errors, feats, seed=seed)
        coverage[t] = coverage_stats(errors, std_from(feats, coefficients[t]))
    widest = np.max(np.stack(list(coefficients.values())), axis=0)
    rows = tuple(tuple(float(v) for v in coefficients.get(t, widest)) for t in tasks)
    model.set_uncertainty(rows, COVERAGE)
    return CalibrationFit(tuple(float(v) for v in trust), counts, scores, rows, coverage,
                          tuple(np.asarray(out, np.float32) for _, out in blind), reused, sharp, scale)
