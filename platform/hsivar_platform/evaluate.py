"""Evaluation: the seeded all-in-one test protocol over a prefix of clean cubes, with Ray Data.

``evaluate(model_uri, data_uri, out_dir)`` builds one row per (cube, protocol case), reads and
degrades each cube inside ``map_batches`` (:func:`hsivar_platform.data.degrade_cases`), scores the
degraded input and a cheap classical baseline per family on CPU tasks, restores with the model in
an actor pool (one :class:`~hsivar.restore.Restorer` per actor, a GPU each when asked) using true
autoregressive decoding, and writes:

* ``DIR/metrics.csv`` — mean over cubes per (task, level, method): psnr (dB), ssim, sam (degrees),
  ergas, seconds_per_cube, n_cubes;
* ``DIR/cases.csv`` — every (cube, case, method) row;
* ``DIR/metrics.md`` — the table plus a per-family summary (model vs degraded vs baseline);

and logs them to an MLflow run (metrics ``eval/<task>/<method>/<metric>`` averaged over levels).

Methods: ``hsivar`` (the model, ``task="auto"`` by default), ``degraded`` (the input itself), and
the baselines: ``tv_chambolle`` (gaussian, complex), ``richardson_lucy`` (blur, 10 iterations with
the known kernel), ``bicubic`` (sr, from the low-resolution grid), ``biharmonic`` (inpaint, per
band), ``spectral_interp`` (bandmiss, linear interpolation over wavelength from the observed bands).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsivar.metrics import evaluate as score
from hsivar.tasks import TASKS

log = logging.getLogger(__name__)

METHOD_MODEL = "hsivar"
METHOD_DEGRADED = "degraded"
COLUMNS = ("task", "level", "case", "method", "psnr", "ssim", "sam", "ergas", "seconds_per_cube", "n_cubes")


# ------------------------------------------------------------------------------------------ baselines


def _tv(x: np.ndarray, level: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(x, weight=0.1, channel_axis=0).astype(np.float32)


def _richardson_lucy(x: np.ndarray, level: float) -> np.ndarray:
    from skimage.restoration import richardson_lucy

    from hsivar.data.degrade import blur_sigma, gaussian_kernel1d

    k = int(level)
    k1 = gaussian_kernel1d(k, blur_sigma(k))
    psf = np.outer(k1, k1)
    return np.stack([richardson_lucy(np.clip(b, 0, None), psf, num_iter=10, clip=False) for b in x]).astype(np.float32)


def _bicubic(x: np.ndarray, level: float) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    s = int(level)
    lr = torch.from_numpy(np.ascontiguousarray(x[:, ::s, ::s]))[None]  # the replicated grid's first pixels
    if min(lr.shape[-2:]) < 2:
        return x
    up = F.interpolate(lr, size=x.shape[-2:], mode="bicubic", align_corners=True)[0]
    return up.numpy().astype(np.float32)


def _biharmonic(x: np.ndarray, level: float) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    out = x.copy()
    for b in range(x.shape[0]):
        mask = x[b] == 0
        if mask.any() and not mask.all():
            out[b] = inpaint_biharmonic(x[b], mask)
    return out


def _spectral_interp(x: np.ndarray, level: float) -> np.ndarray:
    from hsivar.data.degrade import missing_band_mask

    missing = missing_band_mask(x)
    obs = np.flatnonzero(~missing)
    if obs.size == 0 or not missing.any():
        return x
    C = x.shape[0]
    flat = x.reshape(C, -1)
    out = flat.copy()
    for b in np.flatnonzero(missing):
        lo, hi = obs[obs < b], obs[obs > b]
        if lo.size and hi.size:
            a, c = lo[-1], hi[0]
            w = (b - a) / (c - a)
            out[b] = (1 - w) * flat[a] + w * flat[c]
        else:
            out[b] = flat[lo[-1] if lo.size else hi[0]]
    return out.reshape(x.shape)


BASELINES: dict[str, tuple[str, Callable[[np.ndarray, float], np.ndarray]]] = {
    "gaussian": ("tv_chambolle", _tv),
    "complex": ("tv_chambolle", _tv),
    "blur": ("richardson_lucy", _richardson_lucy),
    "sr": ("bicubic", _bicubic),
    "inpaint": ("biharmonic", _biharmonic),
    "bandmiss": ("spectral_interp", _spectral_interp),
}
"""Task family → (method name, fn(degraded (C, H, W), level) → restored (C, H, W))."""


# ------------------------------------------------------------------------------------------ Ray Data ops


def _metric_row(row: dict[str, Any], method: str, restored: np.ndarray, seconds: float) -> dict[str, Any]:
    m = score(restored, row["clean"], row["band_mask"], ergas_ratio=float(row["ergas_ratio"])).as_dict()
    return {"uri": str(row["uri"]), "index": int(row["index"]), "task": str(row["task"]),
            "level": float(row["level"]), "case": str(row["case"]), "method": method, **m, "seconds": seconds}


def score_inputs(batch: dict[str, np.ndarray], *, baselines: bool) -> dict[str, Any]:
    """CPU op: metrics of the degraded input and of the family's classical baseline, as JSON per row."""
    out = dict(batch)
    scored = []
    for i in range(len(batch["uri"])):
        row = {k: v[i] for k, v in batch.items()}
        rows = [_metric_row(row, METHOD_DEGRADED, row["degraded"], 0.0)]
        if baselines and str(row["task"]) in BASELINES:
            name, fn = BASELINES[str(row["task"])]
            t0 = time.perf_counter()
            try:
                restored = fn(np.asarray(row["degraded"], np.float32), float(row["level"]))
                rows.append(_metric_row(row, name, restored, time.perf_counter() - t0))
            except Exception as e:  # a baseline failing must not sink the evaluation
                log.warning("baseline %s failed on %s %s: %s", name, row["uri"], row["case"], e)
        scored.append(json.dumps(rows))
    out["scored"] = np.array(scored)
    return out


