"""Evaluation: the seeded all-in-one test protocol over a prefix of clean cubes, with Ray Data.

``evaluate(model_uri, data_uri, out_dir)`` builds one row per (cube, protocol case), reads and
degrades each cube inside ``map_batches`` (:func:`hsivar_platform.data.degrade_cases`), scores the
degraded input and a cheap classical baseline per family on CPU tasks, restores with the model in
an actor pool (one :class:`~hsivar.restore.Restorer` per actor, a GPU each when asked) using true
autoregressive decoding, and writes:

* ``DIR/metrics.csv`` — mean over cubes per (task, level, method): psnr (dB), ssim, sam (degrees),
  ergas, seconds_per_cube, n_cubes, and for the model with an error bar (a calibrated model, or samples > 1)
  the share of synthesised entries within 1σ and 2σ and the correlation of σ with |error|;
* ``DIR/cases.csv`` — every (cube, case, method) row;
* ``DIR/metrics.md`` — the table plus a per-family summary (model vs degraded vs baseline), and with
  ``perceptual`` metrics (e.g. the weight-free GMSD and NLPD of :mod:`hsivar.perceptual`) their means per family
  and method;

and logs them to an MLflow run (metrics ``eval/<task>/<method>/<metric>`` averaged over levels).

Methods: ``hsivar`` (the model, ``task="auto"`` by default, restored through the one restoration
path of :class:`~hsivar.restore.Restorer`), ``degraded`` (the input itself), and each family's
classical baseline from the family table (:func:`hsivar.degrade.family`, :mod:`hsivar.classical`).
Several models are compared in one run by giving a list of ``LABEL=URI`` (or URIs, labelled by their model
family): each restores the same degraded cubes in its own actor pool, its rows carry its label as the method,
and the summary has a section per model. The tables are built by :mod:`hsivar_platform.evaluate.tables`.
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

from hsivar.classical import OPTIONAL_BASELINES
from hsivar.degrade import family, observation_of_level, protocol_cases
from hsivar.metrics import evaluate as score
from hsivar.perceptual import perceptual_metrics
from hsivar.uncertainty import coverage_stats
from hsivar_platform import ray_runtime
from hsivar_platform.console import WORKER_TAG
from hsivar_platform.evaluate.tables import (
    METHOD_DEGRADED,
    METHOD_MODEL,
    UNCERTAINTY_COLUMNS,
    aggregate,
    family_summary,
    perceptual_choices,
    perceptual_columns,
    to_markdown,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ Ray Data ops


@dataclass(frozen=True)
class Perceptual:
    """The perceptual metrics to add to every row (``names``, from
    :func:`~hsivar_platform.evaluate.tables.perceptual_choices`) and the band centres in nm their false-colour
    renderings pick bands by (None: the index rule)."""

    names: tuple[str, ...] = ()
    wavelengths: tuple[float, ...] | None = None

    def scores(self, restored: np.ndarray, clean: np.ndarray, what: str) -> dict[str, float]:
        """{name: score} of ``restored`` against ``clean`` (C, H, W) in [0, 1] (restored clipped to it); NaN, with
        a warning naming ``what`` and the reason, for a metric that cannot be computed."""
        if not self.names:
            return {}
        res = perceptual_metrics(np.clip(restored, 0, 1), clean, self.wavelengths, self.names)
        for r in res.values():
            if not r.available:
                log.warning(WORKER_TAG + " %s: %s", what, r.reason)
        return {n: r.value if r.value is not None else float("nan") for n, r in res.items()}


def _metric_row(row: dict[str, Any], method: str, restored: np.ndarray, seconds: float,
                uncertainty: dict[str, float] | None = None, perceptual: Perceptual = Perceptual()) -> dict[str, Any]:
    m = score(restored, row["clean"], row["band_mask"], ergas_ratio=float(row["ergas_ratio"])).as_dict()
    m |= perceptual.scores(np.asarray(restored, np.float32), np.asarray(row["clean"], np.float32),
                           f"{method} on {row['uri']} {row['case']}")
    return {"uri": str(row["uri"]), "index": int(row["index"]), "task": str(row["task"]),
            "level": float(row["level"]), "case": str(row["case"]), "method": method, **m, "seconds": seconds,
            **(uncertainty or dict.fromkeys(UNCERTAINTY_COLUMNS, float("nan")))}


def _uncertainty_row(res: Any, clean: np.ndarray) -> dict[str, float] | None:
    """Coverage of the restoration's error bar (``res.std``) on the entries it synthesised (not kept as observed):
    shares within 1σ and 2σ, correlation of σ with |error| (:func:`hsivar.uncertainty.coverage_stats`)."""
    if res.std is None:
        return None
    free = np.ones(clean.shape, bool) if res.kept is None else ~res.kept
    return coverage_stats((res.cube - clean)[free], res.std[free])


def score_inputs(batch: dict[str, np.ndarray], *, baselines: bool, extra: tuple[str, ...] = (),
                 perceptual: Perceptual = Perceptual()) -> dict[str, Any]:
    """CPU op: metrics of the degraded input and of the family's classical baselines (its row's, plus the
    opt-in ``extra`` ones of :data:`hsivar.classical.OPTIONAL_BASELINES` that serve it), as JSON per row."""
    out = dict(batch)
    scored = []
    for i in range(len(batch["uri"])):
        row = {k: v[i] for k, v in batch.items()}
        rows = [_metric_row(row, METHOD_DEGRADED, row["degraded"], 0.0, perceptual=perceptual)]
        task = str(row["task"])
        optional = (OPTIONAL_BASELINES[name] for name in extra)
        methods = (*family(task).baselines, *(b for b, fams in optional if task in fams)) if baselines else ()
        for baseline in methods:
            t0 = time.perf_counter()
            try:
                restored = baseline.fn(np.asarray(row["degraded"], np.float32), float(row["level"]))
                rows.append(_metric_row(row, baseline.name, restored, time.perf_counter() - t0,
                                        perceptual=perceptual))
            except Exception as e:  # a baseline failing must not sink the evaluation
                log.warning(WORKER_TAG + " baseline %s failed on %s %s: %s", baseline.name, row["uri"], row["case"], e)
        scored.append(json.dumps(rows))
    out["scored"] = np.array(scored)
    return out


class ModelScorer:
    """Actor op: restore each degraded cube with one published model and add its score (method ``label``) to the
    row's ``scored`` JSON list."""

    def __init__(self, model_dir: str, device: str, task: str, batch_size: int, label: str = METHOD_MODEL,
                 perceptual: Perceptual = Perceptual()) -> None:
        from hsivar.restore import Restorer

        self.restorer = Restorer.from_published(model_dir, device=device)
        self.task, self.batch_size, self.label, self.perceptual = task, batch_size, label, perceptual

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out, scored = dict(batch), []
        for i in range(len(batch["uri"])):
            row = {k: v[i] for k, v in batch.items()}
            rows = json.loads(str(row["scored"]))
            degraded = np.asarray(row["degraded"], np.float32)
            if self.task == "auto":  # the model reads the task and the observation off the cube
                res = self.restorer.restore(degraded, task="auto", value_range=(0.0, 1.0), batch_size=self.batch_size)
            else:  # the true task and what its level says (noise σ, blur width, sr scale)
                obs = observation_of_level(str(row["task"]), float(row["level"]), degraded.shape)
                res = self.restorer.restore(degraded, task=str(row["task"]), value_range=(0.0, 1.0),
                                            batch_size=self.batch_size, observation=obs)
            rows.append(_metric_row(row, self.label, res.cube, res.seconds,
                                    _uncertainty_row(res, np.asarray(row["clean"], np.float32)), self.perceptual))
            scored.append(json.dumps(rows))
        out["scored"] = np.array(scored)
        return out


