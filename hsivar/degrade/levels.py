"""The levels of the degradation families: how a level is validated (each row's ``parse_level``) and how the
training sampler draws one (each row's ``draw_train_level``); see :mod:`hsivar.degrade.families`.

A parser takes a level as given (an int, a float, a string from a table or the command line) and returns it in
its natural type, or raises ValueError with the rule it breaks; the family's row adds its name to the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Level", "complex_case", "draw_choice", "draw_log_uniform", "draw_uniform", "exposure", "fraction",
           "nonnegative", "odd_size", "positive_int"]

Level = int | float
"""A family's level in its natural type (see :attr:`hsivar.degrade.families.Family.parse_level`)."""


def nonnegative(level: Any) -> float:
    """A float ≥ 0."""
    value = float(level)
    if not value >= 0:
        raise ValueError("must be a number >= 0")
    return value


def complex_case(level: Any) -> int:
    """A complex case 1–4, also written ``"case1"``..``"case4"``."""
    if isinstance(level, str):
        s = level.lower().removeprefix("case")
        if s.isdigit():
            level = int(s)
    if isinstance(level, (int, np.integer, float)) and float(level) in (1, 2, 3, 4):
        return int(level)
    raise ValueError("must be a case 1-4 (or 'case1'..'case4')")


def positive_int(level: Any) -> int:
    """An integer ≥ 1, given as an int or an integral float."""
    if isinstance(level, (int, np.integer)) or (isinstance(level, float) and level.is_integer()):
        if int(level) >= 1:
            return int(level)
    raise ValueError("must be a positive integer")


def odd_size(level: Any) -> int:
    """An odd integer ≥ 1 (a kernel size in pixels)."""
    size = positive_int(level)
    if size % 2 == 0:
        raise ValueError("must be a positive odd integer (kernel size in pixels)")
    return size


def exposure(level: Any) -> float:
    """An exposure in (0, 1] (a fraction of a normal exposure)."""
    value = float(level)
    if not 0.0 < value <= 1.0:
        raise ValueError("must be an exposure in (0, 1]")
    return value


def fraction(level: Any) -> float:
    """A fraction in [0, 1]."""
    value = float(level)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a fraction in [0, 1]")
    return value


def draw_uniform(levels: Sequence[Level], rng: np.random.Generator) -> float:
    """A level drawn from U(levels[0], levels[1]) (a continuous range)."""
    lo, hi = levels
    return float(rng.uniform(lo, hi))


def draw_log_uniform(levels: Sequence[Level], rng: np.random.Generator) -> float:
    """A level drawn log-uniformly between levels[0] and levels[1] (a range of ratios, e.g. exposures)."""
    lo, hi = levels
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_choice(levels: Sequence[Level], rng: np.random.Generator) -> Level:
    """One of ``levels``, uniformly."""
    return levels[int(rng.integers(len(levels)))]
