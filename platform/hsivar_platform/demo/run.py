"""The product demo: the whole platform on one machine with its embedded defaults (``hsivar demo``).

``run_demo(out)`` goes through every user path of the product with the same code the cluster runs,
printing one ``[demo]`` line per step and per finished step (training shows a progress bar per stage;
Ray's own log lines go to ``OUT/logs/``):

1. **data** — 31-band demo cubes built from real reflectance spectra
   (:func:`hsivar.synth.make_demo_dataset`) into a bucket: a local folder (default
   ``OUT/bucket``) or ``s3://…`` (the local S3-compatible server). ``hsi/train/`` is the training
   prefix, ``hsi/test/`` the held-out prefix. The held-out cubes are then degraded by each task
   family at its middle test level (the seeded protocol of :mod:`hsivar.degrade`) into
   ``degraded/<task>/``: the archive to repair.
2. **train** — :func:`hsivar_platform.train.train_pipeline` with ``configs/tiny.yaml`` on a local
   Ray (VQ-VAE → transformer + condition + DAG + refiner → decoder + SSA), tracked in MLflow
   (SQLite in ``OUT``), the final model registered. Only the data source, work dir, run name and
   tracking URI are overridden (and the step counts for ``quick``). Every run gets a new run name
   (a reused Ray Train name would resume the old run).
3. **evaluate** — :func:`hsivar_platform.evaluate.evaluate` on the held-out prefix: the seeded
   all-in-one protocol, the model vs the degraded input vs a classical baseline per family.
4. **batch** — :func:`hsivar_platform.batch.run_batch` restores ``degraded/`` into ``restored/``
   with several seeded samples per cube, so every output has a ``.std`` uncertainty cube beside it.
5. **serve** — Ray Serve with :mod:`hsivar_platform.serve` on 127.0.0.1: ``POST /v1/restore`` of
   one degraded cube over real HTTP; the answer must equal :class:`~hsivar.restore.Restorer` on the
   same cube. Serve is shut down afterwards.
6. **report** — ``OUT/report/REPORT.md`` with PNG figures (:mod:`hsivar.render`): the per-family
   evaluation table, false-colour panels, spectra, the uncertainty map; ``OUT/report/demo.json``
   holds the same facts for machines.

Layout under ``OUT`` (``BUCKET`` = ``OUT/bucket`` or the ``s3://`` URI)::

    BUCKET/hsi[-quick]/{train,val,test}/cube_XXXX.npy, manifest.json    clean cubes
    BUCKET/degraded/<task>/cube_XXXX.npy                                 held-out cubes, degraded
    BUCKET/restored/<task>/cube_XXXX.npy, cube_XXXX.std.npy, _manifest.parquet
    runs/<run>/{vqvae,var,decoder}/latest/, runs/<run>/train/            published weights, checkpoints
    model/                                                               a copy of the final model
    mlflow.db, mlartifacts/                                              MLflow
    eval/metrics.{csv,md}, eval/cases.csv                                evaluation
    report/REPORT.md, report/*.png, report/demo.json                     the report
    logs/ray.log, logs/platform.log                                      Ray's and the libraries' log lines

``degraded/`` and ``restored/`` are rewritten by every run; the clean data is generated once per
setting and reused. The steps' code: :mod:`~hsivar_platform.demo.archive` (data, scores),
:mod:`~hsivar_platform.demo.http_check` (Serve) and :mod:`~hsivar_platform.demo.report` (REPORT.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsivar_platform import ray_runtime, storage
from hsivar_platform.console import Echo
from hsivar_platform.demo.archive import make_archive, make_data, make_products, remove_prefix, score_outputs
from hsivar_platform.demo.http_check import http_round_trip
from hsivar_platform.demo.report import write_report

RAY_NUM_CPUS = 4
"""Logical CPUs of the demo's local Ray: more than a laptop's cores, so Ray Data is never starved."""
RAY_OBJECT_STORE_MB = 600


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is.

    Attributes:
        name: ``full`` or ``quick``.
        data: demo dataset (n_train, n_val, n_test, size in pixels); None: the config's ``data.demo``.
        steps: optimizer steps per stage; None: the config's.
        eval_levels: ``all`` (19 cases) or ``middle`` (one level per family); eval_crop: centre crop
            side in pixels (None: whole cubes); eval_cubes: held-out cubes evaluated (None: all).
        archive_cubes: held-out cubes degraded per family for the batch job (None: all).
        samples: decodings per cube of the batch job (> 1: a std cube per output).
    """

    name: str
    data: tuple[int, int, int, int] | None
    steps: dict[str, int] | None
    eval_levels: str
    eval_crop: int | None
    eval_cubes: int | None
    archive_cubes: int | None
    samples: int


FULL = DemoPlan("full", data=None, steps=None, eval_levels="all", eval_crop=None, eval_cubes=None,
                archive_cubes=None, samples=4)
QUICK = DemoPlan("quick", data=(2, 1, 1, 40), steps={"vqvae": 4, "var": 4, "decoder": 2}, eval_levels="middle",
                 eval_crop=32, eval_cubes=1, archive_cubes=1, samples=2)


