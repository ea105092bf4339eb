"""Ray Train: the three HSI-VAR stages, one ``TorchTrainer`` each, resumable, tracked in MLflow.

``train_pipeline(cfg)`` runs ``cfg.train.stages`` in order (vqvae → var → decoder). Each stage:

* streams training examples from :func:`hsivar_platform.data.training_dataset` into every worker
  (``get_dataset_shard("train").iter_torch_batches``) and the seeded validation protocol into rank 0;
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

Rank 0 alone prints, logs metrics (loss, lr, per-scale token accuracy, per-scale codebook usage,
validation PSNR/SSIM/SAM per task family with true autoregressive decoding), PNG panels and the
published weights into the stage's nested MLflow run; the driver registers the decoder stage's model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hsivar.config import ModelConfig
from hsivar.metrics import evaluate, false_colour
from hsivar.models.hsivar import HSIVAR, to_model_range
from hsivar.publish import CONFIG_FILE, WEIGHTS_FILE, load_published, save_published
from hsivar.tasks import TASKS
from hsivar.training import STAGES, Batch, param_groups, prepare_stage, stage_loss
from hsivar_platform import storage
from hsivar_platform.pipeline_config import ConfigError, PipelineConfig, check_stages, load_config, split_dotted_args

log = logging.getLogger(__name__)

CKPT_WEIGHTS = "model.safetensors"
CKPT_STATE = "train_state.pt"
CKPT_CONFIG = "pipeline_config.json"
CKPT_EMA = "ema.safetensors"


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


# ============================================================================================ driver


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


def ensure_ray(cfg: PipelineConfig) -> None:
    """Connect to Ray: ``ray.address`` or ``$RAY_ADDRESS`` when given (a cluster, or inside ``ray job
    submit``), else start a local Ray with more logical CPUs than cores (2 train workers plus Ray
    Data tasks on a 2-core laptop) and a capped object store."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    os.environ.setdefault("RAY_ACCEPT_CLOUD_OBJECT_STORE_MEMORY_LIMIT", "1")
    ray.init(address="local", num_cpus=cfg.ray.num_cpus or max(4, 2 * (os.cpu_count() or 1)),
             object_store_memory=cfg.ray.object_store_mb * 1024**2, include_dashboard=False)


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def stage_init_uri(cfg: PipelineConfig, stage: str, first_stage_of_job: bool) -> str | None:
    """The published weights a stage starts from (see ``train.init_uri``), or None for a fresh model."""
    if first_stage_of_job and cfg.train.init_uri:
        return cfg.train.init_uri
    if stage == "vqvae":
        return None
    prev = STAGES[STAGES.index(stage) - 1]
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
    """Run the training pipeline (every stage of ``cfg.train.stages``, or ``stages``).

    Args:
        cfg: the pipeline config (resolved here: storage paths, tracking URI, demo data).
        stages: a subset of the configured stages (e.g. ``["var"]`` for ``--stage var``).
        echo: where progress lines go (the driver's stdout).
    Returns:
        :class:`PipelineResult`: per stage, its published URI and final metrics; the registered model.
    Raises:
        ConfigError: an unknown stage; FileNotFoundError: no training data, or a missing previous stage.
    """
    from hsivar_platform.data import resolve_splits

    cfg = cfg.resolved()
    run_stages = check_stages(stages) or list(cfg.train.stages)
    echo("[hsivar] resolved config:\n" + cfg.to_yaml())
    ensure_ray(cfg)
    _quiet_ray_data()
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


