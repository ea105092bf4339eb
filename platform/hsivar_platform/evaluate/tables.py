"""The evaluation's tables: per (task, level, method) means, a per-family summary, and Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hsivar.tasks import TASKS

METHOD_MODEL = "hsivar"
"""Method name of the model's rows (of one unlabelled model; several models compared in one run carry their labels,
see :func:`hsivar_platform.evaluate.pipeline.model_labels`)."""
METHOD_DEGRADED = "degraded"
"""Method name of the rows scoring the degraded input itself."""
UNCERTAINTY_COLUMNS = ("cover_1sigma", "cover_2sigma", "std_error_corr")
"""The model's error bar on the entries it synthesised: shares within 1σ and 2σ, correlation of σ with |error|
(:func:`hsivar.uncertainty.coverage_stats`); NaN for the other methods and a model without one."""
COLUMNS = ("task", "level", "case", "method", "psnr", "ssim", "sam", "ergas", "seconds_per_cube", "n_cubes",
           *UNCERTAINTY_COLUMNS)
"""Columns of ``metrics.csv``."""


def perceptual_choices() -> tuple[str, ...]:
    """The metrics of :mod:`hsivar.perceptual` an evaluation can add as columns: all but those it already scores
    on the cube itself (PSNR, SSIM)."""
    from hsivar.perceptual import IQA_METRICS

    return tuple(n for n in IQA_METRICS if n not in COLUMNS)


def perceptual_columns(frame: Any) -> list[str]:
    """The perceptual metrics (:func:`perceptual_choices`, e.g. ``gmsd``) a cases or metrics frame holds, in its
    column order."""
    choices = set(perceptual_choices())
    return [c for c in frame.columns if c in choices]


def aggregate(cases: Any, models: Sequence[str] = (METHOD_MODEL,)) -> Any:
    """Per (task, level, case, method): mean psnr/ssim/sam/ergas, mean seconds per cube, cube count, mean coverage
    and correlation of the error bar (NaN where there is none), and the mean of every perceptual metric the rows
    hold (:func:`perceptual_columns`); within a case the degraded input first, then the baselines, then the
    ``models`` in their order."""
    order = {t: i for i, t in enumerate(TASKS)}
    for col in UNCERTAINTY_COLUMNS:  # cases.csv of an evaluation without them
        if col not in cases:
            cases = cases.assign(**{col: float("nan")})
    g = cases.groupby(["task", "level", "case", "method"], as_index=False).agg(
        psnr=("psnr", "mean"), ssim=("ssim", "mean"), sam=("sam", "mean"), ergas=("ergas", "mean"),
        seconds_per_cube=("seconds", "mean"), n_cubes=("uri", "nunique"),
        **{col: (col, "mean") for col in (*UNCERTAINTY_COLUMNS, *perceptual_columns(cases))})
    g["_t"] = g["task"].map(order)
    rank = {METHOD_DEGRADED: 0} | {m: 2 + i for i, m in enumerate(models)}
    g["_m"] = g["method"].map(lambda m: rank.get(m, 1))
    g = g.sort_values(["_t", "level", "_m"]).drop(columns=["_t", "_m"]).reset_index(drop=True)
    return g[[*COLUMNS, *perceptual_columns(cases)]]


def family_summary(table: Any, model: str = METHOD_MODEL, models: Sequence[str] | None = None) -> Any:
    """Per task family: mean PSNR / SSIM / SAM over levels of the degraded input, the best classical baseline
    (the one with the highest mean PSNR) and the model (method ``model``), and the seconds per cube of both;
    whether the model beats the input (PSNR) and is at least as good as the best baseline (PSNR ≥ and SAM ≤, at
    0.01). ``models``: every model method in the table (none of them is a baseline; default ``[model]``)."""
    import pandas as pd

    not_classical = {METHOD_DEGRADED, model, *(models or ())}
    rows = []
    for task in [t for t in TASKS if t in set(table["task"])]:
        t = table[table["task"] == task]
        means = t.groupby("method")[["psnr", "ssim", "sam", "seconds_per_cube"]].mean()
        classical = [m for m in means.index if m not in not_classical]
        best = max(classical, key=lambda m: means.loc[m, "psnr"]) if classical else None
        r: dict[str, Any] = {"task": task, "baseline": best or ""}
        for label, method in (("degraded", METHOD_DEGRADED), ("baseline", best), ("model", model)):
            for k in ("psnr", "ssim", "sam"):
                r[f"{label}_{k}"] = float(means.loc[method, k]) if method in means.index else float("nan")
        for label, method in (("baseline", best), ("model", model)):
            r[f"{label}_seconds"] = float(means.loc[method, "seconds_per_cube"]) if method in means.index else \
                float("nan")
        for col in UNCERTAINTY_COLUMNS:
            r[f"model_{col}"] = float(t[t["method"] == model][col].mean()) if col in t else float("nan")
        r["model_beats_degraded"] = bool(r["model_psnr"] > r["degraded_psnr"])
        # compared at the table's precision (0.01 dB, 0.01°): a model that returns the baseline's own estimate
        # ties it rather than losing by rounding noise
        r["model_beats_baseline"] = bool(best is not None and round(r["model_psnr"], 2) >= round(r["baseline_psnr"], 2)
                                         and round(r["model_sam"], 2) <= round(r["baseline_sam"], 2))
        rows.append(r)
    return pd.DataFrame(rows)


def to_markdown(table: Any, summaries: Any, title: str) -> str:
    """The metrics table and the per-family summary as Markdown; ``summaries``: one :func:`family_summary`, or
    {model label: summary} for several models (a section each)."""
    lines = [f"# {title}", "", "| task | level | method | PSNR (dB) | SSIM | SAM (°) | ERGAS | s/cube |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.task} | {r.level:g} | {r.method} | {r.psnr:.2f} | {r.ssim:.4f} | {r.sam:.2f} | "
                     f"{r.ergas:.2f} | {r.seconds_per_cube:.3f} |")
    named = summaries if isinstance(summaries, dict) else {METHOD_MODEL: summaries}
    for label, summary in named.items():
        lines += _summary_lines(summary, "HSI-VAR" if label == METHOD_MODEL else label, len(named) > 1)
    lines += _perceptual_lines(table)
    return "\n".join(lines) + "\n"


def _perceptual_lines(table: Any) -> list[str]:
    """Per family and method, the mean over levels of each perceptual metric in ``table`` (none: no lines)."""
    from hsivar.perceptual import lower_is_better

    names = perceptual_columns(table)
    if not names:
        return []
    means = table.groupby(["task", "method"], sort=False)[names].mean()
    heads = " | ".join(f"{n} {'↓' if lower_is_better(n) else '↑'}" for n in names)
    lines = ["", "Perceptual metrics on the false-colour rendering of the whole cube (mean over levels):", "",
             f"| task | method | {heads} |", "|---|---|" + "---:|" * len(names)]
    for (task, method), r in means.iterrows():
        lines.append(f"| {task} | {method} | " + " | ".join(f"{r[n]:.4f}" for n in names) + " |")
    return lines


def _summary_lines(summary: Any, name: str, several: bool) -> list[str]:
    """The per-family summary of one model (called ``name``) as Markdown lines."""
    lines = ["", f"Per family{f' — {name}' if several else ''} (mean over levels; the best classical baseline by "
             "PSNR):", "",
             "| task | degraded PSNR / SSIM / SAM | best baseline | baseline PSNR / SSIM / SAM "
             f"| {name} PSNR / SSIM / SAM | s/cube baseline / {name} | beats degraded | ≥ best baseline |",
             "|---|---:|---|---:|---:|---:|:---:|:---:|"]
    for r in summary.itertuples(index=False):
        lines.append(f"| {r.task} | {r.degraded_psnr:.2f} / {r.degraded_ssim:.4f} / {r.degraded_sam:.2f} | "
                     f"{r.baseline} | {r.baseline_psnr:.2f} / {r.baseline_ssim:.4f} / {r.baseline_sam:.2f} | "
                     f"{r.model_psnr:.2f} / {r.model_ssim:.4f} / {r.model_sam:.2f} | "
                     f"{r.baseline_seconds:.3f} / {r.model_seconds:.3f} | "
                     f"{'yes' if r.model_beats_degraded else 'no'} | {'yes' if r.model_beats_baseline else 'no'} |")
    if summary["model_cover_2sigma"].notna().any():
        lines += ["", "The model's error bar σ on the entries it synthesised (calibrated: ≈95 % within 2σ expected):",
                  "", "| task | within 1σ | within 2σ | corr(σ, abs error) |", "|---|---:|---:|---:|"]
        for r in summary.itertuples(index=False):
            lines.append(f"| {r.task} | {r.model_cover_1sigma:.3f} | {r.model_cover_2sigma:.3f} | "
                         f"{r.model_std_error_corr:.2f} |")
    return lines
