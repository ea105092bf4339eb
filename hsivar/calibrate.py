"""Fitted after training on held-out examples: the per-family trust in the learned correction, and the calibrated
uncertainty.

**Trust.** A model with ``first_estimate`` outputs ``x0 + τ·(y − x0)``: the classical first estimate x0 plus a
share τ of the fusion head's correction (:class:`~hsivar.models.fusion.OutputFusion`). Training fits y; it does
not ask whether y beats x0 on data it has not seen, and on families where x0 is already near-exact (missing bands
filled over wavelength) a tiny model's correction costs more than it brings. :func:`calibrate` answers that
question per family on validation examples, through the one restoration path (first estimate, model,
consistency): R1 is the restoration at τ = 1 and R0 at τ = 0 — x0 made consistent, which needs no model. The
output is affine in τ (exactly for kept entries and sr back-projection, nearly for the few conjugate-gradient
steps of blur consistency), R(τ) = R0 + τ·(R1 − R0), so every τ of a grid is scored without restoring again.
The rule: the τ with the highest mean PSNR among those whose mean PSNR **and** mean spectral angle (SAM) are at
least as good as τ = 0's (the first estimate's) — the learned correction is kept where it helps on held-out data
in both, and no more of it; τ = 0 when none helps. Metrics are those of the evaluation (:mod:`hsivar.metrics`),
on the example's ``band_mask`` (a bandmiss example is scored on its missing bands).

**Uncertainty.** Then, on the same restorations at the chosen τ, the error-variance coefficients of
:mod:`hsivar.uncertainty` per family, from the entries each example synthesised (not those kept as observed).
A family without examples gets the largest coefficient of the fitted families for each feature (wide bars
rather than none).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from hsivar.degrade import observation_of_level
from hsivar.metrics import psnr, sam
from hsivar.prepared import PreparedCube, finish, uncertainty_features
from hsivar.restore import Restorer, resolve_overlap
from hsivar.uncertainty import COVERAGE, FEATURES, coverage_stats, fit_coefficients, std_from

TRUST_GRID = tuple(i / 20 for i in range(21))
"""The τ values scored per family."""

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
        coverage: per task with examples, the validation entries' coverage at 1σ / 2σ and the correlation of σ
            with |error| (:func:`hsivar.uncertainty.coverage_stats`).
    """

    trust: tuple[float, ...]
    examples: dict[str, int]
    scores: dict[str, dict[str, tuple[float, float]]]
    uncertainty: tuple[tuple[float, ...], ...] = ()
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class _Restored:
    """One example restored at τ = 0 and τ = 1 (C, H, W) float64 in [0, 1], with its prepared cube."""

    ex: CalibrationExample
    prep: PreparedCube
    r0: np.ndarray
    r1: np.ndarray


def _restore(restorer: Restorer, ex: CalibrationExample, with_trust: bool) -> _Restored:
    """``ex`` restored with its true task and level (oracle): one model pass at τ = 1; τ = 0 is the first estimate
    made consistent (the model's output at τ = 0 is x0 itself, clamped to [0, 1] as every output)."""
    obs = observation_of_level(ex.task, ex.level, ex.degraded.shape)
    prep = restorer.prepare(ex.degraded, resolve_overlap(restorer.tile, None, None), value_range=(0.0, 1.0),
                            observation=obs)
    prep = restorer.observe_blur(prep, ex.task)  # unchanged when the level gives the blur width
    if with_trust:
        restorer.model.fusion.set_trust(torch.ones(len(restorer.tasks)))
    r1 = finish(prep, restorer.restore_prepared(prep, ex.task).samples01)[0].astype(np.float64)
    if not with_trust:
        return _Restored(ex, prep, r1, r1)
    C, H, W = prep.shape
    x0 = prep.consistent(prep.estimate01[:, :H, :W].clamp(0, 1).contiguous())  # type: ignore[index]
    return _Restored(ex, prep, finish(prep, x0[None])[0].astype(np.float64), r1)


