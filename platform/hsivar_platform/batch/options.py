"""Options and report of a batch restoration (the ``hsivar restore`` / ``jobs/restore_batch.py`` flags)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hsivar.tasks import TaskArg, parse_task


class BatchOptions(BaseModel):
    """What to restore, with which model, and how the Ray Data job is sized."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="input prefix (local folder, file://, s3://), a single cube file, or a STAC "
                       "Item / Collection / ItemCollection JSON whose assets are restored")
    assets: list[str] | None = Field(None, description="with a STAC input: the asset keys to restore from every "
                                     "item (default: the assets with the role 'data')")
    output: str = Field(description="output prefix; receives the outputs and _manifest.parquet")
    model: str = Field(description="published model: local dir, s3:// prefix, models:/NAME/VERSION or @ALIAS")
    task: str = Field("auto", description="auto, a task family, or a mixture gaussian:0.7,blur:0.3")
    tile: int | None = Field(None, description="tile side; must equal the model's (default: the model's)")
    overlap: int | None = Field(None, ge=0, description="tile overlap in pixels (default: tile/4)")
    samples: int = Field(1, ge=1, description="decodings per cube; >1 samples with top-p 0.9")
    seed: int = Field(0, description="seed of the first sample")
    value_range: tuple[float, float] | None = Field(
        None, description="(lo, hi) input units mapped to [0, 1], e.g. 0 1 for reflectance; default each cube's "
        "own min–max (noise stretches it: pass the range when it is known), an image's dtype range (0 255)")
    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    compiled: bool = Field(False, description="on a GPU, replay each greedy restoration from a CUDA graph (each "
                           "model actor records one per batch size); on a CPU, decode through compiled steps")
    uncertainty: bool = Field(False, description="write <stem>.std<ext>: the calibrated error bar of a calibrated "
                                "model, else the std over samples (needs samples > 1)")
    kept_mask: bool = Field(True, description="write <stem>.kept<ext>, uint8 1 where an entry was kept exactly as "
                            "observed and 0 where it was synthesised (only for cubes with exactly observed entries)")
    output_dtype: Literal["source", "float32"] = Field("source", description="dtype of the outputs")
    stac: bool = Field(True, description="write a STAC Item beside every output (<name>.stac.json) and "
                       "<output>/collection.json linking them")
    actors: int = Field(1, ge=1, description="model actors (the pool's maximum size)")
    min_actors: int | None = Field(None, ge=1, description="smallest pool size (default: actors)")
    gpus_per_actor: float | None = Field(None, ge=0, description="default: 1 when the cluster has GPUs, else 0")
    cpus_per_actor: float = Field(1.0, gt=0)
    memory_per_actor_gb: float = Field(1.0, gt=0, description="memory reserved per model actor (GiB)")
    fused: bool | None = Field(None, description="read, restore and write in the model actors (True), or read and "
                               "write on CPU tasks around them (False); default: fused when the actors have no GPU")
    force: bool = Field(False, description="restore every input again, ignoring the manifest")
    fail_on_error: bool = Field(False, description="exit non-zero when any input failed")
    manifest_interval_s: float = Field(2.0, ge=0, description="least seconds between manifest rewrites")
    progress_interval_s: float = Field(5.0, ge=0, description="least seconds between progress log lines")

    @field_validator("value_range")
    @classmethod
    def _value_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[1] > v[0]:
            raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {v}")
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        parse_task(v)
        return v

    def task_arg(self) -> TaskArg:
        """The parsed task (:func:`hsivar.tasks.parse_task`)."""
        return parse_task(self.task)


def steady_rate(files: int, t_first: float, t_last: float) -> float:
    """Cubes per second once outputs flow: the files after the first over the seconds from the first to the last
    finished file (``time.perf_counter`` instants); 0 with fewer than 2 files."""
    return (files - 1) / (t_last - t_first) if files >= 2 and t_last > t_first else 0.0


@dataclass
class BatchReport:
    """What a run did.

    ``total`` inputs listed; ``ok`` / ``failed`` / ``skipped``: their manifest status after the run;
    ``already_done``: inputs skipped because an earlier run completed them; ``processed``: inputs this
    run went through (restored or failed); ``cubes_per_s``: ``processed`` over the pipeline's time
    (from the start of the Ray Data pipeline); ``steady_cubes_per_s``: the rate once outputs flow (files after the
    first over the time from the first to the last finished file; 0 with fewer than 2); ``failures``: (input
    URI, error) of every failed input;
    ``model``: the model URI the job loaded, pinned (``models:/NAME/latest`` → ``models:/NAME/<version>``);
    ``model_requested``: the URI as given; ``model_version``: the version the model URI resolved to.
    """

    total: int
    ok: int
    failed: int
    skipped: int
    already_done: int
    processed: int
    seconds: float
    cubes_per_s: float
    manifest: str
    steady_cubes_per_s: float = 0.0
    model: str = ""
    model_requested: str = ""
    model_version: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return dataclasses.asdict(self)
