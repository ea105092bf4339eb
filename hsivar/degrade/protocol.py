"""Applying the degradation families: one family, mixtures, the training sampler and the seeded test protocol.

Every function takes a clean cube ``(C, H, W)`` with values in [0, 1] (a numpy array, or a torch
tensor: the result then comes back as a tensor of the same dtype and device) and returns the degraded
cube, same shape, float32, not clipped, and a :class:`~hsivar.degrade.DegradationRecord` saying
exactly what was done. Families, levels and units are those of :data:`hsivar.degrade.families.FAMILIES`;
dispatch is by that table. torch is imported on first use (see :mod:`hsivar.degrade.families`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hsivar.degrade.families import DEFAULT_TASKS, FAMILIES, Family, Level, family, task_index, task_weights
from hsivar.degrade.observation import Observation
from hsivar.degrade.record import DegradationRecord

if TYPE_CHECKING:
    import torch

__all__ = [
    "ProtocolCase",
    "case_level",
    "degrade",
    "degrade_for_test",
    "degrade_mixture",
    "observation_of_level",
    "protocol_cases",
    "sample_training_degradation",
    "test_protocol",
]


def _to_numpy(cube: np.ndarray | torch.Tensor) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """Validate ``cube`` (C, H, W) and return a float32 numpy copy plus a function mapping results back
    to the caller's type (numpy, or a torch tensor of the input's dtype and device)."""
    import torch

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


def _apply(x: np.ndarray, fam: Family, level: Any, rng: np.random.Generator) -> tuple[np.ndarray, DegradationRecord]:
    """Degrade numpy float32 ``x`` (C, H, W), owned by the caller (may be modified in place), by ``fam``."""
    parsed = fam.parse(level)
    rec = DegradationRecord(fam.name, level, x.shape, task_weights([fam.name]))
    return fam.apply(x, parsed, rng, rec), rec


def degrade(
    cube: np.ndarray | torch.Tensor, task: str, level: Level | str, rng: np.random.Generator
) -> tuple[np.ndarray | torch.Tensor, DegradationRecord]:
    """Apply one degradation family at one level.

    Args:
        cube: clean cube (C, H, W), values in [0, 1]; numpy (any float dtype, copied to float32) or
            a torch tensor (computed on CPU, returned with the input's dtype and device).
        task: a family name of :data:`~hsivar.tasks.TASKS`.
        level: in the family's unit: gaussian σ (0–255 units), complex case 1–4, blur kernel size (odd
            pixels), sr scale factor, inpaint / bandmiss fraction removed (see
            :mod:`hsivar.degrade.families`).
        rng: the only source of randomness (same generator state → same result).

    Returns:
        ``(degraded, record)``: degraded (C, H, W) float32 (same type as ``cube``; not clipped) and the
        :class:`~hsivar.degrade.DegradationRecord`. The input is never modified.

    Raises:
        ValueError: unknown family (the message lists the valid ones), invalid level, or not a cube.
    """
    fam = family(task)
    x, back = _to_numpy(cube)
    out, rec = _apply(x, fam, level, rng)
    return back(out), rec


def degrade_mixture(
    cube: np.ndarray | torch.Tensor,
    components: Sequence[tuple[str, Level | str]],
    rng: np.random.Generator,
    *,
    physical_order: bool = True,
) -> tuple[np.ndarray | torch.Tensor, DegradationRecord]:
    """Chain several degradations, e.g. ``[("gaussian", 30), ("blur", 9)]``.

    Args:
        cube: clean cube (C, H, W) in [0, 1] (numpy or torch, as in :func:`degrade`).
        components: (task, level) pairs, levels as in :func:`degrade`.
        rng: source of randomness.
        physical_order: apply in the order of the families' :class:`~hsivar.degrade.families.ImagingStep`
            (optics, sampling, sensor noise, data loss; ties in table order, equal tasks as given):
            blur → sr → gaussian → complex → inpaint → bandmiss. False: as given.

    Returns:
        ``(degraded, record)`` with ``record.task == "mixture"``, ``record.components`` the component
        records in the order applied, ``record.weights`` uniform over the components' families and
        ``record.missing_bands`` the union of the components' missing bands.
    """
    if not components:
        raise ValueError("degrade_mixture needs at least one (task, level) component")
    comps = [(family(t), lvl) for t, lvl in components]
    if physical_order:
        comps.sort(key=lambda fl: (fl[0].step, task_index(fl[0].name)))
    x, back = _to_numpy(cube)
    recs = []
    for fam, lvl in comps:
        x, r = _apply(x, fam, lvl, rng)
        recs.append(r)
    missing = [r.missing_bands for r in recs if r.missing_bands is not None]
    rec = DegradationRecord(
        "mixture",
        None,
        x.shape,
        task_weights([fam.name for fam, _ in comps]),
        missing_bands=np.unique(np.concatenate(missing)).astype(np.int64) if missing else None,
        components=tuple(recs),
    )
    return back(x), rec


def sample_training_degradation(
    cube: np.ndarray | torch.Tensor, rng: np.random.Generator, tasks: Sequence[str] = DEFAULT_TASKS
) -> tuple[np.ndarray | torch.Tensor, DegradationRecord]:
    """Draw one training degradation (MP-HSIR's ``de_id``) and apply it.

    The family is uniform over ``tasks`` (a model's own list, ``model.dag.tasks``; default MP-HSIR's six); its level
    is drawn by the row's ``draw_train_level`` from its ``train_levels`` (gaussian σ ~ U(30, 70) in 0–255 units;
    complex cases 2–4; haze β ~ U(0.4, 1.6); low-light exposure log-uniform in (0.04, 0.25); the other families one
    of their test levels).

    Args:
        cube: clean cube (C, H, W) in [0, 1] (numpy or torch).
        rng: source of randomness.
        tasks: the families to draw from.

    Returns:
        ``(degraded, record)`` as :func:`degrade`.

    Raises:
        ValueError: ``tasks`` is empty or names an unknown family.
    """
    if not tasks:
        raise ValueError("sample_training_degradation needs at least one task")
    fam = family(tasks[int(rng.integers(len(tasks)))])
    level = fam.draw_train_level(fam.train_levels, rng)
    return degrade(cube, fam.name, level, rng)


@dataclass(frozen=True)
class ProtocolCase:
    """One (task, level) pair of the fixed test protocol; ``name`` is e.g. ``"gaussian_30"``."""

    task: str
    level: Level
    name: str


def _families(tasks: Sequence[str]) -> list[Family]:
    """The rows of ``tasks`` in table order (a model's list may be in any order)."""
    wanted = {family(t).name for t in tasks}
    return [f for f in FAMILIES if f.name in wanted]


def test_protocol(tasks: Sequence[str] = DEFAULT_TASKS) -> tuple[ProtocolCase, ...]:
    """Every (task, level) pair of the test protocol of the families ``tasks`` (default MP-HSIR's six), in table
    order, each family's ``test_levels`` in turn.

    For the six families: 19 cases, gaussian 30/50/70, complex case1–4, blur 9/15/21, sr 2/4/8,
    inpaint 0.7/0.8/0.9, bandmiss 0.1/0.2/0.3; haze 0.5/1/1.5 and lowlight 0.2/0.1/0.05 add 6.

    Raises:
        ValueError: ``tasks`` names an unknown family.
    """
    return tuple(ProtocolCase(f.name, lvl, f.case_name(lvl)) for f in _families(tasks) for lvl in f.test_levels)


test_protocol.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def protocol_cases(levels: Literal["all", "middle"] = "all",
                   tasks: Sequence[str] = DEFAULT_TASKS) -> tuple[ProtocolCase, ...]:
    """The test protocol's cases of the families ``tasks`` (a model's ``dag.tasks``; default MP-HSIR's six): all of
    them (:func:`test_protocol`), or each family's middle level.

    Raises:
        ValueError: ``levels`` is neither ``"all"`` nor ``"middle"``, or ``tasks`` names an unknown family.
    """
    if levels == "all":
        return test_protocol(tasks)
    if levels == "middle":
        return tuple(ProtocolCase(f.name, f.middle_level, f.case_name(f.middle_level)) for f in _families(tasks))
    raise ValueError(f"levels must be 'all' or 'middle', got {levels!r}")


def case_level(task: str, level: Level | str) -> Level:
    """A protocol level in its family's natural type, e.g. ``case_level("blur", 15.0) == 15`` (an int).

    Levels travel through tables and Ray rows as floats; this restores ints for complex cases, blur
    kernel sizes and sr scales.

    Raises:
        ValueError: unknown family or invalid level.
    """
    return family(task).parse(level)


def degrade_for_test(
    cube: np.ndarray | torch.Tensor,
    task: str,
    level: Level | str,
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
    fam = family(task)
    # Levels can be fractions; a fixed-point integer keeps the seed key exact and hashable.
    key = (int(seed), int(index), task_index(task), round(float(fam.parse(level)) * 1000))
    return degrade(cube, task, level, np.random.default_rng(key))


def observation_of_level(task: str, level: Level | str, shape: tuple[int, int, int]) -> Observation:
    """What knowing the family and level of a cube of ``shape`` (C, H, W) says about its observation (the row's
    ``level_facts``: noise σ, blur width, sr scale, stripes); the masks come from the cube itself
    (:meth:`Observation.detect`), so merge the two.

    Raises:
        ValueError: unknown family or invalid level.
    """
    fam = family(task)
    lvl = fam.parse(level)
    facts = fam.level_facts(lvl, int(shape[0])) if fam.level_facts is not None else {}
    return Observation(tuple(shape), source={"level": f"{task} {lvl:g}"}, **facts)  # type: ignore[arg-type]
