"""The product demo: the whole platform on one machine with its embedded defaults (``hsivar demo``).

``run_demo(out)`` goes through every user path of the product with the same code the cluster runs,
printing ``[demo]`` progress lines (training adds its own step lines):

1. **data** — 31-band demo cubes built from real reflectance spectra
   (:func:`hsivar.data.synth.make_demo_dataset`) into a bucket: a local folder (default
   ``OUT/bucket``) or ``s3://…`` (the local S3-compatible server). ``hsi/train/`` is the training
   prefix, ``hsi/test/`` the held-out prefix. The held-out cubes are then degraded by each task
   family at its middle test level (the seeded protocol of :mod:`hsivar.data.degrade`) into
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
6. **report** — ``OUT/report/REPORT.md`` with PNG figures (:mod:`hsivar.report`): the per-family
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

``degraded/`` and ``restored/`` are rewritten by every run; the clean data is generated once per
setting and reused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hsivar.data.io import CubeMeta, read_cube, write_cube
from hsivar.report import Example
from hsivar.tasks import TASKS
from hsivar_platform import storage

Echo = Callable[[str], None]

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
    candidates = [Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml",
                  Path.cwd() / "configs" / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"pipeline config {name}.yaml not found in {' or '.join(map(str, candidates))}; "
                            "pass --config PATH")


def _run_name(plan: DemoPlan) -> str:
    """A new Ray Train / MLflow run name: ``demo-20250101-120000-quick-1a2b``."""
    return f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{plan.name}-{uuid.uuid4().hex[:4]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(uri: str) -> np.ndarray:
    cube, _ = read_cube(uri, storage_options=storage.storage_options(uri))
    return cube


def _remove_prefix(uri: str) -> None:
    """Delete everything under ``uri`` (the demo's own output prefixes, rewritten by every run)."""
    fs, path = storage.filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _normalise(cube: np.ndarray) -> np.ndarray:
    """Min–max to [0, 1], as the test protocol does before degrading (:func:`hsivar_platform.data.degrade_case`)."""
    from hsivar_platform.data import normalise

    out = normalise(cube, None)
    return cube.astype(np.float32) if out is None else out


@contextmanager
def _stage(seconds: dict[str, float], key: str, title: str, echo: Echo) -> Iterator[None]:
    """Print the stage's start and end lines and record its wall time in ``seconds[key]``."""
    echo(f"[demo] ── {title}")
    t0 = time.perf_counter()
    yield
    seconds[key] = round(time.perf_counter() - t0, 1)
    echo(f"[demo] ── {key} done in {seconds[key]:.0f} s")


def start_local_ray() -> bool:
    """Start the demo's local Ray (4 logical CPUs, a 600 MB object store) unless Ray is already up.

    Returns:
        True when this call started it (the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ACCEPT_CLOUD_OBJECT_STORE_MEMORY_LIMIT", "1")
    ray.init(address="local", num_cpus=RAY_NUM_CPUS, object_store_memory=RAY_OBJECT_STORE_MB * 1024**2,
             include_dashboard=False)
    return True


# ------------------------------------------------------------------------------------------ 1. data


def make_data(clean_prefix: str, n_train: int, n_val: int, n_test: int, size: int, bands: int, fmt: str,
              seed: int, echo: Echo) -> dict[str, Any]:
    """The clean demo dataset under ``clean_prefix`` (generated unless its manifest matches); → the manifest."""
    from hsivar.data.synth import make_demo_dataset

    man_uri = storage.join(clean_prefix, "manifest.json")
    want = {"counts": {"train": n_train, "val": n_val, "test": n_test}, "size": size, "bands": bands,
            "format": fmt, "seed": seed}
    if storage.exists(man_uri):
        manifest = json.loads(storage.read_bytes(man_uri))
        if all(manifest.get(k) == v for k, v in want.items()):
            echo(f"[demo] reusing the demo cubes under {clean_prefix}")
            return manifest
        _remove_prefix(clean_prefix)
    echo(f"[demo] building {n_train} + {n_val} + {n_test} demo cubes ({bands} bands, {size}×{size} px) from real "
         f"reflectance spectra into {clean_prefix} …")
    make_demo_dataset(clean_prefix, n_train=n_train, n_val=n_val, n_test=n_test, size=size, bands=bands,
                      format=fmt, seed=seed)
    return json.loads(storage.read_bytes(man_uri))


@dataclass
class ArchiveItem:
    """One degraded held-out cube of the archive (and where its restoration will be)."""

    task: str
    level: float
    index: int
    clean_uri: str
    degraded_uri: str
    restored_uri: str
    record: Any  # hsivar.data.degrade.DegradationRecord


def make_archive(test_files: list[str], degraded_prefix: str, restored_prefix: str, wavelengths: list[float] | None,
                 echo: Echo) -> list[ArchiveItem]:
    """Degrade every held-out cube by every family at its middle test level into ``degraded_prefix/<task>/``.

    The cubes are normalised and degraded exactly as the evaluation's protocol does (same seeds), so
    the batch outputs can be scored against the clean cubes.
    """
    from hsivar.data.degrade import degrade_for_test
    from hsivar_platform.data import MIDDLE_LEVELS, case_level

    _remove_prefix(degraded_prefix)
    items = []
    for index, uri in enumerate(test_files):
        clean = _normalise(_read(uri))
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        for task in TASKS:
            level = case_level(task, MIDDLE_LEVELS[task])
            degraded, record = degrade_for_test(clean, task, level, index=index)
            dst = storage.join(degraded_prefix, task, name)
            write_cube(dst, np.asarray(degraded, np.float32), CubeMeta(bands=clean.shape[0], wavelengths=wavelengths),
                       storage_options=storage.storage_options(dst))
            items.append(ArchiveItem(task, float(level), index, uri, dst, storage.join(restored_prefix, task, name),
                                     record))
    echo(f"[demo] wrote {len(items)} degraded cubes ({len(test_files)} held-out × {len(TASKS)} families) under "
         f"{degraded_prefix}")
    return items


# ------------------------------------------------------------------------------------------ 5. serve


def http_round_trip(model_uri: str, item: ArchiveItem, echo: Echo) -> dict[str, Any]:
    """Serve ``model_uri`` on 127.0.0.1, restore ``item``'s degraded cube over HTTP, check it, stop Serve.

    The answer must be a cube of the input's shape, finite, with a known task header, and equal
    (to 1e-4 of its value span) to :meth:`Restorer.restore` of the same cube in this process.

    Returns:
        ``url``, ``status``, ``shape``, ``task`` (the ``auto`` decision), ``seconds`` (request round trip),
        ``max_abs_diff`` vs the local restoration, ``psnr_degraded`` / ``psnr_restored`` (dB).
    Raises:
        RuntimeError: any check failed (the message says which).
    """
    import io

    import httpx
    import torch
    from ray import serve

    from hsivar.metrics import evaluate_record
    from hsivar_platform.models import load_restorer
    from hsivar_platform.serve import ServeSettings, build_app

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cube = _read(item.degraded_uri)
    buf = io.BytesIO()
    np.save(buf, cube)
    echo(f"[demo] starting Ray Serve on {url} with {model_uri}")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(ServeSettings(model=model_uri, device="cpu"), num_replicas=1,
                            ray_actor_options={"num_cpus": 1}), name="hsivar-demo", route_prefix="/")
        with httpx.Client(base_url=url, timeout=300) as client:
            health = client.get("/healthz")
            info = client.get("/v1/model").json()
            t0 = time.perf_counter()
            resp = client.post("/v1/restore", params={"task": "auto", "value_range": "0,1"}, content=buf.getvalue(),
                               headers={"content-type": "application/x-npy"})
            seconds = time.perf_counter() - t0
    finally:
        serve.shutdown()
    if health.status_code != 200 or resp.status_code != 200:
        raise RuntimeError(f"HTTP round trip failed: /healthz {health.status_code}, /v1/restore {resp.status_code} "
                           f"{resp.text[:300]}")
    restored = np.load(io.BytesIO(resp.content), allow_pickle=False)
    task = resp.headers.get("x-hsivar-task", "")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the replica, so the float sums are the same
    try:
        local = load_restorer(model_uri).restore(cube, value_range=(0.0, 1.0)).cube
    finally:
        torch.set_num_threads(threads)
    diff = float(np.abs(restored - local).max()) if restored.shape == local.shape else float("inf")
    span = float(local.max() - local.min()) or 1.0
    problems = [p for p, bad in (
        (f"shape {restored.shape} != {cube.shape}", restored.shape != cube.shape),
        ("non-finite values", not np.isfinite(restored).all()),
        (f"task header {task!r}", task not in TASKS),
        (f"/v1/model reports {info.get('bands')} bands", info.get("bands") != cube.shape[0]),
        (f"differs from Restorer.restore by {diff:.3g} (span {span:.3g})", not diff <= 1e-4 * span),
    ) if bad]
    if problems:
        raise RuntimeError("HTTP answer failed its checks: " + "; ".join(problems))
    clean = _normalise(_read(item.clean_uri))
    result = {"url": f"{url}/v1/restore?task=auto&value_range=0,1", "status": resp.status_code,
              "cube": item.degraded_uri,
              "shape": list(restored.shape), "task": task, "true_task": item.task, "seconds": round(seconds, 3),
              "max_abs_diff": diff, "psnr_degraded": evaluate_record(cube, clean, item.record).psnr,
              "psnr_restored": evaluate_record(restored, clean, item.record).psnr}
    echo(f"[demo] POST /v1/restore → {resp.status_code}, {restored.shape} float32, task {task} "
         f"(true: {item.task}); PSNR {result['psnr_degraded']:.2f} → {result['psnr_restored']:.2f} dB; "
         f"equals Restorer.restore (max |diff| {diff:.2g}); {seconds:.2f} s")
    return result


# ------------------------------------------------------------------------------------------ 6. report


def score_outputs(items: list[ArchiveItem]) -> tuple[list[dict[str, Any]], list[Example]]:
    """Score the batch outputs against the clean cubes.

    Returns:
        (per family: mean PSNR / SSIM / SAM of the degraded inputs and the restorations over the
        held-out cubes, plus the mean std; one :class:`Example` per family: its first cube).
    """
    from hsivar.metrics import evaluate_record
    from hsivar_platform.batch import uncertainty_uri

    per_task: dict[str, list[dict[str, float]]] = {t: [] for t in TASKS}
    examples: dict[str, Example] = {}
    clean_cache: dict[str, np.ndarray] = {}
    for it in items:
        if it.clean_uri not in clean_cache:
            clean_cache[it.clean_uri] = _normalise(_read(it.clean_uri))
        clean = clean_cache[it.clean_uri]
        degraded, restored = _read(it.degraded_uri), _read(it.restored_uri)
        std = _read(uncertainty_uri(it.restored_uri)) if storage.exists(uncertainty_uri(it.restored_uri)) else None
        before = evaluate_record(degraded, clean, it.record).as_dict()
        after = evaluate_record(restored, clean, it.record).as_dict()
        per_task[it.task].append({"psnr_degraded": before["psnr"], "psnr_restored": after["psnr"],
                                  "ssim_degraded": before["ssim"], "ssim_restored": after["ssim"],
                                  "sam_degraded": before["sam"], "sam_restored": after["sam"],
                                  "mean_std": float(np.mean(std)) if std is not None else float("nan")})
        if it.task not in examples:
            examples[it.task] = Example(it.task, it.level, clean, degraded, restored, std, before["psnr"],
                                        after["psnr"])
    rows = []
    for task in TASKS:
        if per_task[task]:
            level = next(it.level for it in items if it.task == task)
            rows.append({"task": task, "level": level, "cubes": len(per_task[task]),
                         **{k: float(np.mean([r[k] for r in per_task[task]])) for k in per_task[task][0]}})
    return rows, [examples[t] for t in TASKS if t in examples]


def write_report(result: DemoResult, plan: DemoPlan, batch_rows: list[dict[str, Any]], examples: list[Example],
                 wavelengths: list[float] | None, train_info: dict[str, Any]) -> Path:
    """Write ``report/REPORT.md`` and its PNG figures beside it; → the REPORT.md path."""
    from hsivar.report import (
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
                                              "psnr_restored", "sam_degraded", "sam_restored")}}
    f4 = {k: ".4f" for k in ("degraded_ssim", "baseline_ssim", "model_ssim", "ssim_degraded", "ssim_restored",
                             "mean_std")}
    eval_table = markdown_table(
        [{**r, "beats": "yes" if r["model_beats_degraded"] else "no"} for r in result.summary],
        [("task", "task"), ("degraded_psnr", "degraded PSNR"), ("degraded_ssim", "SSIM"), ("baseline", "baseline"),
         ("baseline_psnr", "baseline PSNR"), ("baseline_ssim", "SSIM"), ("model_psnr", "HSI-VAR PSNR"),
         ("model_ssim", "SSIM"), ("beats", "beats degraded")], {**f2, **f4})
    batch_table = markdown_table(
        batch_rows, [("task", "task"), ("level", "level"), ("cubes", "cubes"), ("psnr_degraded", "degraded PSNR"),
                     ("psnr_restored", "restored PSNR"), ("ssim_degraded", "degraded SSIM"),
                     ("ssim_restored", "restored SSIM"), ("sam_degraded", "degraded SAM"),
                     ("sam_restored", "restored SAM"), ("mean_std", "mean std")], {**f2, **f4})
    stages = markdown_table(
        [{"stage": s, **v} for s, v in train_info.items()],
        [("stage", "stage"), ("steps", "steps"), ("metrics", "final metrics"), ("published", "published weights")])
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    http = result.http
    b = result.batch
    eval_rel = os.path.relpath(result.eval_dir / "metrics.md", rep)
    text = f"""# HSI-VAR demo report

Run `{result.run_name}` ({plan.name} demo), {time.strftime('%Y-%m-%d %H:%M')}. Wall time: {times}.

Everything ran on this machine with the embedded defaults: local Ray ({RAY_NUM_CPUS} logical CPUs), the bucket
`{result.clean_prefix.rsplit('/', 1)[0]}`, MLflow in `{result.tracking_uri}`.

## 1. Data

Clean 31-band demo cubes built from measured reflectance spectra over real photographs
(`hsivar.data.synth`): training prefix `{storage.join(result.clean_prefix, 'train')}`, held-out prefix
`{storage.join(result.clean_prefix, 'test')}`. The held-out cubes, degraded by each task family at its middle test
level (seeded), form the archive to repair: `{result.degraded_prefix}`.

## 2. Training (Ray Train, tracked in MLflow)

{stages}
Final model: `{result.model_uri}` (copy: `{result.model_copy}`), registered as
`{result.registered_model or 'not registered'}`. MLflow: experiment `hsivar`, parent run
`{result.mlflow_runs.get('pipeline')}` with a nested run per stage; the evaluation is run
`{result.mlflow_runs.get('evaluation')}` in experiment `hsivar-eval`.

## 3. Evaluation on the held-out prefix

Seeded all-in-one protocol ({plan.eval_levels} levels), `task=auto` (the model's own task classifier); mean over
levels per family. Full table per level: [`{eval_rel}`]({eval_rel}).

{eval_table}
![evaluation](evaluation.png)

## 4. Batch restoration of the archive

`{result.degraded_prefix}` → `{result.restored_prefix}` with Ray Data: {b.get('ok')} ok, {b.get('failed')} failed,
{b.get('skipped')} skipped of {b.get('total')}; {plan.samples} seeded samples per cube (their mean is the output, their
std the `.std` cube beside it); manifest `{result.manifest}`. Scores of the written outputs against the clean cubes
(mean over the held-out cubes). They differ from the evaluation above by design: the evaluation decodes greedily,
while the batch job averages seeded samples. Both, like the Serve request below, pass the data's value range [0, 1]
(`--value-range 0,1`); without it each cube is normalised by its own min–max, which noise widens.

{batch_table}
False colour (bands nearest 640 / 550 / 460 nm; PSNR in the titles), first held-out cube:

![panels](panels.png)

Spectra at three pixels:

![spectra](spectra.png)

Uncertainty (std over the {plan.samples} samples, mean over bands) next to the absolute error:

![uncertainty](uncertainty.png)

## 5. Online (Ray Serve over HTTP)

`POST {http.get('url')}` with `{http.get('cube')}` as `.npy` → {http.get('status')}, shape {http.get('shape')},
task decided `{http.get('task')}` (true: {http.get('true_task')}), PSNR {http.get('psnr_degraded', math.nan):.2f} →
{http.get('psnr_restored', math.nan):.2f} dB, {http.get('seconds')} s; identical to `Restorer.restore` in-process
(max |diff| {http.get('max_abs_diff', math.nan):.2g}).

## Look further

    mlflow ui --backend-store-uri {result.tracking_uri}
"""
    result.report.write_text(text)
    return result.report


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
        items = make_archive(test_files[: plan.archive_cubes], degraded_prefix, restored_prefix, wavelengths, echo)

    started_ray = start_local_ray()
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
            from hsivar_platform.batch import BatchOptions, run_batch

            _remove_prefix(restored_prefix)
            report = run_batch(BatchOptions(input=degraded_prefix, output=restored_prefix, model=model_uri,
                                            samples=plan.samples, uncertainty=True, value_range=(0.0, 1.0),
                                            progress_interval_s=10))
            result.batch = report.as_dict()
            result.manifest = report.manifest
            echo(f"[demo] {report.ok} ok, {report.failed} failed, {report.skipped} skipped of {report.total} "
                 f"({report.cubes_per_s:.2f} cubes/s, {plan.samples} samples each); manifest {report.manifest}")
            if report.ok != report.total:
                raise RuntimeError(f"batch restoration: {report.failed} of {report.total} failed: {report.failures}")

        with _stage(seconds, "serve", "5/6 serve over HTTP: POST /v1/restore on 127.0.0.1", echo):
            result.http = http_round_trip(model_uri, items[0], echo)
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    with _stage(seconds, "report", "6/6 report: REPORT.md and figures", echo):
        batch_rows, examples = score_outputs(items)
        train_info = _train_info(pipeline)
        write_report(result, plan, batch_rows, examples, wavelengths, train_info)
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
