"""The task families as the model sees them: names, weights, and the task option.

:data:`TASKS` is the order of the family table :data:`hsivar.degrade.families.FAMILIES` (degradation records'
weights index by it); a model's own list, ``model.dag.tasks`` (default :data:`DEFAULT_TASKS`, MP-HSIR's six), is
the order of its task embeddings and classifier (:func:`weights_in` maps one to the other). They are defined next to
the rows they derive from (the degradation protocol needs them too) and re-exported here, the place the model and
the platform import them from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from hsivar.degrade.families import DEFAULT_TASKS, TASKS, task_index, task_weights, weights_in

__all__ = ["DEFAULT_TASKS", "TASKS", "TaskArg", "dominant_task", "parse_task", "task_index", "task_weights",
           "weights_in"]

TaskArg = str | dict[str, float]
"""``"auto"``, a task family name, or a {task: weight} mixture (see :func:`parse_task`)."""


def parse_task(text: str | Mapping[str, float] | None) -> TaskArg:
    """Parse a task option: ``"auto"``, a family name (``"gaussian"``) or a mixture.

    A mixture is written ``"gaussian:0.7,blur:0.3"`` (``=`` works as ``:``; a name without a weight
    counts 1) or given as a mapping; weights must be finite, ≥ 0 and not all 0. Repeated names add up.

    Returns:
        ``"auto"`` (also for None or ""), the family name, or ``{task: weight}`` (weights as given, not
        normalised).

    Raises:
        ValueError: unknown task or bad weight (the message names it and the valid names).
    """
    if text is None:
        return "auto"
    if isinstance(text, Mapping):
        items = [(str(k), float(v)) for k, v in text.items()]
    else:
        s = str(text).strip()
        if s in ("", "auto"):
            return "auto"
        if ":" not in s and "=" not in s and "," not in s:
            if s not in TASKS:
                raise ValueError(f"unknown task {s!r}; expected auto, one of {', '.join(TASKS)} "
                                 "or a mixture like gaussian:0.7,blur:0.3")
            return s
        items = []
        for part in s.split(","):
            name, sep, weight = part.replace("=", ":").partition(":")
            try:
                items.append((name.strip(), float(weight) if sep else 1.0))
            except ValueError:
                raise ValueError(f"task mixture {s!r}: weight {weight!r} of {name.strip()!r} is not a number") from None
    mixture: dict[str, float] = {}
    for name, weight in items:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r} in mixture; expected names from {', '.join(TASKS)}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"task weight of {name!r} must be a finite number ≥ 0, got {weight}")
        mixture[name] = mixture.get(name, 0.0) + weight
    if not mixture or sum(mixture.values()) <= 0:
        raise ValueError("a task mixture needs at least one positive weight")
    return mixture


def dominant_task(weights: Iterable[float], tasks: Sequence[str] = TASKS) -> str:
    """The task with the largest weight: what "auto" decided, or a mixture's main part.

    Args:
        weights: (N,) task weights in the order of ``tasks``.
        tasks: the N task names, :data:`TASKS` by default; a published model's own list
            (``model.dag.tasks``) for weights that model produced.

    Returns:
        The name, or ``"auto"`` for no weights.

    Raises:
        ValueError: ``weights`` and ``tasks`` differ in length.
    """
    w = list(weights)
    if not w:
        return "auto"
    if len(w) != len(tasks):
        raise ValueError(f"{len(w)} task weights for {len(tasks)} tasks ({', '.join(tasks)})")
    return tasks[int(np.argmax(w))]