def _choose(pairs: list[_Restored]) -> tuple[float, dict[str, tuple[float, float]]]:
    """The τ of :data:`TRUST_GRID` the module's rule picks for one family's examples, and the mean (PSNR, SAM)
    at τ = 0, the chosen τ and τ = 1."""
    scores = []
    for tau in TRUST_GRID:
        ps, sa = [], []
        for r in pairs:
            out = np.clip(r.r0 + tau * (r.r1 - r.r0), 0.0, 1.0)
            clean = np.asarray(r.ex.clean, np.float64)
            ps.append(psnr(out, clean, r.ex.band_mask))
            sa.append(sam(out, clean, r.ex.band_mask))
        scores.append((float(np.mean(ps)), float(np.mean(sa))))
    base = scores[0]
    ok = [i for i, (p, a) in enumerate(scores) if p >= base[0] and a <= base[1]]
    best = max(ok, key=lambda i: scores[i][0]) if ok else 0
    return TRUST_GRID[best], {"first_estimate": base, "chosen": scores[best], "full": scores[-1]}


def _entries(r: _Restored, tau: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Errors (n,) and features (F, n) of up to :data:`ENTRIES_PER_EXAMPLE` synthesised entries of the restoration
    at ``tau`` (seeded draw)."""
    out = r.r0 + tau * (r.r1 - r.r0)
    free = np.ones(out.shape, bool) if r.prep.kept is None else ~r.prep.kept
    idx = np.flatnonzero(free)
    idx = np.random.default_rng(seed).choice(idx, min(idx.size, ENTRIES_PER_EXAMPLE), replace=False)
    feats = uncertainty_features(r.prep, out.astype(np.float32)).reshape(len(FEATURES), -1)[:, idx]
    return (out - np.asarray(r.ex.clean, np.float64)).ravel()[idx], feats


def calibrate(restorer: Restorer, examples: Iterable[CalibrationExample], seed: int = 0) -> CalibrationFit:
    """Fit τ per task (models with a fusion head on the first estimate) and the uncertainty's coefficients per
    task on ``examples`` (see the module docstring), and set both on the restorer's model.

    Returns:
        :class:`CalibrationFit`; tasks without examples keep τ = 1.
    Raises:
        ValueError: no example of any of the model's tasks.
    """
    model = restorer.model
    with_trust = model.fusion is not None and bool(model.cfg.first_estimate)
    tasks = tuple(model.dag.tasks)
    restored: dict[str, list[_Restored]] = {t: [] for t in tasks}
    saved = model.fusion.trust.clone() if with_trust else None
    try:
        for ex in examples:
            if ex.task in restored:
                restored[ex.task].append(_restore(restorer, ex, with_trust))
    finally:
        if saved is not None:
            model.fusion.set_trust(saved)
    if not any(restored.values()):
        raise ValueError(f"calibrate: no example of the model's tasks {tasks}")
    trust, scores = [], {}
    for t in tasks:
        tau = 1.0
        if with_trust and restored[t]:
            tau, scores[t] = _choose(restored[t])
        trust.append(tau)
    if with_trust:
        model.set_trust(tuple(trust))
    coefficients, coverage = {}, {}
    for i, t in enumerate(tasks):
        if not restored[t]:
            continue
        parts = [_entries(r, trust[i], seed + k) for k, r in enumerate(restored[t])]
        errors, feats = np.concatenate([e for e, _ in parts]), np.concatenate([f for _, f in parts], axis=1)
        coefficients[t] = fit_coefficients(errors, feats, seed=seed)
        coverage[t] = coverage_stats(errors, std_from(feats, coefficients[t]))
    widest = np.max(np.stack(list(coefficients.values())), axis=0)
    rows = tuple(tuple(float(v) for v in coefficients.get(t, widest)) for t in tasks)
    model.set_uncertainty(rows, COVERAGE)
    return CalibrationFit(tuple(trust), {t: len(v) for t, v in restored.items()}, scores, rows, coverage)
