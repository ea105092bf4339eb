"""Ray Train: the model family's stages, one ``TorchTrainer`` each, resumable, tracked in MLflow.

``train_pipeline(cfg)`` runs ``cfg.stages()`` in order (HSI-VAR and VarFormer: vqvae → var → decoder; RestoreVAR:
vqvae → var → refiner → decoder). Each stage:

* streams training examples from :func:`hsivar_platform.data.training_dataset` into every worker
  (``get_dataset_shard("train").iter_torch_batches``) and sends the seeded validation protocol's (cube, case) rows
  to rank 0, which reads and degrades them itself (a few hundred small examples);
* builds the model, loads the previous stage's published weights by URI, and optimises
  :func:`hsivar.training.stage_loss` with DDP (gloo on CPU, NCCL on GPU; bf16 autocast on CUDA),
  AdamW, gradient clipping, linear warmup + cosine decay and an optional EMA;
* checkpoints every ``train.checkpoint_every`` steps to ``<storage>/<run>/train/<stage>/`` (local or
  ``s3://``): model weights (safetensors), optimizer + scheduler + EMA + step + data position
  (``torch.save`` of tensors and primitives, read back with ``weights_only=True``), each rank's RNG
  state and the resolved config. The Train run name is stable (the stage name under the run's
  storage path), so a job restarted with the same ``run.name`` resumes from the last checkpoint;
  ``FailureConfig(max_failures)`` restarts the worker group from it after a worker is lost;
* publishes safetensors + ``config.json`` at ``<storage>/<run>/<stage>/latest/`` (weights first,
  config last), which :class:`hsivar.restore.Restorer` loads and the next stage starts from.

Rank 0 alone logs metrics (loss, lr, per-scale token accuracy, per-scale codebook usage; validation per task
family: the stages between vqvae and decoder their held-out loss and token-path PSNR/SSIM/SAM, stage decoder
PSNR/SSIM/SAM of true autoregressive restoration), PNG panels and the published weights
into the stage's nested MLflow run, and sends its progress to the driver's console
(:mod:`hsivar_platform.train.progress`); the driver registers the decoder stage's model. The worker
modules are :mod:`~hsivar_platform.train.worker`, :mod:`~hsivar_platform.train.state` and
:mod:`~hsivar_platform.train.validate`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsivar.publish import CONFIG_FILE
from hsivar_platform import ray_runtime, storage
from hsivar_platform.console import StageProgress
from hsivar_platform.pipeline_config import PipelineConfig, check_stages
from hsivar_platform.train.progress import pumping
from hsivar_platform.train.worker import train_loop_per_worker


@dataclass
class StageResult:
    """What one stage run produced."""

    stage: str
    completed: bool  # False when stopped early by train.stop_after (resume with the same run name)
    step: int
    published_uri: str | None
    mlflow_run_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # already complete in an earlier job


@dataclass
class PipelineResult:
    """What :func:`train_pipeline` produced."""

    config: PipelineConfig
    stages: list[StageResult]
    mlflow_parent_run_id: str | None = None
    registered_model: str | None = None  # "models:/NAME/VERSION"

    @property
    def completed(self) -> bool:
        """True when every requested stage finished."""
        return all(s.completed for s in self.stages)

    @property
    def model_uri(self) -> str | None:
        """Published URI of the last stage that finished."""
        done = [s for s in self.stages if s.completed and s.published_uri]
        return done[-1].published_uri if done else None


def stage_init_uri(cfg: PipelineConfig, stage: str, first_stage_of_job: bool) -> str | None:
    """The published weights a stage starts from (see ``train.init_uri``), or None for a fresh model."""
    if first_stage_of_job and cfg.train.init_uri:
        return cfg.train.init_uri
    if stage == "vqvae":
        return None
    order = cfg.model_cfg().stages
    prev = order[order.index(stage) - 1]
    return cfg.published_uri(prev)


def published_doc(uri: str) -> dict[str, Any] | None:
    """The ``config.json`` of the published model at ``uri``, or None when there is none."""
    cfg_uri = storage.join(uri, CONFIG_FILE)
    if not storage.exists(cfg_uri):
        return None
    try:
        return json.loads(storage.read_bytes(cfg_uri))
    except (OSError, ValueError):
        return None


def publish_dir(local_dir: str | os.PathLike, uri: str) -> str:
    """Upload a published model directory to ``uri``: weights first, ``config.json`` last.

    Readers look for ``config.json``; writing it last means they never see a config whose weights
    are still being written. Each file is itself written atomically (:func:`storage.write_bytes`).
    """
    local = Path(local_dir)
    for name in sorted(p.name for p in local.iterdir() if p.is_file() and p.name != CONFIG_FILE):
        storage.write_bytes(storage.join(uri, name), (local / name).read_bytes())
    storage.write_bytes(storage.join(uri, CONFIG_FILE), (local / CONFIG_FILE).read_bytes())
    return uri


def train_pipeline(cfg: PipelineConfig, stages: Sequence[str] | None = None,
                   echo: Callable[[str], None] = print) -> PipelineResult:
    """Run the training pipeline (every stage of ``cfg.stages()``, or ``stages``).

    Args:
        cfg: the pipeline config (resolved here: storage paths, tracking URI, demo data).
        stages: a subset of the family's stages (e.g. ``["var"]`` for ``--stage var``).
        echo: where progress lines go (the driver's stdout).
    Returns:
        :class:`PipelineResult`: per stage, its published URI and final metrics; the registered model.
    Raises:
        ConfigError: an unknown stage; FileNotFoundError: no training data, or a missing previous stage.
    """
    from hsivar_platform.data import resolve_splits

    cfg = cfg.resolved()
    run_stages = check_stages(stages, cfg.model_cfg().stages) or list(cfg.stages())
    config_uri = storage.join(cfg.run_uri(), "pipeline.yaml")
    storage.write_bytes(config_uri, cfg.to_yaml().encode())
    echo(f"[hsivar] run {cfg.run.name}: resolved config in {config_uri}")
    echo(f"[hsivar] checkpoints under {cfg.checkpoint_root()}, published weights at "
         f"{storage.join(cfg.run_uri(), '<stage>', 'latest')}, work dir {cfg.run.work_dir}")
    ray_runtime.init(cfg.ray.address, num_cpus=cfg.ray.num_cpus, object_store_mb=cfg.ray.object_store_mb,
                     log_dir=Path(cfg.run.work_dir) / "logs" if cfg.ray.logs_to_file else None)
    splits = resolve_splits(cfg.data, cfg.run.work_dir, cfg.model.bands)
    echo(f"[hsivar] data: train {splits.train}  val {splits.val}  test {splits.test}")

    tracker = None
    if cfg.tracking.enabled:
        from hsivar_platform.tracking import PipelineTracker

        tracker = PipelineTracker(cfg.tracking_uri(), cfg.tracking.experiment, cfg.run.name,
                                  cfg.tracking.artifact_location)
        parent = tracker.logger()
        parent.params(cfg.flat())
        parent.set_tags({"hsivar.preset": cfg.model.preset, "hsivar.storage": cfg.run_uri(),
                         "hsivar.data": splits.train})
        parent.text(cfg.to_yaml(), "config/pipeline.yaml")
        parent.text(cfg.model_cfg().model_dump_json(indent=2), "config/model.json")
        echo(f"[hsivar] MLflow {cfg.tracking_uri()} experiment {cfg.tracking.experiment!r} "
             f"parent run {tracker.parent_id}")

    result = PipelineResult(cfg, [], tracker.parent_id if tracker else None)
    try:
        for i, stage in enumerate(run_stages):
            res = run_stage(cfg, stage, splits, init_uri=stage_init_uri(cfg, stage, i == 0), tracker=tracker,
                            echo=echo)
            result.stages.append(res)
            if not res.completed:
                echo(f"[hsivar] stage {stage} stopped at step {res.step} (train.stop_after); rerun with "
                     f"run.name={cfg.run.name} to resume from the checkpoint")
                break
        reg_name = cfg.registered_model_name()
        last = result.stages[-1] if result.stages else None
        if (tracker and reg_name and last and last.stage == "decoder" and last.completed and not last.skipped
                and last.mlflow_run_id):
            version = tracker.register(reg_name, last.mlflow_run_id,
                                       tags={"run_name": cfg.run.name, "published_uri": last.published_uri})
            result.registered_model = f"models:/{reg_name}/{version}"
            tracker.logger().set_tags({"hsivar.registered_model": result.registered_model})
            echo(f"[hsivar] registered {result.registered_model}")
    except BaseException:
        if tracker:
            tracker.finish(status="FAILED")
        raise
    if tracker:
        tracker.finish(status="FINISHED" if result.completed else "KILLED")
    echo(f"[hsivar] done: {', '.join(f'{s.stage}={s.published_uri}' for s in result.stages if s.completed)}")
    return result


def _datasets(cfg: PipelineConfig, splits: Any, stage: str) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """The stage's data: the streaming ``train`` Ray dataset (with first estimates when the stage reads them,
    :func:`hsivar.training.needs_estimate`) and the seeded validation protocol's (cube, case) rows, which rank 0
    reads and degrades itself (:func:`hsivar_platform.train.validate.val_examples`); → (datasets, number of
    training files, validation rows)."""
    from hsivar.degrade import protocol_cases
    from hsivar.training import needs_estimate
    from hsivar_platform.data import list_cubes, protocol_rows, training_dataset

    mcfg = cfg.model_cfg()
    tile = mcfg.vqvae.image_size
    files = list_cubes(splits.train)
    datasets = {"train": training_dataset(files, cfg.data, bands=mcfg.bands, tile=tile, tasks=mcfg.dag.tasks,
                                          estimate=needs_estimate(mcfg, stage))}  # type: ignore[arg-type]
    val_rows: list[dict[str, Any]] = []
    if splits.val and cfg.val.max_cubes > 0:
        val_files = list_cubes(splits.val)[: cfg.val.max_cubes]
        val_rows = protocol_rows(val_files, protocol_cases(cfg.val_levels(stage), mcfg.dag.tasks))
    return datasets, len(files), val_rows


def _trainer(cfg: PipelineConfig, stage: str, datasets: dict[str, Any], loop_config: dict[str, Any]) -> Any:
    """The stage's ``TorchTrainer``: scaling, checkpoint storage (local or S3), failure policy, datasets."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {})}
    if storage.is_remote(cfg.checkpoint_root()):
        fs, path = storage.pyarrow_filesystem(cfg.checkpoint_root())
    else:
        fs, path = None, str(Path(cfg.checkpoint_root().removeprefix("file://")).absolute())
    trainer_cls = TorchTrainer if cfg.ray.placement_group_cleaner else _make_trainer_class()
    return trainer_cls(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=stage, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            # the driver's storage and tracking endpoints and S3 timeouts (ray_runtime.FORWARDED_ENV), as for
            # every job's workers: a worker publishes and logs where the driver resolved the locations
            worker_runtime_env=ray_runtime.runtime_env() or {},
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def run_stage(cfg: PipelineConfig, stage: str, splits: Any, *, init_uri: str | None, tracker: Any = None,
              echo: Callable[[str], None] = print) -> StageResult:
    """Train one stage with a ``TorchTrainer`` (``cfg`` must be resolved); → :class:`StageResult`.

    A stage already complete in an earlier job (its published ``config.json`` records the configured
    step count for this run) is skipped. The rank-0 worker's progress is shown by a
    :class:`~hsivar_platform.console.StageProgress` while the stage runs.
    """
    spec = cfg.train.stage(stage)
    pub_uri = cfg.published_uri(stage)
    meta = (published_doc(pub_uri) or {}).get("metadata", {})
    if meta.get("run") == cfg.run.name and meta.get("complete") and meta.get("step") == spec.steps:
        echo(f"[hsivar] stage {stage}: already complete at step {spec.steps} ({pub_uri}); skipping")
        return StageResult(stage, True, spec.steps, pub_uri, meta.get("mlflow_run_id"), skipped=True)
    if init_uri is not None and published_doc(init_uri) is None:
        raise FileNotFoundError(f"stage {stage} starts from {init_uri}, but no published model is there "
                                f"(run the previous stage first, or set train.init_uri)")
    datasets, n_files, val_rows = _datasets(cfg, splits, stage)

    run_id = tracker.stage_run(stage) if tracker else None
    if tracker:
        lg = tracker.logger(run_id)
        lg.params({"stage": stage, **{f"stage.{k}": v for k, v in spec.model_dump(mode="json").items()},
                   "init_uri": init_uri, "published_uri": pub_uri, "train_files": n_files,
                   "num_workers": cfg.scaling.num_workers})
        lg.text(cfg.to_yaml(), "config/pipeline.yaml")

    echo(f"[hsivar] stage {stage}: {spec.steps} steps × {cfg.scaling.num_workers} worker(s) × batch "
         f"{spec.batch_size or cfg.data.batch_size}; {n_files} training files; checkpoints in "
         f"{cfg.checkpoint_root()}/{stage}")
    t0 = time.perf_counter()
    try:
        with StageProgress(stage, spec.steps, echo) as progress, pumping(progress) as queue:
            trainer = _trainer(cfg, stage, datasets, {
                "pipeline": cfg.model_dump(mode="json"), "stage": stage, "init_uri": init_uri,
                "published_uri": pub_uri, "mlflow_run_id": run_id, "progress": queue, "val_rows": val_rows})
            result = trainer.fit()
    except BaseException:
        if tracker and run_id:
            tracker.finish(run_id, "FAILED")
        raise
    metrics = dict(result.metrics or {})
    step = int(metrics.get("step", 0))
    completed = bool(metrics.get("complete", step >= spec.steps))
    if tracker and run_id:
        tracker.finish(run_id, "FINISHED" if completed else "KILLED")
    echo(f"[hsivar] stage {stage} {'finished' if completed else 'stopped'} at step {step} in "
         f"{time.perf_counter() - t0:.0f} s" + (f"; published {pub_uri}" if completed else ""))
    return StageResult(stage, completed, step, pub_uri if completed else None, run_id, metrics)


def _make_trainer_class() -> type:
    """The ``TorchTrainer`` subclass below (built on first use: ray is imported lazily)."""
    from ray.train.torch import TorchTrainer

    class TorchTrainerWithoutPGCleaner(TorchTrainer):
        """``TorchTrainer`` without Ray Train V2's detached placement-group cleaner.

        The cleaner polls the State API for the controller actor and treats a *missing* answer as
        "controller dead", removing the live placement group (ray-project/ray #65447 review, #62753).
        On a loaded 2-core machine that happens often enough to restart healthy stages; the cleaner
        only matters when the controller dies ungracefully, which ``ray.placement_group_cleaner:
        true`` brings back.
        """

        def _create_default_callbacks(self) -> list:
            from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, PlacementGroupCleanerCallback)]

    return TorchTrainerWithoutPGCleaner