def run_stage(cfg: PipelineConfig, stage: str, splits: Any, *, init_uri: str | None, tracker: Any = None,
              echo: Callable[[str], None] = print) -> StageResult:
    """Train one stage with a ``TorchTrainer`` (``cfg`` must be resolved); → :class:`StageResult`.

    A stage already complete in an earlier job (its published ``config.json`` records the configured
    step count for this run) is skipped.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hsivar_platform.data import list_cubes, protocol_cases, protocol_dataset, training_dataset

    spec = cfg.train.stage(stage)
    pub_uri = cfg.published_uri(stage)
    doc = published_doc(pub_uri)
    meta = (doc or {}).get("metadata", {})
    if meta.get("run") == cfg.run.name and meta.get("complete") and meta.get("step") == spec.steps:
        echo(f"[hsivar] stage {stage}: already complete at step {spec.steps} ({pub_uri}); skipping")
        return StageResult(stage, True, spec.steps, pub_uri, meta.get("mlflow_run_id"), skipped=True)
    if init_uri is not None and published_doc(init_uri) is None:
        raise FileNotFoundError(f"stage {stage} starts from {init_uri}, but no published model is there "
                                f"(run the previous stage first, or set train.init_uri)")

    mcfg = cfg.model_cfg()
    tile = mcfg.vqvae.image_size
    files = list_cubes(splits.train, cfg.data.suffixes)
    datasets = {"train": training_dataset(files, cfg.data, bands=mcfg.bands, tile=tile)}
    if splits.val and cfg.val.max_cubes > 0:
        val_files = list_cubes(splits.val, cfg.data.suffixes)[: cfg.val.max_cubes]
        datasets["val"] = protocol_dataset(val_files, protocol_cases(cfg.val.levels), bands=mcfg.bands, crop=tile,
                                           norm_window=cfg.data.window)

    run_id = tracker.stage_run(stage) if tracker else None
    if tracker:
        lg = tracker.logger(run_id)
        lg.params({"stage": stage, **{f"stage.{k}": v for k, v in spec.model_dump(mode="json").items()},
                   "init_uri": init_uri, "published_uri": pub_uri, "train_files": len(files),
                   "num_workers": cfg.scaling.num_workers})
        lg.text(cfg.to_yaml(), "config/pipeline.yaml")

    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {})}
    if storage.is_remote(cfg.checkpoint_root()):
        fs, path = storage.pyarrow_filesystem(cfg.checkpoint_root())
    else:
        fs, path = None, str(Path(cfg.checkpoint_root().removeprefix("file://")).absolute())
    trainer_cls = TorchTrainer if cfg.ray.placement_group_cleaner else _make_trainer_class()
    trainer = trainer_cls(
        train_loop_per_worker,
        train_loop_config={"pipeline": cfg.model_dump(mode="json"), "stage": stage, "init_uri": init_uri,
                           "published_uri": pub_uri, "mlflow_run_id": run_id},
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=stage, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    echo(f"[hsivar] stage {stage}: {spec.steps} steps × {sc.num_workers} worker(s) × batch "
         f"{spec.batch_size or cfg.data.batch_size}; {len(files)} training files; checkpoints in "
         f"{cfg.checkpoint_root()}/{stage}")
    t0 = time.perf_counter()
    try:
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


# ============================================================================================ workers


class StageStep(torch.nn.Module):
    """The model plus one stage's loss as a ``forward`` (what DDP wraps and synchronises).

    ``forward(hq, lq, task_weights)`` with (B, C, S, S) cubes in [0, 1] and (B, 6) weights → (loss,
    logs dict of floats).
    """

    def __init__(self, model: HSIVAR, stage: str, generator: torch.Generator) -> None:
        super().__init__()
        self.model, self.stage, self.generator = model, stage, generator

    def forward(self, hq: torch.Tensor, lq: torch.Tensor, task_weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
        res = stage_loss(self.model, self.stage, Batch(hq, lq, task_weights), self.generator)  # type: ignore[arg-type]
        return res.loss, res.logs


class EMA:
    """Exponential moving average of a list of parameters (the stage's trainable ones)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.params, self.decay = list(params), decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow ← decay·shadow + (1 − decay)·param."""
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Shadow tensors by position ("0", "1", …)."""
        return {str(i): s.detach().cpu().contiguous() for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the shadows saved by :meth:`state_dict`."""
        for i, s in enumerate(self.shadow):
            s.copy_(state[str(i)])

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily swap the EMA weights into the parameters."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(steps - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def load_init_weights(model: HSIVAR, uri: str) -> dict[str, Any]:
    """Load published weights (local, file://, s3:// directory) into ``model``; → the published doc.

    Raises:
        ValueError: the published model's config differs from ``model.cfg`` (naming the URI).
    """
    with tempfile.TemporaryDirectory(prefix="hsivar-init-") as tmp:
        local = storage.download_dir(uri, tmp)
        src, doc = load_published(local)
    if src.cfg.model_dump() != model.cfg.model_dump():
        a, b = src.cfg.model_dump(), model.cfg.model_dump()
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"{uri}: published model config differs from the pipeline's in {', '.join(diff)}")
    model.load_state_dict(src.state_dict(), strict=True)
    return doc


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, *, rank: int, model: HSIVAR, opt: torch.optim.Optimizer,
                    sched: Any, ema: EMA | None, step: int, data_pos: dict[str, int], gen: torch.Generator,
                    pipeline: dict[str, Any]) -> None:
    """Write this rank's part of a checkpoint into ``directory`` (Ray merges the ranks' files).

    Rank 0: model weights (safetensors), optimizer/scheduler/step/data position (tensors and primitives
    only), EMA shadows, the resolved pipeline config. Every rank: its RNG state.
    """
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(gen), directory / _rng_file(rank))
    if rank != 0:
        return
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(directory / CKPT_WEIGHTS))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "data": data_pos},
               directory / CKPT_STATE)
    if ema is not None:
        save_file(ema.state_dict(), str(directory / CKPT_EMA))
    (directory / CKPT_CONFIG).write_text(json.dumps(pipeline, indent=1))