def model_specs(model_uris: str | Sequence[str]) -> list[tuple[str | None, str]]:
    """(label or None, URI) of each model to evaluate: ``LABEL=URI`` names a model's rows (a label holds no ``/``
    or ``:``, so URIs pass unchanged).

    Raises:
        ValueError: no model.
    """
    specs = []
    for spec in [model_uris] if isinstance(model_uris, str) else list(model_uris):
        head, sep, rest = spec.partition("=")
        specs.append((head, rest) if sep and head and rest and not any(c in head for c in "/:") else (None, spec))
    if not specs:
        raise ValueError("no model to evaluate")
    return specs


def model_labels(specs: Sequence[tuple[str | None, str]], families: Sequence[str]) -> list[str]:
    """The method name of each model's rows: one unlabelled model is ``hsivar`` (:data:`METHOD_MODEL`, the tables'
    and the demo report's model); otherwise its label, else its family (``families``, in order).

    Raises:
        ValueError: labels that repeat (label the models: LABEL=URI) or name the degraded input.
    """
    if len(specs) == 1 and specs[0][0] is None:
        return [METHOD_MODEL]
    labels = [label or family for (label, _), family in zip(specs, families)]
    if len(set(labels)) != len(labels) or METHOD_DEGRADED in labels:
        raise ValueError(f"models need distinct labels other than {METHOD_DEGRADED!r} (LABEL=URI); got {labels}")
    return labels


# ------------------------------------------------------------------------------------------ driver


@dataclass
class EvalResult:
    """Where the evaluation went and the aggregated table."""

    out_dir: Path
    table: Any  # pandas.DataFrame with COLUMNS
    cases: Any  # pandas.DataFrame, one row per (cube, case, method)
    mlflow_run_id: str | None


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


