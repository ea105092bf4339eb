"""The evaluation's tables: per (task, level, method) means, a per-family summary, and Markdown."""

from __future__ import annotations

from typing import Any

from hsivar.tasks import TASKS

METHOD_MODEL = "hsivar"
"""Method name of the model's rows."""
METHOD_DEGRADED = "degraded"
"""Method name of the rows scoring the degraded input itself."""
COLUMNS = ("task", "level", "case", "method", "psnr", "ssim", "sam", "ergas", "seconds_per_cube", "n_cubes")
"""Columns of ``metrics.csv``."""


def aggregate(cases: Any) -> Any:
    """Per (task, level, case, method): mean psnr/ssim/sam/ergas, mean seconds per cube, cube count."""
    order = {t: i for i, t in enumerate(TASKS)}
    g = cases.groupby(["task", "level", "case", "method"], as_index=False).agg(
        psnr=("psnr", "mean"), ssim=("ssim", "mean"), sam=("sam", "mean"), ergas=("ergas", "mean"),
        seconds_per_cube=("seconds", "mean"), n_cubes=("uri", "nunique"))
    g["_t"] = g["task"].map(order)
    g["_m"] = g["method"].map(lambda m: 0 if m == METHOD_DEGRADED else (2 if m == METHOD_MODEL else 1))
    return g.sort_values(["_t", "level", "_m"]).drop(columns=["_t", "_m"]).reset_index(drop=True)[list(COLUMNS)]


def family_summary(table: Any) -> Any:
    """Per task family: mean PSNR / SSIM over levels of the degraded input, the baseline and the model."""
    import pandas as pd

    rows = []
    for task in [t for t in TASKS if t in set(table["task"])]:
        t = table[table["task"] == task]
        r: dict[str, Any] = {"task": task}
        for label, sel in (("degraded", t["method"] == METHOD_DEGRADED), ("model", t["method"] == METHOD_MODEL),
                           ("baseline", ~t["method"].isin([METHOD_DEGRADED, METHOD_MODEL]))):
            r[f"{label}_psnr"] = float(t[sel]["psnr"].mean()) if sel.any() else float("nan")
            r[f"{label}_ssim"] = float(t[sel]["ssim"].mean()) if sel.any() else float("nan")
        base = t[~t["method"].isin([METHOD_DEGRADED, METHOD_MODEL])]["method"]
        r["baseline"] = base.iloc[0] if len(base) else ""
        r["model_beats_degraded"] = bool(r["model_psnr"] > r["degraded_psnr"])
        rows.append(r)
    return pd.DataFrame(rows)


def to_markdown(table: Any, summary: Any, title: str) -> str:
    """The metrics table and the per-family summary as Markdown."""
    lines = [f"# {title}", "", "| task | level | method | PSNR (dB) | SSIM | SAM (°) | ERGAS | s/cube |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.task} | {r.level:g} | {r.method} | {r.psnr:.2f} | {r.ssim:.4f} | {r.sam:.2f} | "
                     f"{r.ergas:.2f} | {r.seconds_per_cube:.3f} |")
    lines += ["", "Per family (mean over levels):", "",
              "| task | degraded PSNR / SSIM | baseline | baseline PSNR / SSIM | HSI-VAR PSNR / SSIM "
              "| beats degraded |",
              "|---|---:|---|---:|---:|:---:|"]
    for r in summary.itertuples(index=False):
        lines.append(f"| {r.task} | {r.degraded_psnr:.2f} / {r.degraded_ssim:.4f} | {r.baseline} | "
                     f"{r.baseline_psnr:.2f} / {r.baseline_ssim:.4f} | {r.model_psnr:.2f} / {r.model_ssim:.4f} | "
                     f"{'yes' if r.model_beats_degraded else 'no'} |")
    return "\n".join(lines) + "\n"