class ModelScorer:
    """Actor op: restore each degraded cube with the published model and score it."""

    def __init__(self, model_dir: str, device: str, task: str, batch_size: int) -> None:
        from hsivar.restore import Restorer

        self.restorer = Restorer.from_published(model_dir, device=device)
        self.task, self.batch_size = task, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for i in range(len(batch["uri"])):
            row = {k: v[i] for k, v in batch.items()}
            rows.extend(json.loads(str(row["scored"])))
            task: Any = self.task if self.task == "auto" else str(row["task"])
            res = self.restorer.restore(np.asarray(row["degraded"], np.float32), task=task, value_range=(0.0, 1.0),
                                        batch_size=self.batch_size)
            rows.append(_metric_row(row, METHOD_MODEL, res.cube, res.seconds))
        return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


# ------------------------------------------------------------------------------------------ driver


@dataclass
class EvalResult:
    """Where the evaluation went and the aggregated table."""

    out_dir: Path
    table: Any  # pandas.DataFrame with COLUMNS
    cases: Any  # pandas.DataFrame, one row per (cube, case, method)
    mlflow_run_id: str | None


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


def resolve_test_prefix(data_uri: str, bands: int, work_dir: str | os.PathLike = "work") -> str:
    """The prefix of clean test cubes: ``demo`` → the demo dataset's test split (generated on first use);
    a prefix holding ``test/`` → that folder; otherwise the prefix itself."""
    from hsivar_platform import storage
    from hsivar_platform.data import ensure_demo_data, list_cubes
    from hsivar_platform.pipeline_config import DemoData

    if data_uri == "demo":
        return storage.join(ensure_demo_data(work_dir, DemoData(), bands), "test")
    test = storage.join(data_uri, "test")
    return test if list_cubes(test, required=False) else data_uri


def evaluate(model_uri: str, data_uri: str, out_dir: str | os.PathLike, *, levels: str = "all",
             max_cubes: int | None = None, crop: int | None = 256, baselines: bool = True, task: str = "auto",
             batch_size: int = 16, concurrency: int = 1, use_gpu: bool = False, work_dir: str = "work",
             tracking_uri: str | None = None, experiment: str = "hsivar-eval", log_mlflow: bool = True,
             echo: Callable[[str], None] = print) -> EvalResult:
    """Run the seeded test protocol and write ``metrics.csv``, ``cases.csv`` and ``metrics.md``.

    Args:
        model_uri: published model (local, file://, s3://, ``models:/NAME/VERSION``).
        data_uri: prefix of clean test cubes, or ``demo``.
        out_dir: local output folder (created).
        levels: ``all`` 19 cases, or ``middle`` (one level per family).
        max_cubes: use the first N cubes of the prefix.
        crop: evaluate the centre crop×crop of each cube (None: whole cubes).
        task: ``auto`` (the model's task classifier) or ``oracle`` (the true task name).
        concurrency: model actors; use_gpu: one GPU per actor.
        tracking_uri: MLflow (default ``$MLFLOW_TRACKING_URI``, else SQLite in ``work_dir``).
    Returns:
        :class:`EvalResult`.
    Raises:
        FileNotFoundError: no model or no cubes at the URIs (the message names them).
    """
    import pandas as pd
    import ray.data

    from hsivar.publish import read_config
    from hsivar_platform.data import list_cubes, protocol_cases, protocol_dataset
    from hsivar_platform.models import resolve_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(model_uri, out / "model")
    mcfg, doc = read_config(model_dir)
    prefix = resolve_test_prefix(data_uri, mcfg.bands, work_dir)
    files = list_cubes(prefix)[: max_cubes or None]
    cases = protocol_cases(levels)
    echo(f"[evaluate] model {model_uri} ({mcfg.name}, {mcfg.bands} bands); {len(files)} cubes under {prefix}; "
         f"{len(cases)} cases; task={task}")

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = protocol_dataset(files, cases, bands=mcfg.bands, crop=crop)
    ds = ds.map_batches(score_inputs, batch_size=1, fn_kwargs={"baselines": baselines})
    ds = ds.map_batches(ModelScorer, batch_size=1, concurrency=concurrency, num_gpus=1 if use_gpu else None,
                        fn_constructor_kwargs={"model_dir": str(model_dir), "device": "cuda" if use_gpu else "cpu",
                                               "task": "auto" if task == "auto" else "oracle",
                                               "batch_size": batch_size})
    t0 = time.perf_counter()
    rows = ds.take_all()
    if not rows:
        raise RuntimeError(f"{prefix}: no cube could be evaluated (see the warnings above)")
    cases_df = pd.DataFrame(rows)
    table = aggregate(cases_df)
    summary = family_summary(table)
    cases_df.to_csv(out / "cases.csv", index=False)
    table.to_csv(out / "metrics.csv", index=False)
    md = to_markdown(table, summary, f"Evaluation of {model_uri} on {prefix}")
    (out / "metrics.md").write_text(md)
    echo(md)
    echo(f"[evaluate] {len(cases_df)} rows in {time.perf_counter() - t0:.0f} s → {out / 'metrics.csv'}")

    run_id = None
    if log_mlflow:
        run_id = _log_eval(table, summary, out, model_uri, prefix, levels, task, crop, doc,
                           tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                           or f"sqlite:///{Path(work_dir).absolute() / 'mlflow.db'}", experiment, work_dir)
        echo(f"[evaluate] logged to MLflow run {run_id} (experiment {experiment!r})")
    return EvalResult(out, table, cases_df, run_id)