def evaluate(model_uri: str | Sequence[str], data_uri: str, out_dir: str | os.PathLike, *, levels: str = "all",
             max_cubes: int | None = None, crop: int | None = 256, blur_margin: int = 0, baselines: bool = True,
             extra_baselines: tuple[str, ...] = (), task: str = "auto",
             perceptual: tuple[str, ...] = (),
             batch_size: int = 16, concurrency: int = 1, use_gpu: bool = False, work_dir: str = "work",
             tracking_uri: str | None = None, experiment: str = "hsivar-eval", log_mlflow: bool = True,
             ray_address: str | None = None, echo: Callable[[str], None] = print) -> EvalResult:
    """Run the seeded test protocol and write ``metrics.csv``, ``cases.csv`` and ``metrics.md``.

    Args:
        model_uri: published model (local, file://, s3://, ``models:/NAME/VERSION``), or several to compare in one
            run (``LABEL=URI`` or URIs labelled by their family; see :func:`model_labels`). They must restore the
            same bands and task families.
        data_uri: prefix of clean test cubes, or ``demo``.
        out_dir: local output folder (created).
        levels: ``all`` (every level of the model's families: 19 cases for MP-HSIR's six), or ``middle`` (one level
            per family).
        max_cubes: use the first N cubes of the prefix.
        crop: evaluate the centre crop×crop of each cube (None: whole cubes).
        blur_margin: blur cases blur the scene this many pixels around the crop too, then keep the crop: a camera's
            blurred image, whose scene goes on beyond its frame, instead of the protocol's zero padding at the
            crop's edge (needs ``crop``; cubes smaller than crop + 2·margin are skipped with a warning).
        baselines: score each family's classical baselines; extra_baselines: names of opt-in ones
            (:data:`hsivar.classical.OPTIONAL_BASELINES`, e.g. ``("bm4d",)``).
        task: ``auto`` (the model's task classifier) or ``oracle`` (the true task name).
        perceptual: perceptual metrics to add per row (:func:`~hsivar_platform.evaluate.tables.perceptual_choices`;
            e.g. the weight-free ``("gmsd", "nlpd")``), on false-colour renderings picked by the first model's
            wavelengths; a metric whose weights are not on this machine scores NaN with a warning naming the file.
        concurrency: model actors; use_gpu: one GPU per actor.
        tracking_uri: MLflow (default ``$MLFLOW_TRACKING_URI``, else SQLite in ``work_dir``).
        ray_address: the Ray cluster (default ``$RAY_ADDRESS``, else a local Ray; see
            :func:`hsivar_platform.ray_runtime.init`; Ray's log lines go to ``<work_dir>/logs``).
    Returns:
        :class:`EvalResult`.
    Raises:
        FileNotFoundError: no model or no cubes at the URIs (the message names them).
        ValueError: models that differ in bands or task families, or whose labels clash.
    """
    import pandas as pd
    import ray.data

    from hsivar.publish import read_config
    from hsivar_platform.data import list_cubes, protocol_dataset
    from hsivar_platform.model_uri import resolve_model

    if blur_margin and crop is None:
        raise ValueError("a blur margin needs a crop: the margin is the scene around the crop")
    if blur_margin < 0:
        raise ValueError(f"the blur margin must be ≥ 0 pixels, got {blur_margin}")
    ray_runtime.init(ray_address, log_dir=Path(work_dir) / "logs")
    unknown = sorted(set(extra_baselines) - set(OPTIONAL_BASELINES))
    if unknown:
        raise ValueError(f"unknown extra baseline(s) {', '.join(unknown)}; known: {', '.join(OPTIONAL_BASELINES)}")
    unknown = sorted(set(perceptual) - set(perceptual_choices()))
    if unknown:
        raise ValueError(f"unknown perceptual metric(s) {', '.join(unknown)}; known: "
                         f"{', '.join(perceptual_choices())}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = model_specs(model_uri)
    dirs = [resolve_model(uri, out / ("model" if len(specs) == 1 else f"model{i + 1}"))
            for i, (_, uri) in enumerate(specs)]
    configs = [read_config(d) for d in dirs]
    mcfg, doc = configs[0]
    labels = model_labels(specs, [c.family for c, _ in configs])
    for label, (c, _) in zip(labels, configs):
        if (c.bands, tuple(c.dag.tasks)) != (mcfg.bands, tuple(mcfg.dag.tasks)):
            raise ValueError(f"model {label} restores {c.bands} bands of {', '.join(c.dag.tasks)}; "
                             f"{labels[0]} restores {mcfg.bands} of {', '.join(mcfg.dag.tasks)}: one protocol "
                             "cannot judge both")
    prefix = resolve_test_prefix(data_uri, mcfg.bands, work_dir)
    files = list_cubes(prefix)[: max_cubes or None]
    cases = protocol_cases(levels, mcfg.dag.tasks)  # the families the model was trained on
    for label, (_, uri), (c, _) in zip(labels, specs, configs):
        echo(f"[evaluate] model {label}: {uri} ({c.family}, {c.name}, {c.bands} bands)")
    echo(f"[evaluate] {len(files)} cubes under {prefix}; {len(cases)} cases; task={task}")

    if blur_margin:
        echo(f"[evaluate] blur cases: the scene blurred {blur_margin} px around each {crop}-px crop, then cropped "
             "(no zero-padded border)")
    ds = protocol_dataset(files, cases, bands=mcfg.bands, crop=crop, blur_margin=blur_margin)
    judge = Perceptual(tuple(perceptual), mcfg.wavelengths)
    ds = ds.map_batches(score_inputs, batch_size=1, fn_kwargs={"baselines": baselines, "extra": extra_baselines,
                                                              "perceptual": judge})
    for label, model_dir in zip(labels, dirs):
        ds = ds.map_batches(ModelScorer, batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency),
                            num_gpus=1 if use_gpu else None,
                            fn_constructor_kwargs={"model_dir": str(model_dir),
                                                   "device": "cuda" if use_gpu else "cpu",
                                                   "task": "auto" if task == "auto" else "oracle",
                                                   "batch_size": batch_size, "label": label,
                                                   "perceptual": judge})
    t0 = time.perf_counter()
    rows = [r for item in ds.select_columns(["scored"]).take_all() for r in json.loads(str(item["scored"]))]
    if not rows:
        raise RuntimeError(f"{prefix}: no cube could be evaluated (the workers' '{WORKER_TAG} skipping …' lines above "
                           "say why)")
    cases_df = pd.DataFrame(rows)
    table = aggregate(cases_df, labels)
    summaries = {label: family_summary(table, label, labels) for label in labels}
    cases_df.to_csv(out / "cases.csv", index=False)
    table.to_csv(out / "metrics.csv", index=False)
    names = ", ".join(f"{label} ({uri})" if len(labels) > 1 else uri for label, (_, uri) in zip(labels, specs))
    md = to_markdown(table, summaries, f"Evaluation of {names} on {prefix}"
                     + (f" (blur: the scene blurred {blur_margin} px around the crop)" if blur_margin else ""))
    (out / "metrics.md").write_text(md)
    echo(md)
    echo(f"[evaluate] {len(cases_df)} rows in {time.perf_counter() - t0:.0f} s → {out / 'metrics.csv'}")

    run_id = None
    if log_mlflow:
        run_id = _log_eval(table, summaries, out, names, prefix, levels, task, crop, blur_margin, doc,
                           tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                           or f"sqlite:///{Path(work_dir).absolute() / 'mlflow.db'}", experiment, work_dir)
        echo(f"[evaluate] logged to MLflow run {run_id} (experiment {experiment!r})")
    return EvalResult(out, table, cases_df, run_id)


