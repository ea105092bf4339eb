"""Evaluation of a published model on the seeded all-in-one protocol with Ray Data (:mod:`.pipeline`),
against the degraded input and each family's classical baseline, as tables (:mod:`.tables`)."""

from hsivar_platform.evaluate.pipeline import EvalResult, evaluate, resolve_test_prefix
from hsivar_platform.evaluate.tables import METHOD_DEGRADED, METHOD_MODEL, aggregate, family_summary, to_markdown

__all__ = ["METHOD_DEGRADED", "METHOD_MODEL", "EvalResult", "aggregate", "evaluate", "family_summary",
           "resolve_test_prefix", "to_markdown"]