def load_checkpoint(directory: Path, *, rank: int, model: HSIVAR, opt: torch.optim.Optimizer, sched: Any,
                    ema: EMA | None, gen: torch.Generator) -> tuple[int, dict[str, int]]:
    """Restore a checkpoint written by :func:`save_checkpoint` (nothing is unpickled beyond tensors and
    primitives: ``torch.load(weights_only=True)``); → (step, data position)."""
    model.load_state_dict(load_file(str(directory / CKPT_WEIGHTS)), strict=True)
    state = torch.load(directory / CKPT_STATE, map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None and (directory / CKPT_EMA).is_file():
        ema.load_state_dict(load_file(str(directory / CKPT_EMA)))
    rng = directory / _rng_file(rank)
    if rng.is_file():
        _set_rng_state(torch.load(rng, map_location="cpu", weights_only=True), gen)
    return int(state["step"]), dict(state.get("data", {}))


def _val_examples(it: Any, batch_size: int) -> list[dict[str, np.ndarray]]:
    return [b for b in it.iter_batches(batch_size=batch_size, batch_format="numpy") if len(b.get("uri", []))]


def _panel(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], wavelengths: Any, scale: int = 4) -> np.ndarray:
    """(degraded, restored, clean) cubes per row → one (H·rows, 3·W, 3) false-colour image, ×scale."""
    lines = []
    for cubes in rows:
        tiles = [false_colour(c, wavelengths).transpose(1, 2, 0) for c in cubes]
        pad = np.ones((tiles[0].shape[0], 2, 3), np.float32)
        lines.append(np.concatenate([tiles[0], pad, tiles[1], pad, tiles[2]], axis=1))
        lines.append(np.ones((2, lines[-1].shape[1], 3), np.float32))
    img = np.concatenate(lines[:-1], axis=0)
    return img.repeat(scale, 0).repeat(scale, 1)