def _log_eval(table: Any, summary: Any, out: Path, model_uri: str, prefix: str, levels: str, task: str,
              crop: int | None, doc: dict[str, Any], tracking_uri: str, experiment: str, work_dir: str) -> str:
    from hsivar_platform.tracking import RunLogger, experiment_id

    local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    exp = experiment_id(tracking_uri, experiment,
                        str(Path(work_dir).absolute() / "mlartifacts") if local else None)
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).create_run(exp, run_name=f"eval-{Path(str(model_uri)).name}",
                                                tags={"hsivar.kind": "evaluation"})
    lg = RunLogger(tracking_uri, run.info.run_id)
    lg.params({"model_uri": model_uri, "data": prefix, "levels": levels, "task": task, "crop": crop,
               "model_stage": doc.get("stage"), "model_run": doc.get("metadata", {}).get("run")})
    metrics: dict[str, float] = {}
    for (t, m), g in table.groupby(["task", "method"]):
        for k in ("psnr", "ssim", "sam", "ergas", "seconds_per_cube"):
            metrics[f"eval/{t}/{m}/{k}"] = float(g[k].mean())
    for r in summary.itertuples(index=False):
        metrics[f"eval/{r.task}/gain_psnr"] = float(r.model_psnr - r.degraded_psnr)
    lg.metrics(metrics, step=0)
    for name in ("metrics.csv", "metrics.md", "cases.csv"):
        lg.artifact(out / name, "evaluation")
    MlflowClient(tracking_uri).set_terminated(run.info.run_id)
    return run.info.run_id


# ------------------------------------------------------------------------------------------ CLI


def build_parser() -> Any:
    """Arguments of ``jobs/evaluate.py``."""
    import argparse

    p = argparse.ArgumentParser(prog="evaluate.py", description="Seeded all-in-one test protocol with Ray Data: "
                                "writes DIR/metrics.csv and DIR/metrics.md and logs them to MLflow.")
    p.add_argument("--model", required=True, help="published model: dir, file://, s3://, models:/NAME/VERSION")
    p.add_argument("--data", required=True, help="prefix of clean test cubes (or holding test/), or 'demo'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--levels", choices=("all", "middle"), default="all")
    p.add_argument("--max-cubes", type=int, default=None)
    p.add_argument("--crop", type=int, default=256, help="centre crop side in pixels (0: whole cubes)")
    p.add_argument("--task", choices=("auto", "oracle"), default="auto")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--concurrency", type=int, default=1, help="model actors")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--batch-size", type=int, default=16, help="tiles per forward pass")
    p.add_argument("--work-dir", default="work")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default="hsivar-eval")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--ray-address", default=None, help="default $RAY_ADDRESS, else a local Ray")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jobs/evaluate.py``."""
    args = build_parser().parse_args(argv)
    connect_ray(args.ray_address)
    evaluate(args.model, args.data, args.out, levels=args.levels, max_cubes=args.max_cubes,
             crop=args.crop or None, baselines=not args.no_baselines, task=args.task, batch_size=args.batch_size,
             concurrency=args.concurrency, use_gpu=args.use_gpu, work_dir=args.work_dir,
             tracking_uri=args.tracking_uri, experiment=args.experiment, log_mlflow=not args.no_mlflow)
    return 0


def connect_ray(address: str | None = None) -> None:
    """Connect to Ray like the training job: an address / ``$RAY_ADDRESS``, else a local Ray."""
    from hsivar_platform.pipeline_config import PipelineConfig
    from hsivar_platform.train import ensure_ray

    cfg = PipelineConfig()
    cfg.ray.address = address
    ensure_ray(cfg)
