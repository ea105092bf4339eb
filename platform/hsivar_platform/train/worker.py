"""The Ray Train worker of one stage: build the model, resume, step, validate, checkpoint, publish.

Every rank runs :func:`train_loop_per_worker`. It streams training batches from its shard of the
``train`` dataset, optimises :func:`hsivar.training.stage_loss` with DDP (gloo on CPU, NCCL on GPU;
bf16 autocast on CUDA), AdamW, gradient clipping, linear warmup + cosine decay and an optional EMA,
checkpoints every ``train.checkpoint_every`` steps, and at the end of the stage rank 0 publishes the
weights (safetensors + ``config.json``) for the next stage and for serving. Rank 0 alone validates,
logs to the stage's MLflow run and sends progress to the driver.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsivar.calibrate import CalibrationFit, calibrate
from hsivar.models.base import RestorationModel
from hsivar.models.build import build_model
from hsivar.models.patchgan import PatchDiscriminator
from hsivar.publish import save_published
from hsivar.restore import Restorer
from hsivar.training import Batch, param_groups, prepare_stage, stage_critic, stage_loss
from hsivar_platform.pipeline_config import PipelineConfig
from hsivar_platform.train.progress import ProgressReporter
from hsivar_platform.train.state import EMA, load_checkpoint, load_init_weights, lr_factor, save_checkpoint
from hsivar_platform.train.validate import HEADLINE, calibration_examples, val_examples, validate


class StageStep(torch.nn.Module):
    """The model plus one stage's loss as a ``forward`` (what DDP wraps and synchronises).

    ``forward(hq, lq, task_weights, x0, kept)`` with (B, C, S, S) cubes in [0, 1], (B, N) weights, and for
    models with ``first_estimate`` the first estimate and the kept entries (or None) → (loss, logs dict).
    ``critic``: the stage's discriminator (:func:`hsivar.training.stage_critic`), a submodule so that DDP
    synchronises its gradients too.
    """

    def __init__(self, model: RestorationModel, stage: str, generator: torch.Generator,
                 critic: PatchDiscriminator | None = None) -> None:
        """Wrap ``model`` for stage ``stage``; ``generator`` drives the stage's random choices."""
        super().__init__()
        self.model, self.stage, self.generator, self.critic = model, stage, generator, critic

    def forward(self, hq: torch.Tensor, lq: torch.Tensor, task_weights: torch.Tensor,
                x0: torch.Tensor | None = None, kept: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The stage's loss on one batch: hq, lq, x0 (B, C, S, S) in [0, 1], task weights (B, N), kept (B, C, S, S)
        bool → (loss, logs)."""
        batch = Batch(hq, lq, task_weights, x0, kept)
        res = stage_loss(self.model, self.stage, batch, self.generator, self.critic)  # type: ignore[arg-type]
        return res.loss, res.logs


class _StageRun:
    """One worker's run of one stage (built from the ``train_loop_config`` the driver sends)."""

    def __init__(self, config: dict[str, Any]) -> None:
        import ray.train
        import ray.train.torch as rtt

        self.config = config
        self.cfg = PipelineConfig.model_validate(config["pipeline"])
        self.stage: str = config["stage"]
        self.spec = self.cfg.train.stage(self.stage)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if self.cfg.scaling.torch_threads:
            torch.set_num_threads(self.cfg.scaling.torch_threads)
        self.device = rtt.get_device()
        self.bf16 = self.device.type == "cuda" and self.cfg.scaling.bf16
        self.progress = ProgressReporter(config.get("progress"), self.stage, self.rank)

        torch.manual_seed(self.cfg.train.seed)  # identical initial weights on every rank
        self.model = build_model(self.cfg.model_cfg())
        if config.get("init_uri"):
            load_init_weights(self.model, config["init_uri"])
        self.params = prepare_stage(self.model, self.stage)  # type: ignore[arg-type]
        self.model.to(self.device)
        self.critic = stage_critic(self.model, self.stage)  # type: ignore[arg-type]
        spec = self.spec
        self.opt = torch.optim.AdamW(param_groups(self.model, self.params, spec.lr, spec.head_lr, self.critic),
                                     lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, spec.steps, spec.warmup_steps, spec.min_lr_ratio))
        self.ema = EMA(self.params, spec.ema_decay) if spec.ema_decay else None
        self.gen = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.rank)

        self.step, self.data_pos = 0, {"epoch": 0, "batches": 0}
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                self.step, self.data_pos = load_checkpoint(Path(d), rank=self.rank, model=self.model, opt=self.opt,
                                                           sched=self.sched, ema=self.ema, gen=self.gen,
                                                           critic=self.critic)
            self.progress.message(f"resumed from the checkpoint at step {self.step}")
        self.start_step = self.step
        stop_after = self.cfg.train.stop_after
        self.target = spec.steps if stop_after is None else min(spec.steps, self.start_step + stop_after)
        self.net = rtt.prepare_model(StageStep(self.model, self.stage, self.gen, self.critic), move_to_device=False,
                                     parallel_strategy="ddp" if self.world > 1 else None,
                                     parallel_strategy_kwargs={"find_unused_parameters": True})
        self.logger = None
        if self.rank == 0 and config.get("mlflow_run_id") and self.cfg.tracking.enabled:
            from hsivar_platform.tracking import RunLogger

            self.logger = RunLogger(self.cfg.tracking_uri(), config["mlflow_run_id"])
            self.logger.metrics({"resumed_from_step": self.start_step}, step=self.start_step)
        # the seeded validation protocol's (cube, case) rows, read and degraded here on first use (rank 0)
        self.val_rows: list[dict[str, Any]] = (config.get("val_rows") or []) if self.rank == 0 else []
        self.val_cache: list[dict[str, np.ndarray]] | None = None

    def autocast(self) -> Any:
        """bf16 autocast on CUDA (``scaling.bf16``), else a no-op."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def validation(self, at: int, restored: Sequence[np.ndarray] | None = None) -> dict[str, float]:
        """Validate at step ``at`` (rank 0; the EMA weights when on; ``restored``: the examples' restorations when
        already made, see :func:`~hsivar_platform.train.validate.validate`); → ``val/...`` metrics, logged."""
        examples = self.val_examples()
        if not examples:
            return {}
        with self.ema.applied() if self.ema else nullcontext():
            metrics, panel = validate(self.model, self.stage, examples, task_mode=self.cfg.val.task,
                                      device=self.device, bf16=self.bf16, restored=restored)
        if self.logger:
            self.logger.metrics(metrics, step=at)
            if panel is not None and self.cfg.val.panels:
                self.logger.png(panel, f"panels/{self.stage}_step{at:06d}.png")
        for name, label, digits in HEADLINE[self.stage]:
            shown = {k.removeprefix("val/").removesuffix(f"/{name}"): round(v, digits)
                     for k, v in metrics.items() if k.endswith(f"/{name}")}
            if shown:
                self.progress.message(f"validation at step {at}: {label} {shown}")
        return metrics

    def val_examples(self) -> list[dict[str, np.ndarray]]:
        """The validation examples (rank 0; read and degraded on first use, :func:`val_examples`); [] on other ranks
        and without validation cubes."""
        if self.val_cache is None:
            tile = self.model.cfg.vqvae.image_size
            self.val_cache = val_examples(self.val_rows, bands=self.model.cfg.bands, crop=self.cfg.val.crop or tile,
                                          norm_window=self.cfg.data.window, batch_size=self.cfg.val.batch_size) \
                if self.val_rows else []
        return self.val_cache

    def calibrate(self) -> CalibrationFit | None:
        """End of stage decoder (rank 0, ``val.calibrate``): fit the per-family trust in the learned correction (a
        model with a first estimate), the blur width the clean cubes read and the calibrated uncertainty on the
        validation examples (:func:`hsivar.calibrate.calibrate`, the EMA weights when on); the published config
        records them. → the fit (None when not calibrated)."""
        model = self.model
        if self.stage != "decoder" or not self.cfg.val.calibrate:
            return None
        examples = calibration_examples(self.val_examples())
        if not examples:
            return None
        was = model.training
        try:
            with self.ema.applied() if self.ema else nullcontext():
                fit = calibrate(Restorer(model, self.device, bf16=self.bf16), examples)
        finally:
            model.train(was)
        trust = dict(zip(model.dag.tasks, fit.trust))
        if self.logger:
            self.logger.metrics({f"trust/{t}": v for t, v in trust.items()}, step=self.step)
            self.logger.metrics({f"trust/{t}/{which}_{m}": v[k] for t, sc in fit.scores.items()
                                 for which, v in sc.items() for k, m in enumerate(("psnr", "sam"))}, step=self.step)
            self.logger.metrics({f"uncertainty/{t}/{k}": v for t, cov in fit.coverage.items() for k, v in cov.items()
                                 if np.isfinite(v)}, step=self.step)
            self.logger.metrics({"sharp_width": fit.sharp_width, "fit_width_scale": fit.fit_width_scale},
                                step=self.step)  # None (not fitted) is not logged
        for line in fit.report(model.dag.tasks):
            self.progress.message(line)
        if fit.reused:
            self.progress.message(f"the blind restorations fused the oracle pass's decoded tiles for {fit.reused} of "
                                  f"{len(examples)} examples (same tiles and first estimates"
                                  f"{', same task weights' if self.model.token_path_reads_task else ''})")
        self.progress.message("calibrated uncertainty on the validation entries, coverage at 2σ (corr. with "
                              "|error|): " + ", ".join(f"{t} {c['cover_2sigma']:.2f} ({c['std_error_corr']:.2f})"
                                                       for t, c in fit.coverage.items()))
        return fit

    def checkpoint(self, metrics: dict[str, Any], complete: bool) -> None:
        """Save this rank's part of a checkpoint at the current step and report it to Ray Train."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="hsivar-ckpt-") as d:
            save_checkpoint(Path(d), rank=self.rank, model=self.model, opt=self.opt, sched=self.sched, ema=self.ema,
                            step=self.step, data_pos=self.data_pos, gen=self.gen, pipeline=self.config["pipeline"],
                            critic=self.critic)
            ray.train.report({**metrics, "step": self.step, "complete": complete},
                             checkpoint=ray.train.Checkpoint.from_directory(d),
                             checkpoint_dir_name=f"checkpoint_step{self.step:07d}")

    def train_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on batch ``b`` (hq, lq, task_weights; x0 and kept for models with a first
        estimate); → the step's logs."""
        hq, lq, w = (b[k].to(self.device, non_blocking=True) for k in ("hq", "lq", "task_weights"))
        x0 = b["x0"].to(self.device, non_blocking=True) if "x0" in b else None
        kept = b["kept"].to(self.device, non_blocking=True).bool() if "kept" in b else None
        with self.autocast():
            loss, logs = self.net(hq, lq, w, x0, kept)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.spec.grad_clip if self.spec.grad_clip else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.opt.step()
        self.sched.step()
        if self.ema:
            self.ema.update()
        self.step += 1
        return {**logs, "loss": float(loss.detach()), "lr": float(self.sched.get_last_lr()[0]),
                "grad_norm": float(gnorm), "epoch": self.data_pos["epoch"]}

    def run(self) -> None:
        """Train up to the target step, then checkpoint (and on completion validate and publish)."""
        spec = self.spec
        self.model.train()
        threads = torch.get_num_threads()  # scaling.torch_threads: validation, calibration and publishing
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.progress.message(f"steps {self.start_step + 1}..{self.target} of {spec.steps}, world size {self.world}, "
                              f"device {self.device}, {torch.get_num_threads()} torch thread(s)")
        try:
            logs, last_val = self._steps()
        finally:
            torch.set_num_threads(threads)
        self.finish(logs, last_val)

    def _steps(self) -> tuple[dict[str, float], dict[str, float]]:
        """The training loop: passes over the stream until the target step, with the validations of
        ``train.val_every`` and the checkpoints of ``train.checkpoint_every`` on the way. → (the last step's logs,
        the last validation's metrics)."""
        import ray.train

        cfg, spec = self.cfg, self.spec
        batch_size = spec.batch_size or cfg.data.batch_size
        tokens_per_step = batch_size * self.model.cfg.vqvae.latent_size**2 * self.world
        shard = ray.train.get_dataset_shard("train")
        logs: dict[str, float] = {}
        last_val: dict[str, float] = {}
        t_last, steps_since = time.perf_counter(), 0
        while self.step < self.target:
            got = 0
            for b in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, dtypes=torch.float32,
                                              local_shuffle_buffer_size=cfg.data.shuffle_buffer or None):
                got += 1
                self.data_pos["batches"] += 1
                logs = self.train_step(b)
                steps_since += 1
                log_now = self.step % cfg.train.log_every == 0 or self.step == self.start_step + 1 \
                    or self.step == self.target
                if self.rank == 0 and log_now:
                    dt = (time.perf_counter() - t_last) / max(steps_since, 1)
                    t_last, steps_since = time.perf_counter(), 0
                    logs |= {"seconds_per_step": dt, "examples_per_second": batch_size * self.world / max(dt, 1e-9)}
                    if self.stage == "vqvae":
                        for k, u in enumerate(self.model.vqvae.quantize.usage_per_scale(tokens_per_step)):
                            logs[f"codebook_usage_s{k}"] = u
                    if self.logger:
                        self.logger.metrics(logs, step=self.step)
                self.progress.step(self.step, logs, force=log_now)
                if cfg.train.val_every and self.step % cfg.train.val_every == 0 and self.step < spec.steps:
                    last_val = self.validation(self.step)
                if self.step % cfg.train.checkpoint_every == 0 and self.step < self.target:
                    self.checkpoint({"loss": logs["loss"]}, complete=False)
                if self.step >= self.target:
                    break
            if self.step < self.target:
                if got == 0:
                    raise RuntimeError("the training data yields no full batch per worker: add cubes, lower "
                                       "data.batch_size or raise data.crops_per_window")
                self.data_pos["epoch"] += 1
                self.data_pos["batches"] = 0
        return logs, last_val

    def finish(self, logs: dict[str, float], last_val: dict[str, float]) -> None:
        """The final validation, checkpoint and (rank 0, stage complete) publication."""
        import ray.train

        complete = self.step >= self.spec.steps
        if complete:
            fit = self.calibrate()
            # the calibration restored every validation example blind with the final model: score those
            reuse = fit.restored if fit is not None and self.cfg.val.task == "auto" else None
            last_val = self.validation(self.step, reuse) or last_val
        final = {"loss": logs.get("loss", float("nan")), **last_val}
        if self.step > self.start_step:
            self.checkpoint(final, complete=complete)
        else:  # nothing trained in this run (the checkpoint already holds this step): report without one
            ray.train.report({**final, "step": self.step, "complete": complete})
        if complete and self.rank == 0:
            self.publish(last_val)
            self.progress.message(f"published {self.config['published_uri']}")

    def publish(self, val: dict[str, float]) -> None:
        """Publish the (EMA) weights at the stage's published URI (weights first, ``config.json`` last)."""
        from hsivar_platform.train.driver import publish_dir

        meta = {"run": self.cfg.run.name, "stage": self.stage, "step": self.step, "complete": True,
                "mlflow_run_id": self.config.get("mlflow_run_id"), "init_uri": self.config.get("init_uri"),
                "validation": {k: round(v, 4) for k, v in val.items()}}
        ema = self.ema.applied() if self.ema else nullcontext()
        with tempfile.TemporaryDirectory(prefix="hsivar-pub-") as d, ema:
            save_published(self.model, d, stage=self.stage, metadata=meta)
            publish_dir(d, self.config["published_uri"])
            if self.logger:
                self.logger.published_model(d)
                self.logger.set_tags({"hsivar.published_uri": self.config["published_uri"]})


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry point: one stage of the pipeline (see the module docstring).

    ``config``: ``pipeline`` (the resolved :class:`PipelineConfig` as JSON), ``stage``, ``init_uri``,
    ``published_uri``, ``mlflow_run_id`` and ``progress`` (the driver's event queue, or None).
    """
    _StageRun(config).run()