@torch.no_grad()
def validate(model: HSIVAR, stage: str, examples: list[dict[str, np.ndarray]], *, task_mode: str, device: torch.device,
             autocast: Callable[[], Any]) -> tuple[dict[str, float], np.ndarray | None]:
    """Validation on the seeded protocol examples (rank 0).

    Stage ``vqvae``: reconstruction of the clean crops (``val/recon/{psnr,ssim,sam}``). Later stages:
    true autoregressive restoration (greedy, KV cache; ``task_mode`` "auto" = the task classifier,
    "oracle" = true weights) → ``val/<task>/{psnr,ssim,sam}`` averaged over cubes and levels, the
    degraded input's ``val/<task>/psnr_degraded`` and the means over families ``val/mean/...``.
    Returns (metrics, a false-colour panel image (H, W, 3) degraded | restored | clean per family).
    """
    was = model.training
    model.eval()
    per: dict[str, list[dict[str, float]]] = {}
    panel_rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    seen: set[str] = set()
    try:
        for b in examples:
            clean = torch.from_numpy(np.ascontiguousarray(b["clean"])).float().to(device)
            lq = torch.from_numpy(np.ascontiguousarray(b["degraded"])).float().to(device)
            if stage == "vqvae":
                keep = []
                for i, u in enumerate(b["uri"]):  # one reconstruction per cube (rows repeat it per case)
                    if str(u) not in seen:
                        seen.add(str(u))
                        keep.append(i)
                if not keep:
                    continue
                with autocast():
                    rec = model.vqvae(to_model_range(clean[keep])).reconstruction
                out = ((rec.float() + 1) / 2).clamp(0, 1).cpu().numpy()
                for j, i in enumerate(keep):
                    m = evaluate(out[j], b["clean"][i]).as_dict()
                    per.setdefault("recon", []).append(m)
                    panel_rows.setdefault(f"recon{len(panel_rows)}", (b["clean"][i], out[j], b["clean"][i]))
                continue
            task = "auto" if task_mode == "auto" else torch.from_numpy(b["task_weights"]).float().to(device)
            with autocast():
                out = model.restore(lq, task=task).cube.float().cpu().numpy()
            for i in range(len(out)):
                t = str(b["task"][i])
                m = evaluate(out[i], b["clean"][i], b["band_mask"][i], ergas_ratio=float(b["ergas_ratio"][i]))
                d = evaluate(np.clip(b["degraded"][i], 0, 1), b["clean"][i], b["band_mask"][i],
                             ergas_ratio=float(b["ergas_ratio"][i]))
                per.setdefault(t, []).append({**m.as_dict(), "psnr_degraded": d.psnr, "ssim_degraded": d.ssim})
                panel_rows.setdefault(t, (b["degraded"][i], out[i], b["clean"][i]))
    finally:
        model.train(was)
    metrics: dict[str, float] = {}
    for t, rows in per.items():
        for k in rows[0]:
            metrics[f"val/{t}/{k}"] = float(np.mean([r[k] for r in rows]))
    fams = [t for t in per if t in TASKS]
    if fams:
        for k in ("psnr", "ssim", "sam", "psnr_degraded"):
            metrics[f"val/mean/{k}"] = float(np.mean([metrics[f"val/{t}/{k}"] for t in fams]))
    order = [t for t in TASKS if t in panel_rows] or list(panel_rows)[:4]
    panel = _panel([panel_rows[t] for t in order], model.cfg.wavelengths) if order else None
    return metrics, panel


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: one stage of the pipeline (see the module docstring)."""
    import ray.train
    import ray.train.torch as rtt

    cfg = PipelineConfig.model_validate(config["pipeline"])
    stage: str = config["stage"]
    spec = cfg.train.stage(stage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    device = rtt.get_device()
    use_bf16 = device.type == "cuda" and cfg.scaling.bf16

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    def say(msg: str) -> None:
        # A logger, not print: Ray Train's print patch would emit every line twice on the driver.
        if rank == 0:
            log.info("[train %s] %s", stage, msg)

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    mcfg: ModelConfig = cfg.model_cfg()
    model = HSIVAR(mcfg)
    if config.get("init_uri"):
        load_init_weights(model, config["init_uri"])
    params = prepare_stage(model, stage)  # type: ignore[arg-type]
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, params, spec.lr, spec.head_lr), lr=spec.lr, betas=spec.betas,
                            weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, spec.steps, spec.warmup_steps, spec.min_lr_ratio))
    ema = EMA(params, spec.ema_decay) if spec.ema_decay else None
    gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank)

    step, data_pos = 0, {"epoch": 0, "batches": 0}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            step, data_pos = load_checkpoint(Path(d), rank=rank, model=model, opt=opt, sched=sched, ema=ema, gen=gen)
        say(f"resumed from checkpoint at step {step}")
    start_step = step
    target = spec.steps if cfg.train.stop_after is None else min(spec.steps, start_step + cfg.train.stop_after)

    net = rtt.prepare_model(StageStep(model, stage, gen), move_to_device=False,
                            parallel_strategy="ddp" if world > 1 else None,
                            parallel_strategy_kwargs={"find_unused_parameters": True})
    logger = None
    if rank == 0 and config.get("mlflow_run_id") and cfg.tracking.enabled:
        from hsivar_platform.tracking import RunLogger

        logger = RunLogger(cfg.tracking_uri(), config["mlflow_run_id"])
        logger.metrics({"resumed_from_step": start_step}, step=start_step)

    val_it = ray.train.get_dataset_shard("val") if rank == 0 and cfg.val.max_cubes > 0 else None
    val_cache: list[dict[str, np.ndarray]] | None = None
    last_val: dict[str, float] = {}

    def run_validation(at: int) -> dict[str, float]:
        nonlocal val_cache
        if val_it is None:
            return {}
        if val_cache is None:
            val_cache = _val_examples(val_it, cfg.val.batch_size)
        with ema.applied() if ema else nullcontext():
            metrics, panel = validate(model, stage, val_cache, task_mode=cfg.val.task, device=device,
                                      autocast=autocast)
        if logger:
            logger.metrics(metrics, step=at)
            if panel is not None and cfg.val.panels:
                logger.png(panel, f"panels/{stage}_step{at:06d}.png")
        shown = {k.removeprefix("val/"): round(v, 3) for k, v in metrics.items() if k.endswith("/psnr")}
        say(f"validation at step {at}: PSNR {shown}")
        return metrics

    def checkpoint(at: int, metrics: dict[str, Any], complete: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="hsivar-ckpt-") as d:
            save_checkpoint(Path(d), rank=rank, model=model, opt=opt, sched=sched, ema=ema, step=at,
                            data_pos=data_pos, gen=gen, pipeline=config["pipeline"])
            ray.train.report({**metrics, "step": at, "complete": complete},
                             checkpoint=ray.train.Checkpoint.from_directory(d),
                             checkpoint_dir_name=f"checkpoint_step{at:07d}")

    batch_size = spec.batch_size or cfg.data.batch_size
    tokens_per_step = batch_size * mcfg.vqvae.latent_size**2 * world
    shard = ray.train.get_dataset_shard("train")
    model.train()
    last_logs: dict[str, float] = {}
    t_last, steps_since = time.perf_counter(), 0
    say(f"steps {start_step + 1}..{target} of {spec.steps}, world size {world}, device {device}")
    while step < target:
        got = 0
        for b in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, dtypes=torch.float32,
                                          local_shuffle_buffer_size=cfg.data.shuffle_buffer or None):
            got += 1
            data_pos["batches"] += 1
            if cfg.train.fail_at_step and rank == 0 and step + 1 == cfg.train.fail_at_step \
                    and _claim_injected_failure(cfg, stage):
                raise RuntimeError(f"injected failure at step {step + 1} (train.fail_at_step)")
            hq, lq, w = (b[k].to(device, non_blocking=True) for k in ("hq", "lq", "task_weights"))
            with autocast():
                loss, logs = net(hq, lq, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, spec.grad_clip if spec.grad_clip else float("inf"))
            opt.step()
            sched.step()
            if ema:
                ema.update()
            step += 1
            steps_since += 1
            last_logs = {**logs, "loss": float(loss.detach()), "lr": float(sched.get_last_lr()[0]),
                         "grad_norm": float(gnorm), "epoch": data_pos["epoch"]}
            if rank == 0 and (step % cfg.train.log_every == 0 or step == start_step + 1 or step == target):
                dt = (time.perf_counter() - t_last) / max(steps_since, 1)
                t_last, steps_since = time.perf_counter(), 0
                last_logs |= {"seconds_per_step": dt, "examples_per_second": batch_size * world / max(dt, 1e-9)}
                if stage == "vqvae":
                    for k, u in enumerate(model.vqvae.quantize.usage_per_scale(tokens_per_step)):
                        last_logs[f"codebook_usage_s{k}"] = u
                if logger:
                    logger.metrics(last_logs, step=step)
                keys = ("loss", "psnr", "ce", "acc", "refiner_l1", "task_acc")
                say(f"step {step}/{spec.steps} " + " ".join(f"{k} {last_logs[k]:.4f}" for k in keys if k in last_logs)
                    + f" ({dt:.2f} s/step)")
            if cfg.train.val_every and step % cfg.train.val_every == 0 and step < spec.steps:
                last_val = run_validation(step)
            if step % cfg.train.checkpoint_every == 0 and step < target:
                checkpoint(step, {"loss": last_logs["loss"]}, complete=False)
            if step >= target:
                break
        if step < target:
            if got == 0:
                raise RuntimeError("the training data yields no full batch per worker: add cubes, lower "
                                   "data.batch_size or raise data.crops_per_window")
            data_pos["epoch"] += 1
            data_pos["batches"] = 0

    complete = step >= spec.steps
    if complete:
        last_val = run_validation(step) or last_val
    final = {"loss": last_logs.get("loss", float("nan")), **last_val}
    if step > start_step:
        checkpoint(step, final, complete=complete)
    else:  # nothing trained in this run (the checkpoint already holds this step): report without one
        ray.train.report({**final, "step": step, "complete": complete})
    if complete and rank == 0:
        _publish(cfg, stage, model, ema, step, config, logger, last_val)
        say(f"published {config['published_uri']}")


def _claim_injected_failure(cfg: PipelineConfig, stage: str) -> bool:
    """True the first time only: a marker under the run's storage remembers that the failure happened."""
    marker = storage.join(cfg.run_uri(), f"_injected_failure_{stage}")
    if storage.exists(marker):
        return False
    storage.write_bytes(marker, b"train.fail_at_step fired\n")
    return True


