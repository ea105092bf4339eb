"""Typed configuration of a training pipeline (model, data, stages, scaling, storage, tracking).

A pipeline config is a YAML file (``configs/tiny.yaml`` …) validated into :class:`PipelineConfig`.
Every field can be overridden on the command line with dotted keys, values parsed as YAML::

    python jobs/train_var.py --config configs/tiny.yaml --set train.vqvae.steps=5 --scaling.num_workers 2

Validation errors name the file and the field (``configs/tiny.yaml: train.vqvae.steps: Input should
be greater than 0``). :meth:`PipelineConfig.resolved` fills the derived values (storage paths, the
demo data location, the tracking URI) so that what is printed and logged is exactly what runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hsivar.config import STAGES, Family, ModelConfig, Stage
from hsivar.presets import PRESETS, preset
from hsivar_platform.locations import check_outlives_job, default_work_dir


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in recursively (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → dotted keys (lists and tuples stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out



class ConfigError(ValueError):
    """A pipeline config could not be loaded or validated; the message names the source and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    """Which model to train: a preset, its band count, and field overrides of the preset."""

    preset: str = Field("tiny", description="tiny, small or paper (hsivar.presets.preset)")
    family: Family = Field("hsivar", description="the model family: hsivar or restorevar (hsivar.config.Family)")
    bands: int = Field(31, ge=1, description="spectral bands C of the training cubes")
    override: dict[str, Any] = Field(
        default_factory=dict,
        description="nested fields replacing the preset's, e.g. {transformer: {depth: 4}}",
    )

    @field_validator("preset")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; expected one of {', '.join(PRESETS)}")
        return v

    @model_validator(mode="after")
    def _buildable(self) -> ModelSpec:
        try:
            self.build()
        except ValidationError as e:  # name the override's field, e.g. override.transformer.depth
            msgs = [f"override.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
            raise ValueError("; ".join(msgs)) from None
        return self

    def build(self) -> ModelConfig:
        """The :class:`~hsivar.config.ModelConfig`: the preset with ``override`` merged in (validated)."""
        base = preset(self.preset, bands=self.bands, family=self.family).model_dump()
        return ModelConfig.model_validate(deep_merge(base, self.override))


class DemoData(_Strict):
    """The embedded demo dataset (:func:`hsivar.synth.make_demo_dataset`), generated on first use."""

    n_train: int = Field(16, ge=1)
    n_val: int = Field(2, ge=0)
    n_test: int = Field(4, ge=0)
    size: int = Field(64, ge=8, description="H = W of each cube, pixels")
    format: str = "npy"
    seed: int = 0


class DataSpec(_Strict):
    """Where the clean cubes come from and how training examples are cut from them."""

    source: str = Field(
        "demo",
        description="'demo' or a URI prefix (local path, file://, s3://) of clean cubes; when it holds "
        "train/ (and val/, test/) folders those are the splits, otherwise the whole prefix is training data",
    )
    val: str | None = Field(None, description="validation prefix (default: <source>/val when it exists)")
    test: str | None = Field(None, description="test prefix for evaluation (default: <source>/test)")
    demo: DemoData = DemoData()
    window: int = Field(128, ge=8, description="side of the windows read from a scene, pixels")
    crops_per_window: int = Field(4, ge=1, description="random model-tile crops cut from each window read")
    batch_size: int = Field(8, ge=1, description="training examples per step and worker")
    shuffle_buffer: int = Field(64, ge=0, description="local shuffle buffer of each trainer's iterator (rows)")
    value_range: tuple[float, float] | None = Field(
        None, description="(min, max) of the source units mapped to [0, 1]; default: min-max of each window"
    )
    dihedral: bool = Field(True, description="random rotations by 90° and flips")
    gain: tuple[float, float] | None = Field(
        (0.5, 2.0), description="random brightness gain per crop, log-uniform in (lo, hi) and capped so the "
        "crop stays in [0, 1]: scenes differ in illumination and normalisation, and a model trained on a few "
        "dark scenes otherwise fails on brighter ones. null: off")
    read_concurrency: int | None = Field(
        None, ge=1, description="max parallel tasks of the training stream, each reading a window, cutting its crops, "
        "degrading them and computing their first estimates (Ray Data); null: as many as the cluster's free CPUs. "
        "One worker on a 2-core machine trains faster with 1: more tasks at once take the trainer's core "
        "(docs/experiments.md)")

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.value_range is not None and not self.value_range[1] > self.value_range[0]:
            raise ValueError(f"value_range must be (min, max) with max > min, got {self.value_range}")
        if self.gain is not None and not 0 < self.gain[0] <= self.gain[1]:
            raise ValueError(f"gain must be (lo, hi) with 0 < lo <= hi, got {self.gain}")
        return self


class StageSpec(_Strict):
    """Optimisation of one stage: AdamW with linear warmup then cosine decay to ``min_lr_ratio·lr``."""

    steps: int = Field(..., ge=1, description="optimizer steps of this stage")
    lr: float = Field(..., gt=0)
    head_lr: float | None = Field(None, gt=0, description="stage 3: learning rate of the output fusion head "
                                  "(it starts at zero on a trained decoder); default: lr")
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(2.0, gt=0, description="max global grad norm; null: no clipping")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of the trainable weights (published)")
    batch_size: int | None = Field(None, ge=1, description="per-worker batch; default data.batch_size")
    torch_threads: int | None = Field(
        None, ge=1, description="intra-op threads of each worker while this stage's steps run; default "
        "scaling.torch_threads (validation and calibration at the end, after the training stream has stopped, use "
        "that). The stages whose examples carry a first estimate keep a CPU busy computing them beside the "
        "trainer: with more torch threads than the cores left to it, the threads wait on one another")


def _default_stage(stage: str) -> StageSpec:
    return {"vqvae": StageSpec(steps=400, lr=2e-3, warmup_steps=20),
            "var": StageSpec(steps=400, lr=1e-3, warmup_steps=20),
            "refiner": StageSpec(steps=200, lr=1e-3, warmup_steps=10),
            "decoder": StageSpec(steps=40, lr=2e-4)}[stage]


class TrainSpec(_Strict):
    """The stages to run, their optimisation, checkpoints and logging cadence."""

    stages: tuple[Stage, ...] | None = Field(None, description="the stages to run, in pipeline order; default "
                                             "every stage of the model's family (model.family)")
    vqvae: StageSpec = Field(default_factory=lambda: _default_stage("vqvae"))
    var: StageSpec = Field(default_factory=lambda: _default_stage("var"))
    refiner: StageSpec = Field(default_factory=lambda: _default_stage("refiner"),
                               description="RestoreVAR's latent refiner transformer (family restorevar)")
    decoder: StageSpec = Field(default_factory=lambda: _default_stage("decoder"))
    init_uri: str | None = Field(
        None, description="published weights the first stage run starts from; default: for var/decoder the "
        "previous stage's published URI of this run, for vqvae a fresh model")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1, description="steps between metric logs (rank 0)")
    val_every: int | None = Field(None, ge=1, description="steps between validations; default only at the stage end")
    seed: int = 0
    stop_after: int | None = Field(
        None, ge=1, description="end this job after this many steps of a stage (checkpoint kept); a rerun with "
        "the same run name resumes. For time-boxed jobs and the resume test")

    @field_validator("stages")
    @classmethod
    def _ordered(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("at least one stage")
        if len(set(v)) != len(v) or list(v) != sorted(v, key=STAGES.index):
            raise ValueError(f"stages must be distinct and in pipeline order {STAGES}, got {v}")
        return v

    def stage(self, name: str) -> StageSpec:
        """The :class:`StageSpec` of stage ``name``."""
        return getattr(self, name)


class ScalingSpec(_Strict):
    """Ray Train workers of every stage (``ScalingConfig``)."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="with use_gpu")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per worker; default Ray's (= CPUs)")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")


class RunSpec(_Strict):
    """Names and locations: checkpoints, published weights, the work directory."""

    name: str = Field("hsivar-tiny", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="stable run name; a rerun with the same name resumes from the last checkpoint")
    work_dir: str = Field(default_factory=default_work_dir,
                          description="local directory for the demo data, the SQLite MLflow store, logs; default "
                          "$HSIVAR_WORK_DIR, else work (relative to the current directory)")
    storage_path: str | None = Field(None, description="checkpoints and published weights (local, file://, s3://); "
                                     "default <work_dir>/runs")
    max_failures: int = Field(2, ge=-1, description="FailureConfig: worker-group restarts from the last checkpoint")


class TrackingSpec(_Strict):
    """MLflow: a parent run per pipeline, a nested run per stage, the model registered after the decoder stage."""

    enabled: bool = True
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///<work_dir>/mlflow.db")
    experiment: str = "hsivar"
    register_as: str | None = Field("{family}-{preset}", description="registered model name ({family} and {preset} "
                                    "expand, so families never share a registry entry); null: no")
    artifact_location: str | None = Field(None, description="new experiments' artifact root; default "
                                          "<work_dir>/mlartifacts for a local store")


class ValSpec(_Strict):
    """Validation on rank 0 with the seeded test protocol and true autoregressive decoding."""

    max_cubes: int = Field(2, ge=0, description="validation cubes used (0: no validation)")
    levels: Literal["middle", "all"] = Field("middle", description="one middle level per family, or every level "
                                             "of the model's families (19 cases for MP-HSIR's six), in the "
                                             "validation (and calibration) of the family's last stage")
    levels_between: Literal["middle", "all"] = Field(
        "middle", description="the same for the validation at the end of the stages before the last, a progress "
        "check (held-out loss and the token path's reconstruction; vqvae: the clean tiles' reconstruction): 'all' "
        "checks about three times as many examples (19 cases against 6 for MP-HSIR's six)")
    task: Literal["auto", "oracle"] = Field("auto", description="task classifier ('auto') or the true task weights")
    batch_size: int = Field(16, ge=1)
    crop: int | None = Field(None, ge=1, description="centre crop side of each validation cube, pixels (default: "
                             "one model tile). Larger crops validate and calibrate on blended tiles, as cubes are "
                             "restored, at a few times the cost")
    panels: bool = Field(True, description="log false-colour PNG panels degraded / restored / clean")
    calibrate: bool = Field(True, description="at the end of stage decoder, fit on the validation examples the "
                            "per-family trust in the learned correction (model.fusion.trust; models with "
                            "first_estimate), the blur width the clean validation cubes read (model.sharp_width), the "
                            "ratio to the data fit's blur width that deconvolves them best (model.fit_width_scale) and "
                            "the calibrated uncertainty (model.uncertainty), before the final validation and "
                            "publication (hsivar.calibrate)")


class RaySpec(_Strict):
    """How the driver reaches Ray: an address, or a local Ray started by the job."""

    address: str | None = Field(None, description="cluster address; default $RAY_ADDRESS, else start local Ray")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local Ray (default max(4, 2·cores))")
    object_store_mb: int = Field(1024, ge=100, description="object store of a local Ray, MiB")
    logs_to_file: bool = Field(True, description="Ray's own log lines to <work_dir>/logs/ray.log instead of the "
                               "console (worker output stays in Ray's session logs)")
    placement_group_cleaner: bool = Field(
        False, description="keep Ray Train V2's placement-group cleaner (it can tear down healthy runs when the "
        "State API is slow; see hsivar_platform.train)")


class PipelineConfig(_Strict):
    """The whole training pipeline; see the module docstring."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="the model: preset, bands, preset overrides")
    data: DataSpec = Field(default_factory=DataSpec, description="clean cubes and how examples are cut")
    train: TrainSpec = Field(default_factory=TrainSpec, description="stages, optimisation, checkpoints")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Ray Train workers and devices")
    run: RunSpec = Field(default_factory=RunSpec, description="run name and storage locations")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow")
    val: ValSpec = Field(default_factory=ValSpec, description="rank-0 validation")
    ray: RaySpec = Field(default_factory=RaySpec, description="how the driver reaches Ray")

    @model_validator(mode="after")
    def _family_stages(self) -> PipelineConfig:
        extra = [s for s in self.train.stages or () if s not in self.model_cfg().stages]
        if extra:
            raise ValueError(f"train.stages: {', '.join(extra)} not a stage of the {self.model.family} family "
                             f"({', '.join(self.model_cfg().stages)})")
        return self

    # ------------------------------------------------------------------ derived values
    def stages(self) -> tuple[Stage, ...]:
        """The stages this pipeline runs: ``train.stages``, else every stage of the model's family."""
        return self.train.stages or self.model_cfg().stages

    def val_levels(self, stage: str) -> Literal["middle", "all"]:
        """The protocol levels ``stage`` validates on: ``val.levels`` for the last stage this pipeline runs (which
        calibrates on them), ``val.levels_between`` for the stages before it."""
        return self.val.levels if stage == self.stages()[-1] else self.val.levels_between

    def model_cfg(self) -> ModelConfig:
        """The resolved :class:`~hsivar.config.ModelConfig` (preset + overrides)."""
        return self.model.build()

    @property
    def storage_root(self) -> str:
        """Checkpoints and published weights live under this URI."""
        return self.run.storage_path or str(Path(self.run.work_dir).absolute() / "runs")

    def run_uri(self) -> str:
        """``<storage>/<run name>``: everything this run writes to storage."""
        from hsivar_platform import storage

        return storage.join(self.storage_root, self.run.name)

    def published_uri(self, stage: str) -> str:
        """Stable URI of a stage's published weights: ``<storage>/<run>/<stage>/latest``."""
        from hsivar_platform import storage

        return storage.join(self.run_uri(), stage, "latest")

    def checkpoint_root(self) -> str:
        """Ray Train ``storage_path`` of the stages: ``<storage>/<run>/train`` (one Train run per stage)."""
        from hsivar_platform import storage

        return storage.join(self.run_uri(), "train")

    def tracking_uri(self) -> str:
        """MLflow tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else SQLite in the work dir."""
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{Path(self.run.work_dir).absolute() / 'mlflow.db'}"

    def registered_model_name(self) -> str | None:
        """The registry name the decoder stage's model is registered as (None: no registration)."""
        r = self.tracking.register_as
        return r.format(preset=self.model.preset, family=self.model.family) if r else None

    def resolved(self) -> PipelineConfig:
        """A copy with the derived locations filled in (storage path, tracking URI, artifact root, an absolute
        ``train.init_uri`` for a local path).

        Raises:
            ConfigError: inside a Ray job's copy of its working directory, a local location that must outlive
                the job (storage, a SQLite tracking store, its artifacts) would land in that copy
                (:func:`hsivar_platform.locations.check_outlives_job`).
        """
        self._check_outlives_job()
        upd = self.model_copy(deep=True)
        upd.run.work_dir = str(Path(self.run.work_dir).absolute())
        upd.run.storage_path = self.storage_root
        init = upd.train.init_uri
        if init and "://" not in init:  # a relative local path: Ray Train workers run in another cwd
            upd.train.init_uri = str(Path(init).absolute())
        upd.tracking.tracking_uri = self.tracking_uri()
        if upd.tracking.artifact_location is None and _is_local_store(upd.tracking.tracking_uri):
            upd.tracking.artifact_location = str(Path(upd.run.work_dir) / "mlartifacts")
        return upd

    def _check_outlives_job(self) -> None:
        """Raise :class:`ConfigError` when checkpoints, published weights or a local MLflow store would be written
        into a Ray job's temporary working-directory copy (logs and demo data may: Ray keeps job logs, and the
        demo data is regenerated)."""
        work = self.run.work_dir
        checks = [("run.storage_path", self.run.storage_path, "checkpoints and published weights")
                  if self.run.storage_path else
                  ("run.work_dir", work, "checkpoints and published weights go to <work_dir>/runs")]
        tracking = self.tracking_uri()
        if self.tracking.enabled and _is_local_store(tracking):
            if self.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
                setting = "tracking.tracking_uri" if self.tracking.tracking_uri else "MLFLOW_TRACKING_URI"
                checks.append((setting, tracking, "the MLflow tracking store"))
            else:
                checks.append(("run.work_dir", work, "the SQLite MLflow store goes to <work_dir>/mlflow.db"))
            checks.append(("tracking.artifact_location", self.tracking.artifact_location, "the MLflow artifacts")
                          if self.tracking.artifact_location else
                          ("run.work_dir", work, "the MLflow artifacts go to <work_dir>/mlartifacts"))
        try:
            for setting, value, what in checks:
                check_outlives_job(setting, value, what)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def to_yaml(self) -> str:
        """The config as YAML (what ``--config`` reads back)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys → scalar values (MLflow params), e.g. ``{"train.vqvae.steps": 400}``."""
        return flatten(self.model_dump(mode="json"))


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


# ------------------------------------------------------------------------------------------ loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.vqvae.steps=5"`` → (["train", "vqvae", "steps"], 5); the value is parsed as YAML.

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    key, sep, raw = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.vqvae.steps=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set each dotted ``KEY=VALUE`` of ``overrides`` in the nested dict ``doc`` (a new dict)."""
    out = deep_merge({}, doc)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return out


def split_dotted_args(args: Sequence[str]) -> list[str]:
    """Turn leftover CLI args ``--a.b 5``, ``--a.b=5`` into ``["a.b=5", …]``.

    Raises:
        ConfigError: an argument that is not a ``--dotted.key`` option, or one without a value.
    """
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) <= 2:
            raise ConfigError(f"unexpected argument {a!r}; config fields are set with --set KEY=VALUE or --KEY VALUE")
        body = a[2:]
        if "=" in body:
            out.append(body)
            i += 1
            continue
        if i + 1 >= len(args):
            raise ConfigError(f"option {a} needs a value")
        out.append(f"{body}={args[i + 1]}")
        i += 2
    return out


def check_stages(stages: Iterable[str] | None, known: Sequence[str] = STAGES) -> list[str] | None:
    """Validate stage names (``--stage``) against ``known`` (a family's stages, in pipeline order); → them in
    pipeline order, or None when none are given.

    Raises:
        ConfigError: an unknown stage name.
    """
    names = list(stages or [])
    if not names:
        return None
    bad = [s for s in names if s not in known]
    if bad:
        raise ConfigError(f"unknown stage(s) {', '.join(bad)}; expected {', '.join(known)}")
    return sorted(set(names), key=list(known).index)


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        got = f" (got {e['input']!r})" if e.get("type") != "missing" and not isinstance(e.get("input"), dict) else ""
        lines.append(f"{source}: {loc}: {e['msg']}{got}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Load a pipeline config from YAML (or the defaults when ``path`` is None) and apply overrides.

    Args:
        path: YAML file (local path); None: the defaults (the tiny preset on the demo data).
        overrides: ``KEY=VALUE`` strings with dotted keys (see :func:`parse_override`).
    Raises:
        ConfigError: unreadable file, invalid YAML, unknown fields or invalid values — naming the file
            and each offending field.
    """
    source = str(path) if path is not None else "<defaults>"
    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: invalid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(loaded).__name__}")
        doc = loaded or {}
    overrides = list(overrides)
    # Onto the full defaults, so a partial section (``train: {vqvae: {steps: 5}}``) keeps the rest.
    doc = apply_overrides(deep_merge(PipelineConfig().model_dump(mode="json"), doc), overrides)
    if overrides:
        source += " (with overrides)"
    try:
        return PipelineConfig.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(_format_error(source, e)) from None
    except ValueError as e:  # a model override rejected by hsivar.config
        raise ConfigError(f"{source}: {e}") from None
