"""``hsivar train`` and ``hsivar evaluate`` (also ``jobs/train_var.py`` and ``jobs/evaluate.py``).

Thin wrappers over :func:`hsivar_platform.train.train_pipeline` and
:func:`hsivar_platform.evaluate.evaluate`; Ray and MLflow are imported inside the commands, so the rest
of the CLI stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from hsivar_platform.cli.options import RAY_ADDRESS, setup
from hsivar_platform.locations import WORK_DIR_ENV, check_outlives_job, default_work_dir, local_path


def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="pipeline YAML, e.g. configs/tiny.yaml")] = None,
    stage: Annotated[list[str] | None, typer.Option(help="run only this stage: vqvae, var, refiner (restorevar) or "
                                                    "decoder (repeatable)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE config override, e.g. "
                                                   "train.vqvae.steps=5 (repeatable)")] = None,
    print_config: Annotated[bool, typer.Option(help="print the resolved config and exit")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Train a model on Ray, stage by stage (HSI-VAR: VQ-VAE → transformer + condition + DAG + refiner → decoder +
    SSA + fusion head; --set model.family=restorevar: VQ-VAE → transformer → latent refiner transformer → decoder;
    --set model.family=varformer: VQ-VAE → transformer → U-Net restorer on the transformer's prior).

    Any other --dotted.key VALUE sets that config field (e.g. --scaling.num_workers 2). A rerun with the
    same run.name resumes every stage from its last checkpoint.
    """
    from hsivar_platform.pipeline_config import ConfigError, check_stages, load_config, split_dotted_args

    try:
        cfg = load_config(config, [*(set_ or []), *split_dotted_args(list(ctx.args))])
        stages = check_stages(stage, cfg.model_cfg().stages)
        resolved = cfg.resolved()  # also refuses outputs inside a Ray job's temporary working-directory copy
    except ConfigError as e:
        typer.echo(f"config error:\n{e}", err=True)
        raise typer.Exit(2) from None
    if print_config:
        typer.echo(resolved.to_yaml())
        return
    setup(log_level, Path(resolved.run.work_dir) / "logs", ray_lines_to_file=cfg.ray.logs_to_file)
    from hsivar_platform.train import train_pipeline

    result = train_pipeline(cfg, stages=stages, echo=typer.echo)
    typer.echo("[hsivar] result " + json.dumps({
        "completed": result.completed, "stages": {s.stage: s.published_uri for s in result.stages},
        "registered_model": result.registered_model, "mlflow_parent_run_id": result.mlflow_parent_run_id}))


def evaluate(
    model: Annotated[list[str], typer.Option(
        help="published model: dir, file://, s3://, models:/NAME/VERSION; repeat to compare models in one run "
             "(LABEL=URI names a model's rows; default its family)")],
    data: Annotated[str, typer.Option(help="prefix of clean test cubes (or one holding test/), or 'demo'")],
    out: Annotated[Path, typer.Option(help="output folder for metrics.csv / metrics.md")],
    levels: Annotated[str, typer.Option(help="all (every level of the model's families; 19 cases for the "
                                              "default six) or middle (one level per family)")] = "all",
    max_cubes: Annotated[int | None, typer.Option(min=0, help="first N cubes only (0: all)")] = None,
    crop: Annotated[int, typer.Option(min=0, help="centre crop side in pixels (0: whole cubes)")] = 256,
    blur_margin: Annotated[int, typer.Option(
        min=0, help="blur cases blur the scene this many pixels around the crop too, then crop: a camera's blurred "
                    "image, with no zero-padded border (0: the protocol's zero padding; needs --crop)")] = 0,
    task: Annotated[str, typer.Option(help="auto (task classifier) or oracle (true task)")] = "auto",
    baselines: Annotated[bool, typer.Option(help="score the classical baselines of each family")] = True,
    extra_baseline: Annotated[list[str] | None, typer.Option(
        help="an opt-in baseline too (repeatable): bm4d (needs pip install 'hsivar\\[bm4d]', non-commercial)")] = None,
    perceptual: Annotated[list[str] | None, typer.Option(
        help="a perceptual metric per row too (repeatable), on false-colour renderings: gmsd, nlpd, fsim need no "
             "weights; lpips, dists, … read theirs from the torch hub dir (hsivar.perceptual)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="tiles per forward pass")] = 16,
    concurrency: Annotated[int, typer.Option(min=1, help="model actors")] = 1,
    use_gpu: Annotated[bool, typer.Option(help="one GPU per model actor")] = False,
    work_dir: Annotated[str | None, typer.Option(help="work dir (demo data, default SQLite MLflow, logs/); default "
                                                 "$HSIVAR_WORK_DIR, else work")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default $MLFLOW_TRACKING_URI)")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment")] = "hsivar-eval",
    mlflow: Annotated[bool, typer.Option(help="log to MLflow")] = True,
    ray_address: Annotated[str | None, typer.Option(help=RAY_ADDRESS)] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Seeded all-in-one test protocol with Ray Data → OUT/metrics.csv + OUT/metrics.md (+ MLflow), for one model or
    several side by side (the same degraded cubes, baselines scored once)."""
    if levels not in ("all", "middle"):
        raise typer.BadParameter("expected all or middle", param_hint="--levels")
    if task not in ("auto", "oracle"):
        raise typer.BadParameter("expected auto or oracle", param_hint="--task")
    work_dir = work_dir or default_work_dir()
    setup(log_level, Path(work_dir) / "logs")
    from hsivar_platform.evaluate import evaluate as run_evaluation

    try:
        _check_evaluation_outlives_job(out, work_dir, tracking_uri, mlflow)
        run_evaluation(model[0] if len(model) == 1 else model, data, out, levels=levels,
                       max_cubes=max_cubes or None, crop=crop or None, blur_margin=blur_margin,
                       baselines=baselines, extra_baselines=tuple(extra_baseline or ()),
                       perceptual=tuple(perceptual or ()), task=task, batch_size=batch_size,
                       concurrency=concurrency, use_gpu=use_gpu,
                       work_dir=work_dir, tracking_uri=tracking_uri, experiment=experiment, log_mlflow=mlflow,
                       ray_address=ray_address, echo=typer.echo)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _check_evaluation_outlives_job(out: Path, work_dir: str, tracking_uri: str | None, log_mlflow: bool) -> None:
    """Refuse (ValueError) an evaluation whose tables or local MLflow store would land in a Ray job's temporary
    working-directory copy (:func:`hsivar_platform.locations.check_outlives_job`)."""
    check_outlives_job("--out", out, "metrics.csv, cases.csv, metrics.md",
                       fix="pass an absolute --out (on shared storage for a cluster)")
    if not log_mlflow:
        return
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        setting = "--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI"
        check_outlives_job(setting, uri, "the MLflow tracking store", fix=f"point {setting} at a tracking server")
    if not uri or local_path(uri) is not None:  # a local store: its artifacts (and SQLite by default) in work_dir
        check_outlives_job("--work-dir", work_dir, "the local MLflow store and its artifacts go under it",
                           fix=f"set {WORK_DIR_ENV}=/absolute/path in the cluster's environment "
                           "(scripts/local_stack.sh sets it), or pass --work-dir /absolute/path, or "
                           "MLFLOW_TRACKING_URI (a tracking server), or --no-mlflow")
