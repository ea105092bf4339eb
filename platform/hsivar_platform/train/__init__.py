"""Training on Ray Train: the driver (:mod:`.driver`), the worker loop (:mod:`.worker`), checkpoints and
schedules (:mod:`.state`), rank-0 validation (:mod:`.validate`) and progress events (:mod:`.progress`)."""

from hsivar_platform.train.driver import PipelineResult, StageResult, run_stage, train_pipeline

__all__ = ["PipelineResult", "StageResult", "run_stage", "train_pipeline"]