@dataclass
class DemoResult:
    """Where everything went and what was measured (also written to ``report/demo.json``)."""

    out_dir: Path
    run_name: str
    report: Path
    model_uri: str
    model_copy: Path
    registered_model: str | None
    tracking_uri: str
    mlflow_runs: dict[str, str | None]  # "pipeline" (parent of the stage runs), "evaluation"
    clean_prefix: str
    degraded_prefix: str
    restored_prefix: str
    manifest: str
    eval_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per demo stage and "total", s
    summary: list[dict[str, Any]] = field(default_factory=list)  # per family: degraded / baseline / model
    batch: dict[str, Any] = field(default_factory=dict)
    products: list[dict[str, Any]] = field(default_factory=list)  # the sensor products restored: input, output, item
    collection: str = ""  # the STAC Collection of the restored prefix
    http: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# ------------------------------------------------------------------------------------------ helpers


def find_config(name: str = "tiny") -> Path:
    """``configs/<name>.yaml`` of the repository this package runs from, else of the current directory.

    Raises:
        FileNotFoundError: neither exists (the message names both and suggests ``--config``).
    """
    candidates = [Path(__file__).resolve().parents[3] / "configs" / f"{name}.yaml",
                  Path.cwd() / "configs" / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"pipeline config {name}.yaml not found in {' or '.join(map(str, candidates))}; "
                            "pass --config PATH")


def _run_name(plan: DemoPlan) -> str:
    """A new Ray Train / MLflow run name: ``demo-20250101-120000-quick-1a2b``."""
    return f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{plan.name}-{uuid.uuid4().hex[:4]}"


@contextmanager
def _stage(seconds: dict[str, float], key: str, title: str, echo: Echo) -> Iterator[None]:
    """Print the stage's start and end lines and record its wall time in ``seconds[key]``."""
    echo(f"[demo] ── {title}")
    t0 = time.perf_counter()
    yield
    seconds[key] = round(time.perf_counter() - t0, 1)
    echo(f"[demo] ── {key} done in {seconds[key]:.0f} s")


# ------------------------------------------------------------------------------------------ driver


def _train_info(pipeline: Any) -> dict[str, Any]:
    out = {}
    for s in pipeline.stages:
        keys = ("loss", "psnr", "ce", "acc", "refiner_l1", "task_acc")
        shown = ", ".join(f"{k} {float(s.metrics[k]):.4g}" for k in keys if k in s.metrics)
        out[s.stage] = {"steps": s.step, "metrics": shown, "published": s.published_uri}
    return out