def _log_eval(table: Any, summaries: dict[str, Any], out: Path, model_uri: str, prefix: str, levels: str, task: str,
              crop: int | None, blur_margin: int, doc: dict[str, Any], tracking_uri: str, experiment: str,
              work_dir: str) -> str:
    from hsivar_platform.tracking import RunLogger, experiment_id

    local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    exp = experiment_id(tracking_uri, experiment,
                        str(Path(work_dir).absolute() / "mlartifacts") if local else None)
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).create_run(exp, run_name=f"eval-{Path(str(model_uri)).name}",
                                                tags={"hsivar.kind": "evaluation"})
    lg = RunLogger(tracking_uri, run.info.run_id)
    lg.params({"model_uri": model_uri, "data": prefix, "levels": levels, "task": task, "crop": crop,
               "blur_margin": blur_margin,
               "model_stage": doc.get("stage"), "model_run": doc.get("metadata", {}).get("run")})
    metrics: dict[str, float] = {}
    for (t, m), g in table.groupby(["task", "method"]):
        for k in ("psnr", "ssim", "sam", "ergas", "seconds_per_cube", *perceptual_columns(table)):
            metrics[f"eval/{t}/{m}/{k}"] = float(g[k].mean())
    for label, summary in summaries.items():
        tag = "" if label == METHOD_MODEL else f"{label}/"
        for r in summary.itertuples(index=False):
            metrics[f"eval/{r.task}/{tag}gain_psnr"] = float(r.model_psnr - r.degraded_psnr)
    lg.metrics(metrics, step=0)
    for name in ("metrics.csv", "metrics.md", "cases.csv"):
        lg.artifact(out / name, "evaluation")
    MlflowClient(tracking_uri).set_terminated(run.info.run_id)
    return run.info.run_id
