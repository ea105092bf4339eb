"""MLflow tracking: a parent run per pipeline, a nested run per stage, the registry.

Everything goes through an explicit :class:`mlflow.MlflowClient` bound to one tracking URI (no global
active run), so the same code runs in the driver and in Ray Train's rank-0 worker:

* the driver (:class:`PipelineTracker`) finds or creates the pipeline's parent run (tag
  ``hsivar.run_name``) and one nested run per stage (``mlflow.parentRunId``), logs the resolved
  config as params and as an artifact, and registers the published model after the decoder stage;
* rank 0 (:class:`RunLogger`) logs step metrics, validation metrics, PNG panels and the published
  weights into the stage run whose id the driver passed it.

A job restarted with the same run name reuses both runs, so metric histories continue across the
interruption. Default store: SQLite in the work dir; ``MLFLOW_TRACKING_URI`` overrides.

Registry contract (shared with :mod:`hsivar_platform.model_uri` and Serve): the published directory is
logged under :data:`~hsivar_platform.model_uri.PUBLISHED_ARTIFACT_PATH` of the stage run and
``runs:/<run_id>/published_model`` is registered, so ``models:/NAME/VERSION`` resolves to
``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hsivar_platform.model_uri import PUBLISHED_ARTIFACT_PATH

PARENT_TAG = "hsivar.run_name"
STAGE_TAG = "hsivar.stage"
KIND_TAG = "hsivar.kind"
_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= _MAX_PARAM_LEN else s[: _MAX_PARAM_LEN - 3] + "..."


def experiment_id(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location`` as its root) when missing."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class RunLogger:
    """Log into one existing MLflow run (used by Ray Train's rank 0 and by the driver)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.client = _client(tracking_uri)

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        """Log finite scalar metrics at ``step`` in one batch (names may contain ``/``)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in values.items()
                 if v is not None and np.isfinite(float(v))]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def params(self, values: Mapping[str, Any]) -> list[str]:
        """Log params that are not yet set; → keys whose logged value differs (MLflow params are immutable)."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new, changed = [], []
        for k, v in values.items():
            s = _param_value(v)
            if k not in existing:
                new.append(Param(k, s))
            elif existing[k] != s:
                changed.append(k)
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        if changed:
            self.client.set_tag(self.run_id, "hsivar.changed_params", ",".join(sorted(changed))[:5000])
        return changed

    def text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as the artifact ``artifact_file`` (e.g. ``config/resolved.yaml``)."""
        self.client.log_text(self.run_id, text, artifact_file)

    def artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload one local file."""
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a local directory's files under ``artifact_path``."""
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def png(self, image: np.ndarray, artifact_file: str) -> None:
        """Store an (H, W, 3) float image in [0, 1] as a PNG artifact."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(artifact_file).name
            path.write_bytes(buf.getvalue())
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def published_model(self, local_dir: str | os.PathLike) -> None:
        """Log a published model directory under :data:`PUBLISHED_ARTIFACT_PATH` (the registry's source)."""
        self.artifacts(local_dir, PUBLISHED_ARTIFACT_PATH)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as strings)."""
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


class PipelineTracker:
    """Driver side: the parent run of a pipeline and its nested stage runs (found again on resume)."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str,
                 artifact_location: str | None = None) -> None:
        self.tracking_uri, self.run_name = tracking_uri, run_name
        self.client = _client(tracking_uri)
        self.experiment_id = experiment_id(tracking_uri, experiment, artifact_location)
        self.parent_id = self._find_or_create({PARENT_TAG: run_name, KIND_TAG: "pipeline"}, run_name)

    def _find_or_create(self, tags: dict[str, str], name: str, parent: str | None = None) -> str:
        filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        if parent:
            filt += f" and tags.`mlflow.parentRunId` = '{parent}'"
        found = self.client.search_runs([self.experiment_id], filter_string=filt, max_results=1,
                                        order_by=["attributes.start_time DESC"])
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "hsivar.resumed", "true")
            return run_id
        all_tags = {**tags, "mlflow.runName": name}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        return self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id

    def logger(self, run_id: str | None = None) -> RunLogger:
        """A :class:`RunLogger` of ``run_id`` (default: the parent run)."""
        return RunLogger(self.tracking_uri, run_id or self.parent_id)

    def stage_run(self, stage: str) -> str:
        """The nested run of ``stage`` under the parent (created, or found again on resume)."""
        return self._find_or_create({PARENT_TAG: self.run_name, STAGE_TAG: stage, KIND_TAG: "stage"},
                                    f"{self.run_name}/{stage}", parent=self.parent_id)

    def finish(self, run_id: str | None = None, status: str = "FINISHED") -> None:
        """Mark a run FINISHED / FAILED / KILLED (default: the parent)."""
        self.client.set_terminated(run_id or self.parent_id, status=status)

    def register(self, name: str, run_id: str, tags: Mapping[str, Any] | None = None) -> str:
        """Register ``runs:/<run_id>/published_model`` as a new version of ``name``; → the version."""
        return register_published(self.tracking_uri, name, run_id, tags)


def register_published(tracking_uri: str, name: str, run_id: str, tags: Mapping[str, Any] | None = None) -> str:
    """Register the published model logged in run ``run_id`` as a new version of ``name``; → version string.

    The run must hold the published directory under :data:`PUBLISHED_ARTIFACT_PATH`
    (:meth:`RunLogger.published_model`).
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(name, description="HSI-VAR restoration model (safetensors + config.json)")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    source = f"runs:/{run_id}/{PUBLISHED_ARTIFACT_PATH}"
    mv = client.create_model_version(name, source=source, run_id=run_id,
                                     tags={k: str(v) for k, v in (tags or {}).items()})
    return str(mv.version)
