"""Training against a flaky object store: checkpoints and published weights on S3 through the fault-injecting
proxy (tests/platform/fault_proxy.py). A publication that fails past the retries fails the worker; FailureConfig
restarts it from the stage's last complete checkpoint, which publishes again."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hsivar_platform import storage
from hsivar_platform.pipeline_config import load_config
from hsivar_platform.train import train_pipeline

from hsivar.publish import CONFIG_FILE, WEIGHTS_FILE, load_published
from hsivar.synth import make_demo_dataset

BANDS = 8
TINY = [f"model.bands={BANDS}", "data.window=40", "data.crops_per_window=4", "data.batch_size=2",
        "data.shuffle_buffer=0", "train.log_every=1", "val.max_cubes=0"]


@pytest.mark.slow
def test_a_failed_publication_is_retried_and_the_stage_resumes_from_its_last_checkpoint(
        ray_cluster: None, s3_bucket: str, fault_proxy, mlflow_uri: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = str(tmp_path / "data")
    make_demo_dataset(data, n_train=3, n_val=0, n_test=0, size=40, bands=BANDS, format="npy", seed=3)
    # From here on the driver and the Train workers (their runtime env carries AWS_ENDPOINT_URL) reach S3
    # through the proxy. It resets every upload of the published weights — the first publication fails past
    # its retries and fails the worker — until the restarted worker reads the stage's checkpoint back.
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    monkeypatch.setenv("HSIVAR_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("HSIVAR_S3_READ_TIMEOUT_S", "5")
    lock, state = threading.Lock(), {"resets": 0, "healed": False}

    def weights_upload(line: str) -> bool:
        with lock:
            if state["resets"] and line.startswith("GET") and "checkpoint_step0000004" in line:
                state["healed"] = True  # the restarted worker resumes from the complete checkpoint
            if state["healed"] or not (line.startswith("PUT") and f"/vqvae/latest/{WEIGHTS_FILE}" in line):
                return False
            state["resets"] += 1
            return True

    fault_proxy.reset_if = weights_upload
    storage_uri = storage.join(s3_bucket, "runs")
    cfg = load_config(None, [*TINY, f"data.source={data}", f"run.storage_path={storage_uri}",
                             f"run.work_dir={tmp_path}", "run.name=flaky", f"tracking.tracking_uri={mlflow_uri}",
                             "tracking.register_as=null", "train.stages=[vqvae]", "train.vqvae.steps=4",
                             "train.vqvae.warmup_steps=0", "train.checkpoint_every=2", "run.max_failures=1",
                             "scaling.num_workers=1"])
    result = train_pipeline(cfg, echo=lambda s: None)
    assert result.completed and result.stages[0].step == 4

    uploads = [line for line in fault_proxy.counts.requests if f"/vqvae/latest/{WEIGHTS_FILE}" in line]
    assert state["resets"] > 1 and state["healed"] and len(uploads) > state["resets"]  # retried, failed, redone
    published = storage.join(storage_uri, "flaky", "vqvae", "latest")
    fs, root = storage.filesystem(published)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(root)) == [CONFIG_FILE, WEIGHTS_FILE]  # nothing partial
    model, doc = load_published(storage.download_dir(published, tmp_path / "published"))
    assert doc["metadata"]["step"] == 4 and doc["metadata"]["complete"]

    from mlflow import MlflowClient

    resumed = sorted(h.value for h in MlflowClient(tracking_uri=mlflow_uri).get_metric_history(
        result.stages[0].mlflow_run_id, "resumed_from_step"))
    assert resumed == [0, 4], resumed  # the restarted worker group started at the complete checkpoint of step 4
    print(f"\n[fault] publish: {len(uploads)} uploads of the weights, {state['resets']} reset; restarted from step 4, "
          f"published "
          f"({fault_proxy.counts.connections} connections through the proxy)")