def _publish(cfg: PipelineConfig, stage: str, model: HSIVAR, ema: EMA | None, step: int, config: dict[str, Any],
             logger: Any, val: dict[str, float]) -> None:
    meta = {"run": cfg.run.name, "stage": stage, "step": step, "complete": True,
            "mlflow_run_id": config.get("mlflow_run_id"), "init_uri": config.get("init_uri"),
            "validation": {k: round(v, 4) for k, v in val.items()}}
    with tempfile.TemporaryDirectory(prefix="hsivar-pub-") as d, (ema.applied() if ema else nullcontext()):
        save_published(model, d, stage=stage, metadata=meta)
        publish_dir(d, config["published_uri"])
        if logger:
            logger.published_model(d)
            logger.set_tags({"hsivar.published_uri": config["published_uri"]})


# ============================================================================================ CLI


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``jobs/train_var.py`` (any other ``--dotted.key VALUE`` sets a config field)."""
    p = argparse.ArgumentParser(
        prog="train_var.py", description="Train HSI-VAR on Ray: VQ-VAE → transformer + condition + DAG + refiner → "
        "decoder + SSA. Unknown options --a.b.c VALUE set config fields.")
    p.add_argument("--config", help="pipeline YAML (configs/tiny.yaml, small.yaml, paper.yaml)")
    p.add_argument("--stage", action="append", choices=STAGES, help="run only this stage (repeatable)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.vqvae.steps=5 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jobs/train_var.py``; → exit status (2 for a config error)."""
    args, extra = build_parser().parse_known_args(argv)
    try:
        cfg = load_config(args.config, [*args.sets, *split_dotted_args(extra)])
    except ConfigError as e:
        print(f"config error:\n{e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.resolved().to_yaml())
        return 0
    result = train_pipeline(cfg, stages=args.stage)
    summary = {"completed": result.completed, "stages": {s.stage: s.published_uri for s in result.stages},
               "registered_model": result.registered_model, "mlflow_parent_run_id": result.mlflow_parent_run_id}
    print("[hsivar] result " + json.dumps(summary))
    return 0


__all__ = [
    "EMA", "PipelineResult", "StageResult", "StageStep", "build_parser", "ensure_ray",
    "load_checkpoint", "load_init_weights", "lr_factor", "main", "publish_dir", "published_doc", "run_stage",
    "save_checkpoint", "stage_init_uri", "train_loop_per_worker", "train_pipeline", "validate", "WEIGHTS_FILE",
]
