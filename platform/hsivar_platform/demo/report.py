"""The demo's report: ``REPORT.md`` (filled from ``report_template.md`` beside this module) and its figures."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from hsivar.render import Example
from hsivar_platform import storage

if TYPE_CHECKING:
    from hsivar_platform.demo.run import DemoPlan, DemoResult

TEMPLATE = "report_template.md"
"""The report's text with ``${name}`` placeholders (:class:`string.Template`), next to this module."""


def write_report(result: DemoResult, plan: DemoPlan, batch_rows: list[dict[str, Any]], examples: list[Example],
                 wavelengths: list[float] | None, train_info: dict[str, Any], ray_cpus: int) -> Path:
    """Write ``result.report`` (REPORT.md, from :data:`TEMPLATE`) and its PNG figures beside it; → its path.

    ``result`` is the demo's :class:`~hsivar_platform.demo.run.DemoResult`, ``plan`` its
    :class:`~hsivar_platform.demo.run.DemoPlan`; ``batch_rows`` and ``examples`` come from
    :func:`~hsivar_platform.demo.archive.score_outputs`.
    """
    from hsivar.render import (
        markdown_table,
        metrics_figure,
        panels_figure,
        sample_pixels,
        spectra_figure,
        uncertainty_figure,
    )

    rep = result.report.parent
    rep.mkdir(parents=True, exist_ok=True)
    metrics_figure(result.summary, rep / "evaluation.png",
                   title=f"Held-out evaluation ({plan.eval_levels} levels), mean over levels per family")
    panels_figure(examples, rep / "panels.png", wavelengths)
    pixels = sample_pixels(examples[0].clean.shape, n=3)
    spectra_figure(examples, rep / "spectra.png", pixels, wavelengths)
    uncertainty_figure(examples, rep / "uncertainty.png")

    f2 = {"level": "g", **{k: ".2f" for k in ("degraded_psnr", "baseline_psnr", "model_psnr", "psnr_degraded",
                                              "psnr_restored", "sam_degraded", "sam_restored", "baseline_sam",
                                              "model_sam")}}
    f4 = {k: ".4f" for k in ("degraded_ssim", "baseline_ssim", "model_ssim", "ssim_degraded", "ssim_restored",
                             "mean_std")}
    f3 = {k: ".3f" for k in ("cover_1sigma", "cover_2sigma")} | {"std_error_corr": ".2f"}
    eval_table = markdown_table(
        [{**r, "beats": "yes" if r["model_beats_degraded"] else "no",
          "beats_base": "yes" if r["model_beats_baseline"] else "no"} for r in result.summary],
        [("task", "task"), ("degraded_psnr", "degraded PSNR"), ("degraded_ssim", "SSIM"),
         ("baseline", "best baseline"), ("baseline_psnr", "baseline PSNR"), ("baseline_ssim", "SSIM"),
         ("baseline_sam", "SAM"), ("model_psnr", "HSI-VAR PSNR"), ("model_ssim", "SSIM"), ("model_sam", "SAM"),
         ("beats", "beats degraded"), ("beats_base", "≥ best baseline")], {**f2, **f4})
    batch_table = markdown_table(
        batch_rows, [("task", "task"), ("level", "level"), ("cubes", "cubes"), ("psnr_degraded", "degraded PSNR"),
                     ("psnr_restored", "restored PSNR"), ("ssim_degraded", "degraded SSIM"),
                     ("ssim_restored", "restored SSIM"), ("sam_degraded", "degraded SAM"),
                     ("sam_restored", "restored SAM"), ("mean_std", "mean std"), ("cover_1sigma", "within 1σ"),
                     ("cover_2sigma", "within 2σ"), ("std_error_corr", "corr(σ, |err|)")], {**f2, **f4, **f3})
    stages = markdown_table(
        [{"stage": s, **v} for s, v in train_info.items()],
        [("stage", "stage"), ("steps", "steps"), ("metrics", "final metrics"), ("published", "published weights")])
    http, b = result.http, result.batch
    values = {
        "run_name": result.run_name, "plan": plan.name, "date": time.strftime("%Y-%m-%d %H:%M"),
        "times": ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()), "ray_cpus": ray_cpus,
        "bucket": result.clean_prefix.rsplit("/", 1)[0], "tracking_uri": result.tracking_uri,
        "train_prefix": storage.join(result.clean_prefix, "train"),
        "test_prefix": storage.join(result.clean_prefix, "test"),
        "degraded_prefix": result.degraded_prefix, "restored_prefix": result.restored_prefix,
        "stages_table": stages, "model_uri": result.model_uri, "model_copy": result.model_copy,
        "registered": result.registered_model or "not registered",
        "pipeline_run": result.mlflow_runs.get("pipeline"), "evaluation_run": result.mlflow_runs.get("evaluation"),
        "eval_levels": plan.eval_levels, "eval_rel": os.path.relpath(result.eval_dir / "metrics.md", rep),
        "eval_table": eval_table, "batch_table": batch_table, "samples": plan.samples, "manifest": result.manifest,
        "batch_ok": b.get("ok"), "batch_failed": b.get("failed"), "batch_skipped": b.get("skipped"),
        "batch_total": b.get("total"),
        "products": "; ".join(f"{p['format']} `{p['input'].rsplit('/', 1)[-1]}` → `{p['output'].rsplit('/', 1)[-1]}`"
                              for p in result.products) or "none",
        "collection": result.collection,
        "http_url": http.get("url"), "http_cube": http.get("cube"), "http_status": http.get("status"),
        "http_shape": http.get("shape"), "http_task": http.get("task"), "http_true_task": http.get("true_task"),
        "http_psnr_degraded": f"{http.get('psnr_degraded', math.nan):.2f}",
        "http_psnr_restored": f"{http.get('psnr_restored', math.nan):.2f}",
        "http_seconds": http.get("seconds"), "http_max_diff": f"{http.get('max_abs_diff', math.nan):.2g}",
    }
    text = Template((Path(__file__).parent / TEMPLATE).read_text()).substitute(values)
    result.report.write_text(text)
    return result.report

