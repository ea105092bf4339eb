"""Per-family trust in the learned correction, fitted on held-out examples after training.

A model with ``first_estimate`` outputs ``x0 + τ·(y − x0)``: the classical first estimate x0 plus a share τ
of the fusion head's correction (:class:`~hsivar.models.fusion.OutputFusion`). Training fits y; it does not
ask whether y beats x0 on data it has not seen, and on families where x0 is already near-exact (missing
bands filled over wavelength) a tiny model's correction costs more than it brings. :func:`calibrate_trust`
answers that question per family on validation examples, through the one restoration path (first estimate,
model, consistency): R1 is the restoration at τ = 1 and R0 at τ = 0 (x0 made consistent). The output is
affine in τ (exactly for kept entries and sr back-projection, nearly for the few conjugate-gradient steps of
blur consistency), R(τ) = R0 + τ·(R1 − R0), so every τ of a grid is scored without restoring again.

The rule: the τ with the highest mean PSNR among those whose mean PSNR **and** mean spectral angle (SAM) are
at least as good as τ = 0's (the first estimate's) — the learned correction is kept where it helps on held-out
data in both, and no more of it; τ = 0 when none helps. Metrics are those of the evaluation
(:mod:`hsivar.metrics`), on the example's ``band_mask`` (a bandmiss example is scored on its missing bands).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from hsivar.degrade import observation_of_level
from hsivar.metrics import psnr, sam
from hsivar.restore import Restorer

TRUST_GRID = tuple(i / 20 for i in range(21))
"""The τ values scored per family."""


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
class TrustFit:
    """The fitted τ per task (the model's task order), per task the examples used (0: τ left at 1), and per task
    the mean (PSNR dB, SAM °) at τ = 0, at the chosen τ and at τ = 1."""

    trust: tuple[float, ...]
    examples: dict[str, int]
    scores: dict[str, dict[str, tuple[float, float]]]


def _restore(restorer: Restorer, ex: CalibrationExample) -> np.ndarray:
    """``ex`` restored with its true task and level (oracle), (C, H, W) float64 in [0, 1]."""
    obs = observation_of_level(ex.task, ex.level, ex.degraded.shape)
    out = restorer.restore(ex.degraded, ex.task, value_range=(0.0, 1.0), observation=obs)
    return out.cube.astype(np.float64)


def _choose(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
            ) -> tuple[float, dict[str, tuple[float, float]]]:
    """The τ of :data:`TRUST_GRID` the module's rule picks for one family's (R0, R1, clean, band mask) examples,
    and the mean (PSNR, SAM) at τ = 0, the chosen τ and τ = 1."""
    scores = []
    for tau in TRUST_GRID:
        ps, sa = [], []
        for r0, r1, clean, bands in pairs:
            out = np.clip(r0 + tau * (r1 - r0), 0.0, 1.0)
            ps.append(psnr(out, clean, bands))
            sa.append(sam(out, clean, bands))
        scores.append((float(np.mean(ps)), float(np.mean(sa))))
    base = scores[0]
    ok = [i for i, (p, a) in enumerate(scores) if p >= base[0] and a <= base[1]]
    best = max(ok, key=lambda i: scores[i][0]) if ok else 0
    return TRUST_GRID[best], {"first_estimate": base, "chosen": scores[best], "full": scores[-1]}


def calibrate_trust(restorer: Restorer, examples: Iterable[CalibrationExample]) -> TrustFit:
    """Fit τ per task on ``examples`` (see the module docstring) and set it on the restorer's model.

    Returns:
        :class:`TrustFit`; tasks without examples keep τ = 1.
    Raises:
        ValueError: the model has no fusion head on a first estimate.
    """
    model = restorer.model
    if model.fusion is None or not model.cfg.first_estimate:
        raise ValueError("calibrate_trust needs a model with a fusion head on the first estimate")
    tasks = tuple(model.dag.tasks)
    pairs: dict[str, list] = {t: [] for t in tasks}
    saved = model.fusion.trust.clone()
    try:
        for ex in examples:
            if ex.task not in pairs:
                continue
            model.fusion.set_trust(torch.ones(len(tasks)))
            r1 = _restore(restorer, ex)
            model.fusion.set_trust(torch.zeros(len(tasks)))
            r0 = _restore(restorer, ex)
            pairs[ex.task].append((r0, r1, np.asarray(ex.clean, np.float64), ex.band_mask))
    finally:
        model.fusion.set_trust(saved)
    trust, scores = [], {}
    for t in tasks:
        if not pairs[t]:
            trust.append(1.0)
            continue
        tau, scores[t] = _choose(pairs[t])
        trust.append(tau)
    model.set_trust(tuple(trust))
    return TrustFit(tuple(trust), {t: len(v) for t, v in pairs.items()}, scores)