def run_demo(out: str | os.PathLike = "work/demo", *, quick: bool = False, bucket: str | None = None,
             config: str | os.PathLike | None = None, echo: Echo = print) -> DemoResult:
    """Run the whole product on this machine (see the module docstring); → :class:`DemoResult`.

    Args:
        out: work directory (created): MLflow store, checkpoints, evaluation, report; the bucket too
            unless ``bucket`` is given.
        quick: a few steps per stage, one small held-out cube (the CI version, minutes).
        bucket: where the data and the restored files go: a local folder or ``s3://bucket/prefix``
            (endpoint from ``AWS_ENDPOINT_URL``); default ``OUT/bucket``.
        config: pipeline YAML; default ``configs/tiny.yaml`` (:func:`find_config`).
        echo: where progress lines go.
    Raises:
        FileNotFoundError: no pipeline config; RuntimeError: training did not finish, or the HTTP
        answer failed its checks.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # no cloud credential probing
    from hsivar_platform.pipeline_config import load_config

    t_start = time.perf_counter()
    plan = QUICK if quick else FULL
    out_dir = Path(out).absolute()
    bucket_uri = str(bucket).rstrip("/") if bucket else str(out_dir / "bucket")
    if not storage.is_remote(bucket_uri):
        bucket_uri = str(Path(bucket_uri.removeprefix("file://")).absolute())
    config_path = Path(config) if config else find_config("tiny")
    run_name = _run_name(plan)
    tracking_uri = f"sqlite:///{out_dir / 'mlflow.db'}"
    clean_prefix = storage.join(bucket_uri, "hsi" if plan.name == "full" else f"hsi-{plan.name}")
    degraded_prefix = storage.join(bucket_uri, "degraded")
    restored_prefix = storage.join(bucket_uri, "restored")
    overrides = [f"data.source={clean_prefix}", f"run.work_dir={out_dir}", f"run.name={run_name}",
                 f"tracking.tracking_uri={tracking_uri}"]
    overrides += [f"train.{stage}.steps={n}" for stage, n in (plan.steps or {}).items()]
    cfg = load_config(config_path, overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    echo(f"[demo] {plan.name} demo: run {run_name}, config {config_path}, work dir {out_dir}, bucket {bucket_uri}")

    with _stage(seconds, "data", "1/6 data: demo cubes into the bucket, held-out cubes degraded", echo):
        d = cfg.data.demo
        n_train, n_val, n_test, size = plan.data or (d.n_train, d.n_val, d.n_test, d.size)
        manifest = make_data(clean_prefix, n_train, n_val, n_test, size, cfg.model.bands, d.format, d.seed, echo)
        wavelengths = next((c["wavelengths"] for c in manifest["cubes"] if c["split"] == "test"), None)
        from hsivar_platform.data import list_cubes

        test_prefix = storage.join(clean_prefix, "test")
        test_files = list_cubes(test_prefix)
        items = make_archive(test_files[: plan.archive_cubes], degraded_prefix, restored_prefix, wavelengths, echo,
                             tasks=cfg.model_cfg().dag.tasks)
        products = make_products(storage.join(degraded_prefix, "products"), min(size, 48), cfg.model.bands, d.seed,
                                 echo)

    started_ray = ray_runtime.init(num_cpus=RAY_NUM_CPUS, object_store_mb=RAY_OBJECT_STORE_MB, log_dir=out_dir / "logs")
    try:
        with _stage(seconds, "train", "2/6 train: 3 stages with Ray Train, tracked in MLflow", echo):
            from hsivar_platform.train import train_pipeline

            pipeline = train_pipeline(cfg, echo=echo)
            if not pipeline.completed or not pipeline.model_uri:
                raise RuntimeError(f"training did not finish (run {run_name}); see the lines above")
            model_uri = pipeline.model_uri
            model_copy = out_dir / "model"
            shutil.copytree(storage.download_dir(model_uri, out_dir / ".model-download"), model_copy,
                            dirs_exist_ok=True)
            shutil.rmtree(out_dir / ".model-download", ignore_errors=True)

        result = DemoResult(out_dir=out_dir, run_name=run_name, report=out_dir / "report" / "REPORT.md",
                            model_uri=model_uri, model_copy=model_copy, registered_model=pipeline.registered_model,
                            tracking_uri=tracking_uri, mlflow_runs={"pipeline": pipeline.mlflow_parent_run_id},
                            clean_prefix=clean_prefix, degraded_prefix=degraded_prefix,
                            restored_prefix=restored_prefix, manifest="", eval_dir=out_dir / "eval", seconds=seconds)

        with _stage(seconds, "evaluate", f"3/6 evaluate on the held-out prefix {test_prefix}", echo):
            from hsivar_platform.evaluate import evaluate, family_summary

            ev = evaluate(model_uri, test_prefix, result.eval_dir, levels=plan.eval_levels, max_cubes=plan.eval_cubes,
                          crop=plan.eval_crop, work_dir=str(out_dir), tracking_uri=tracking_uri, echo=echo)
            result.summary = family_summary(ev.table).to_dict("records")
            result.mlflow_runs["evaluation"] = ev.mlflow_run_id

        with _stage(seconds, "batch", f"4/6 batch-restore {degraded_prefix} → {restored_prefix}", echo):
            from hsivar.io import detect_format
            from hsivar_platform.batch import BatchOptions, read_manifest, run_batch
            from hsivar_platform.batch.stac import collection_uri

            remove_prefix(restored_prefix)
            report = run_batch(BatchOptions(input=degraded_prefix, output=restored_prefix, model=model_uri,
                                            samples=plan.samples, uncertainty=True, value_range=(0.0, 1.0),
                                            progress_interval_s=10))
            result.batch = report.as_dict()
            result.manifest = report.manifest
            echo(f"[demo] {report.ok} ok, {report.failed} failed, {report.skipped} skipped of {report.total} "
                 f"({report.cubes_per_s:.2f} cubes/s, {plan.samples} samples each); manifest {report.manifest}")
            if report.ok != report.total:
                raise RuntimeError(f"batch restoration: {report.failed} of {report.total} failed: {report.failures}")
            rows = read_manifest(restored_prefix)
            result.products = [{"input": uri, "format": detect_format(uri), "output": rows[uri]["output_uri"],
                                "stac_item": rows[uri]["stac_item_uri"]} for uri in products]
            result.collection = collection_uri(restored_prefix)

        with _stage(seconds, "serve", "5/6 serve over HTTP: POST /v1/restore on 127.0.0.1", echo):
            result.http = http_round_trip(model_uri, items[0], echo, log_dir=out_dir / "logs")
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    with _stage(seconds, "report", "6/6 report: REPORT.md and figures", echo):
        batch_rows, examples = score_outputs(items)
        train_info = _train_info(pipeline)
        write_report(result, plan, batch_rows, examples, wavelengths, train_info, RAY_NUM_CPUS)
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    (result.report.parent / "demo.json").write_text(json.dumps(
        {**result.as_dict(), "plan": plan.name, "batch_scores": batch_rows, "training": train_info}, indent=2,
        default=str))

    echo("")
    echo(f"[demo] finished in {seconds['total']:.0f} s ({plan.name})")
    echo(f"[demo] report:          {result.report}")
    echo(f"[demo] restored files:  {restored_prefix}/<task>/ (+ .std uncertainty cubes, _manifest.parquet)")
    echo(f"[demo] model:           {model_uri}  (copy: {model_copy}; registry: {result.registered_model})")
    echo(f"[demo] MLflow UI:       {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {tracking_uri}")
    return result
