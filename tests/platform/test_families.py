"""The model families other than HSI-VAR through every real entry point, on three-band images: RestoreVAR and
VarFormer each trained by ``hsivar train`` on 16-bit RGB PNGs (real local Ray Train, SQLite MLflow, local storage;
the family's own stages), then restoring a folder of PNGs with ``hsivar restore`` (Ray Data) and a PNG over HTTP
from Serve — each equal to the Restorer. HSI-VAR's own smoke tests are in train/, batch/ and serve/."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hsivar_platform.batch import read_manifest
from typer.testing import CliRunner

from hsivar.io import read_cube
from hsivar.models.restorevar import RestoreVAR
from hsivar.models.varformer import VarFormer
from hsivar.publish import load_published
from hsivar.restore import Restorer
from hsivar.synth import make_demo_dataset

REPO = Path(__file__).resolve().parents[2]
BANDS = 3
FULL = (0.0, 65535.0)  # a 16-bit image is normalised by its dtype's full range, in the batch job and in Serve


def _read_png(data: bytes) -> tuple[np.ndarray, str]:
    """(cube (C, H, W), stored dtype) of PNG bytes, read through the one cube reader."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a.png").write_bytes(data)
        cube, meta = read_cube(Path(tmp) / "a.png")
        return cube, meta.dtype


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STAGES = {"restorevar": ["vqvae", "var", "refiner", "decoder"], "varformer": ["vqvae", "var", "decoder"]}
CLASSES = {"restorevar": RestoreVAR, "varformer": VarFormer}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["restorevar", "varformer"])
def test_family_trains_restores_a_folder_and_serves(family: str, ray_cluster: None, mlflow_uri: str,
                                                    tmp_path: Path) -> None:
    from hsivar_platform.cli import build_app

    data = tmp_path / "hsi"
    make_demo_dataset(str(data), n_train=3, n_val=1, n_test=2, size=40, sensor="rgb", format="png", seed=5)
    overrides = [f"model.bands={BANDS}", f"model.family={family}", f"data.value_range=[{FULL[0]}, {FULL[1]}]",
                 f"data.source={data}", "data.window=40",
                 "data.crops_per_window=4", "data.batch_size=2", "data.shuffle_buffer=0", "val.max_cubes=1",
                 "val.levels=middle", "val.batch_size=8", "train.vqvae.steps=2", "train.var.steps=2",
                 "train.refiner.steps=2", "train.decoder.steps=2", f"run.name={family}-smoke",
                 f"run.work_dir={tmp_path}", f"tracking.tracking_uri={mlflow_uri}", "tracking.register_as=null"]
    args = ["train", "--config", str(REPO / "configs" / "tiny.yaml")]
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.split("[hsivar] result ", 1)[1].splitlines()[0])
    assert report["completed"] and list(report["stages"]) == STAGES[family]
    model_dir = Path(report["stages"]["decoder"])
    model, doc = load_published(model_dir)
    assert isinstance(model, CLASSES[family]) and doc["stage"] == "decoder"
    assert model.cfg.fusion.trust is not None  # calibrated at the end of stage decoder, as HSI-VAR is

    # the batch job over the held-out folder of PNGs: every output (a 16-bit PNG) is the Restorer's, rounded
    out = tmp_path / "restored"
    result = CliRunner().invoke(build_app(), ["restore", "--input", str(data / "test"), "--output", str(out),
                                              "--model", str(model_dir), "--json", "--log-level", "WARNING"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] == 2
    restorer = Restorer.from_published(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers and the replica, so float sums run in the same order
    try:
        names = sorted(Path(key).name for key in read_manifest(str(out)))
        assert len(names) == 2 and all(n.endswith(".png") for n in names)
        for name in names:
            cube, meta = read_cube(data / "test" / name)
            restored, out_meta = read_cube(out / name)
            assert (out_meta.format, out_meta.dtype, restored.shape) == ("png", "uint16", cube.shape)
            expected = np.clip(np.rint(restorer.restore(cube, value_range=FULL).cube), *FULL)
            np.testing.assert_allclose(restored, expected, rtol=0, atol=1.0)
        png = (data / "test" / names[0]).read_bytes()
        reference = restorer.restore(read_cube(data / "test" / names[0])[0], value_range=FULL).cube
    finally:
        torch.set_num_threads(threads)

    # Serve holds the same model: a PNG request answers the Restorer's PNG, /v1/model names the family, and an
    # answer the format cannot hold is a 422 that names it
    from hsivar_platform.serve import ServeSettings
    from hsivar_platform.serve import build_app as build_serve_app
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        settings = ServeSettings(model=str(model_dir), max_request_bytes=400_000, max_cube_values=100_000,
                                 batch_wait_timeout_s=0.05)
        serve.run(build_serve_app(settings, ray_actor_options={"num_cpus": 0.5}), name=family,
                  route_prefix=f"/{family}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/{family}", timeout=120) as c:
            assert c.get("/v1/model").json()["family"] == family
            png_type = {"content-type": "image/png"}
            r = c.post("/v1/restore", content=png, headers=png_type)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
            answer, dtype = _read_png(r.content)
            assert dtype == "uint16"
            np.testing.assert_allclose(answer, np.clip(np.rint(reference), *FULL), rtol=0, atol=1.0)
            r = c.post("/v1/restore", params={"format": "npy", "dtype": "float32"}, content=png, headers=png_type)
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.load(io.BytesIO(r.content)), reference, rtol=0, atol=1e-4 * FULL[1])
            r = c.post("/v1/restore", params={"dtype": "float32"}, content=png, headers=png_type)
            assert r.status_code == 422 and "format png stores uint16, uint8, not float32" in r.json()["error"]
    finally:
        serve.shutdown()
