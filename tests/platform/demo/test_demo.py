"""The product demo through its real entry point: `hsivar demo --quick` on the session's local Ray.

Everything is real: the bucket on the local S3 server, Ray Data / Train / Serve, the SQLite MLflow
store and HTTP on loopback. Only the sizes are small (a few steps per stage, one 40×40 held-out cube).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hsivar.io import read_cube
from hsivar.restore import Restorer
from hsivar.tasks import DEFAULT_TASKS

FIGURES = ("evaluation.png", "panels.png", "spectra.png", "uncertainty.png")


@pytest.mark.slow
def test_quick_demo_runs_the_whole_product(ray_cluster: None, s3_bucket: str, tmp_path: Path) -> None:
    from hsivar_platform import storage
    from hsivar_platform.cli import build_app

    app = build_app()
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    bucket = storage.join(s3_bucket, "demo")
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--bucket", bucket])
    assert res.exit_code == 0, (res.output[-3000:], res.exception)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for stage in ("1/6 data", "2/6 train", "3/6 evaluate", "4/6 batch", "5/6 serve", "6/6 report"):
        assert f"[demo] ── {stage}" in res.output
    for stage in ("vqvae", "var", "decoder"):  # a progress line per stage, from the rank-0 worker's events
        assert f"[train {stage}] step 1/" in res.output and f"[hsivar] stage {stage} finished" in res.output
    for internal in ("core_worker", "RayTrainWorker", "TrainController", "Progress bars disabled", "(raylet)"):
        assert internal not in res.output  # Ray's own lines go to the log files, not the console
    assert (tmp_path / "logs" / "platform.log").is_file()
    assert f"mlflow ui --backend-store-uri {tracking}" in res.output
    assert f"[demo] report:          {tmp_path / 'report' / 'REPORT.md'}" in res.output
    summary = json.loads((tmp_path / "report" / "demo.json").read_text())

    # the report and its figures
    report = (tmp_path / "report" / "REPORT.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in report
        with Image.open(tmp_path / "report" / name) as img:
            img.verify()
        with Image.open(tmp_path / "report" / name) as img:
            assert img.format == "PNG" and min(img.size) > 200
    assert all(f"| {task} |" in report for task in DEFAULT_TASKS)
    # the evaluation: model vs degraded vs baseline
    assert [r["task"] for r in summary["summary"]] == list(DEFAULT_TASKS)
    assert all(np.isfinite(r[f"{m}_psnr"]) for r in summary["summary"] for m in ("degraded", "baseline", "model"))
    metrics = (tmp_path / "eval" / "metrics.csv").read_text()
    assert all(m in metrics for m in ("hsivar", "degraded", "tv_chambolle", "bicubic", "spectral_interp"))

    # the batch outputs in the bucket: a restored cube and its uncertainty per degraded input
    restored = summary["restored_prefix"]
    assert restored == storage.join(bucket, "restored") and summary["batch"]["ok"] == summary["batch"]["total"] == 9
    files = set(storage.list_files(restored))
    opts = storage.storage_options(restored)
    for task in DEFAULT_TASKS:
        out, std = storage.join(restored, task, "cube_0000.npy"), storage.join(restored, task, "cube_0000.std.npy")
        assert {out, std} <= files
        cube, _ = read_cube(out, storage_options=opts)
        unc, _ = read_cube(std, storage_options=opts)
        assert cube.shape == unc.shape == (31, 40, 40) and np.isfinite(cube).all() and (unc >= 0).all()
    manifest = io.BytesIO(storage.read_bytes(storage.join(restored, "_manifest.parquet")))
    import pyarrow.parquet as pq

    assert set(pq.read_table(manifest).column("status").to_pylist()) == {"ok"}

    # one scene per sensor product, read in its own layout, restored to a COG with a STAC Item, all in the Collection
    products = summary["products"]
    assert sorted(p["format"] for p in products) == ["emit", "enmap", "prisma"]
    collection = json.loads(storage.read_bytes(summary["collection"]))
    linked = {storage.join(restored, link["href"].removeprefix("./")) for link in collection["links"]
              if link["rel"] == "item"}
    for p in products:
        assert p["output"].endswith(".tif") and {p["output"], p["stac_item"]} <= files and p["stac_item"] in linked
        cube, meta = read_cube(p["output"], storage_options=opts)
        assert cube.shape[0] == 31 and meta.format == "geotiff" and meta.wavelengths is not None
    assert "sensor product" in report and summary["collection"] in report

    # the HTTP round trip
    http = summary["http"]
    assert http["status"] == 200 and http["shape"] == [31, 40, 40] and http["task"] in DEFAULT_TASKS
    assert http["url"].startswith("http://127.0.0.1:") and http["max_abs_diff"] <= 1e-4

    # MLflow: the pipeline's parent run with a nested run per stage, the evaluation run, the registered model
    client = MlflowClient(tracking)
    parent = client.get_run(summary["mlflow_runs"]["pipeline"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == summary["run_name"]
    assert client.get_experiment(parent.info.experiment_id).name == "hsivar"
    assert parent.data.params["data.source"] == storage.join(bucket, "hsi-quick")
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.data.tags["hsivar.stage"] for r in children} == {"vqvae", "var", "decoder"}
    evaluation = client.get_run(summary["mlflow_runs"]["evaluation"])
    assert "eval/gaussian/gain_psnr" in evaluation.data.metrics
    assert summary["registered_model"] == "models:/hsivar-tiny/1"
    assert client.get_model_version("hsivar-tiny", "1").status == "READY"

    # the published model, copied for convenience, restores 31-band cubes in 32×32 tiles
    restorer = Restorer.from_published(tmp_path / "model")
    assert restorer.bands == 31 and restorer.tile == 32
