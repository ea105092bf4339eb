"""The Serve HTTP app on real local Ray, over real HTTP: round trips equal Restorer, 4xx errors, batching, auth."""

from __future__ import annotations

import io
import json
import pickle
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest
import torch

from hsivar.io import CubeMeta, band_missing, read_cube, write_cube
from hsivar.restore import Restorer
from hsivar.tasks import DEFAULT_TASKS

NPY = {"content-type": "application/x-npy"}
TIFF = {"content-type": "image/tiff"}
H5 = {"content-type": "application/x-hdf5"}
CRS, TRANSFORM = "EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 4200000.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _npy(cube: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, cube)
    return buf.getvalue()


def _file_bytes(cube: np.ndarray, suffix: str, meta: CubeMeta | None = None) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"cube{suffix}"
        write_cube(path, cube, meta)
        return path.read_bytes()


def _read(data: bytes, suffix: str) -> tuple[np.ndarray, CubeMeta]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"cube{suffix}"
        path.write_bytes(data)
        return read_cube(path, dataset="cube" if suffix == ".h5" else None)


def _reference(model_dir: Path, cube: np.ndarray, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the replica
    try:
        return Restorer.from_published(model_dir).restore(cube, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    span = float(b.max() - b.min()) or 1.0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * span)


@pytest.fixture(scope="module")
def serve_url(ray_cluster: None, published_tiny: Path) -> str:
    """The app on the session's Ray, HTTP on a free 127.0.0.1 port; Serve shut down after the module."""
    from hsivar_platform.serve import ServeSettings, build_app
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = ServeSettings(model=str(published_tiny), max_request_bytes=200_000, max_cube_values=100_000,
                             max_samples=4, batch_wait_timeout_s=0.05)
    serve.run(build_app(settings, ray_actor_options={"num_cpus": 0.5}), name="hsivar", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture
def client(serve_url: str) -> httpx.Client:
    with httpx.Client(base_url=serve_url, timeout=120) as c:
        yield c


def test_health_and_model_description(client: httpx.Client, published_tiny: Path) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["bands"] == 8 and info["tile"] == 32 and info["preset"] == "tiny"
    assert info["tasks"] == list(DEFAULT_TASKS)
    assert len(info["wavelengths"]) == 8 and len(info["version"]) == 12 and info["stage"] == "decoder"
    assert info["limits"]["max_request_bytes"] == 200_000


def test_npy_round_trip_equals_restorer(client: httpx.Client, published_tiny: Path) -> None:
    cube = (np.random.default_rng(0).random((8, 40, 40)) * 1000).astype(np.float32)
    r = client.post("/v1/restore", content=_npy(cube), headers=NPY)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-npy"
    restored = np.load(io.BytesIO(r.content), allow_pickle=False)
    ref = _reference(published_tiny, cube)
    assert restored.dtype == np.float32 and restored.shape == cube.shape
    _close(restored, ref.cube)
    assert r.headers["x-hsivar-task"] == max(ref.task_weights, key=ref.task_weights.get)
    weights = json.loads(r.headers["x-hsivar-task-weights"])
    np.testing.assert_allclose([weights[t] for t in DEFAULT_TASKS], [ref.task_weights[t] for t in DEFAULT_TASKS],
                               atol=1e-4)
    assert r.headers["x-hsivar-tiles"] == "4" and float(r.headers["x-hsivar-seconds"]) > 0
    phases = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    assert {"read", "decode", "model", "model.prepare", "model.restore", "model.blend", "encode",
            "total"} <= set(phases)
    assert float(phases["total"]) >= float(phases["model"]) >= float(phases["model.restore"]) > 0

    # A named task and a mixture are honoured, and format=tiff converts the answer.
    r = client.post("/v1/restore", params={"task": "blur:0.5,sr:0.5", "format": "tiff"}, content=_npy(cube),
                    headers=NPY)
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
    restored, _ = _read(r.content, ".tif")
    _close(restored, _reference(published_tiny, cube, task={"blur": 0.5, "sr": 0.5}).cube)
    assert r.headers["x-hsivar-task"] in ("blur", "sr")

    # value_range: the input's units mapped to [0, 1] instead of the cube's own min–max
    r = client.post("/v1/restore", params={"value_range": "0,1000", "task": "gaussian"}, content=_npy(cube),
                    headers=NPY)
    assert r.status_code == 200, r.text
    restored = np.load(io.BytesIO(r.content), allow_pickle=False)
    _close(restored, _reference(published_tiny, cube, task="gaussian", value_range=(0.0, 1000.0)).cube)


def test_geotiff_round_trip_keeps_georeferencing(client: httpx.Client, published_tiny: Path) -> None:
    cube = np.random.default_rng(1).integers(200, 3000, (8, 36, 44)).astype(np.uint16)
    meta = CubeMeta(bands=8, crs=CRS, transform=TRANSFORM, nodata=0, wavelengths=[450.0 + 20 * i for i in range(8)])
    r = client.post("/v1/restore", params={"task": "gaussian"}, content=_file_bytes(cube, ".tif", meta),
                    headers=TIFF)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/tiff" and r.headers["x-hsivar-task"] == "gaussian"
    restored, out_meta = _read(r.content, ".tif")
    assert out_meta.dtype == "uint16" and out_meta.crs == CRS and out_meta.transform == TRANSFORM
    assert out_meta.nodata == 0 and out_meta.wavelengths == meta.wavelengths
    ref = _reference(published_tiny, cube.astype(np.float32), task="gaussian").cube
    np.testing.assert_allclose(restored, np.clip(np.rint(ref), 0, 65535), atol=1.0)


def test_dtype_float32_and_the_hdf5_dataset_option(client: httpx.Client, published_tiny: Path) -> None:
    """dtype=float32 answers the unrounded restoration of an integer cube; dataset= picks the cube in an
    HDF5 body holding several (without it: 400 naming the ambiguity)."""
    cube = np.random.default_rng(11).integers(200, 3000, (8, 32, 36)).astype(np.uint16)
    meta = CubeMeta(bands=8, crs=CRS, transform=TRANSFORM)
    ref = _reference(published_tiny, cube.astype(np.float32), task="gaussian").cube
    r = client.post("/v1/restore", params={"task": "gaussian", "dtype": "float32"},
                    content=_file_bytes(cube, ".tif", meta), headers=TIFF)
    assert r.status_code == 200, r.text
    restored, out_meta = _read(r.content, ".tif")
    assert out_meta.dtype == "float32" and out_meta.crs == CRS
    _close(restored, ref)
    assert not np.array_equal(restored, np.rint(restored))  # not rounded to the source's integers
    r = client.post("/v1/restore", params={"task": "gaussian", "dtype": "float64"},
                    content=_file_bytes(cube, ".tif", meta), headers=TIFF)
    assert r.status_code == 422 and "dtype must be source or float32" in r.json()["error"]

    rng = np.random.default_rng(12)
    first, second = rng.random((8, 32, 32)).astype(np.float32), (rng.random((8, 32, 40)) * 5).astype(np.float32)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_dataset("first", data=first)
        h5.create_dataset("second", data=second)
    body = buf.getvalue()
    r = client.post("/v1/restore", content=body, headers=H5)
    assert r.status_code == 400 and "first" in r.json()["error"] and "second" in r.json()["error"], r.text
    r = client.post("/v1/restore", params={"dataset": "second", "task": "gaussian"}, content=body, headers=H5)
    assert r.status_code == 200, r.text
    with h5py.File(io.BytesIO(r.content), "r") as h5:
        (name,) = [k for k in h5 if k != "kept"]
        out = h5[name][()]
    assert out.shape == second.shape
    _close(out, _reference(published_tiny, second, task="gaussian").cube)
    r = client.post("/v1/restore", params={"dataset": "third"}, content=body, headers=H5)
    assert r.status_code == 400 and "third" in r.json()["error"], r.text


def test_a_seed_out_of_range_is_a_422_and_the_replica_serves_on(client: httpx.Client) -> None:
    """A seed torch's generator cannot hold (sample i is seeded seed + i) is the request's fault: JSON 422 naming
    the range, counted as an error; the replica serves the next request."""
    cube = np.random.default_rng(13).random((8, 32, 32)).astype(np.float32)
    before = client.get("/v1/model").json()["stats"]
    for seed in (2**70, 2**63 - 1, -1):
        r = client.post("/v1/restore", params={"samples": 2, "seed": seed}, content=_npy(cube), headers=NPY)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"].startswith(f"seed must be in [0, {2**63 - 3}] for 2 sample(s)")
    assert client.get("/v1/model").json()["stats"]["errors"] == before["errors"] + 3
    r = client.post("/v1/restore", params={"samples": 2, "seed": 2**63 - 3}, content=_npy(cube), headers=NPY)
    assert r.status_code == 200, r.text


def test_hdf5_with_samples_returns_uncertainty(client: httpx.Client, published_tiny: Path) -> None:
    cube = np.random.default_rng(2).random((8, 32, 40)).astype(np.float32)
    r = client.post("/v1/restore", params={"samples": 2, "seed": 3, "uncertainty": "true"},
                    content=_file_bytes(cube, ".h5"), headers=H5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-hdf5"
    ref = _reference(published_tiny, cube, samples=2, seed=3)
    with h5py.File(io.BytesIO(r.content), "r") as h5:
        assert sorted(h5) == ["cube", "std"]
        _close(h5["cube"][()], ref.cube)
        _close(h5["std"][()], ref.std)


def test_a_calibrated_model_answers_an_error_bar_for_one_greedy_decoding(
        client: httpx.Client, published_tiny: Path) -> None:
    cube = np.random.default_rng(4).random((8, 32, 40)).astype(np.float32)
    r = client.post("/v1/restore", params={"uncertainty": "true", "format": "h5"}, content=_npy(cube), headers=NPY)
    assert r.status_code == 200, r.text
    assert r.headers["x-hsivar-uncertainty"] == "calibrated"
    ref = _reference(published_tiny, cube)
    assert ref.std_calibrated and ref.std is not None
    with h5py.File(io.BytesIO(r.content), "r") as h5:
        _close(h5["cube"][()], ref.cube)
        _close(h5["std"][()], ref.std)
        assert float(h5["std"][()].min()) > 0  # nothing kept in a noisy cube: every entry has its bar


def _masked_h5(cube: np.ndarray, observed: np.ndarray) -> bytes:
    """An HDF5 body holding ``cube`` and a ``mask`` dataset (nonzero = observed), written with h5py."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_dataset("cube", data=cube)
        h5.create_dataset("mask", data=observed.astype(np.uint8))
    return buf.getvalue()


def test_bad_bands_and_body_masks_are_synthesised_and_the_answer_says_what_was_kept(
        client: httpx.Client, published_tiny: Path, smooth_cube) -> None:
    cube = smooth_cube((8, 32, 40), 1000.0)
    sent = cube.copy()
    sent[[1, 5]] = 9999.0  # bands the client knows are bad
    r = client.post("/v1/restore", params={"bad_bands": "1, 5", "task": "inpaint"}, content=_npy(sent), headers=NPY)
    assert r.status_code == 200, r.text
    restored = np.load(io.BytesIO(r.content), allow_pickle=False)
    missing = band_missing([1, 5], cube.shape)
    np.testing.assert_array_equal(restored[~missing], cube[~missing])  # bit for bit
    assert not (restored[missing] == 9999.0).any()
    _close(restored, _reference(published_tiny, sent, task="inpaint", missing=missing).cube)
    assert r.headers["x-hsivar-kept-entries"] == str(int((~missing).sum()))
    assert json.loads(r.headers["x-hsivar-observation"])["missing_bands"] == [1, 5]

    # A mask in the HDF5 body (one per pixel, every band), answered with the kept entries as dataset "kept".
    observed = np.ones((32, 40), bool)
    observed[4:20, 10:16] = False
    sent = np.where(observed, cube, np.float32(np.nan))
    r = client.post("/v1/restore", params={"task": "inpaint"}, content=_masked_h5(sent, observed), headers=H5)
    assert r.status_code == 200, r.text
    with h5py.File(io.BytesIO(r.content), "r") as h5:
        assert sorted(h5) == ["cube", "kept"]
        out, kept = h5["cube"][()], h5["kept"][()].astype(bool)
    np.testing.assert_array_equal(kept, np.broadcast_to(observed, cube.shape))
    np.testing.assert_array_equal(out[kept], cube[kept])
    assert np.isfinite(out).all()

    # Malformed masks and band lists: 4xx naming the problem; the replica stays up.
    cases = [
        (422, {"bad_bands": "1,x"}, _npy(cube), NPY, "'x' is not a band index"),
        (422, {"bad_bands": "8"}, _npy(cube), NPY, "out of range for the model's 8 bands"),
        (422, {"bad_bands": "-1"}, _npy(cube), NPY, "out of range"),
        (422, {"bad_bands": "0,1,2,3,4,5,6,7"}, _npy(cube), NPY, "nothing to restore"),
        (422, {}, _masked_h5(cube, np.zeros((32, 40))), H5, "nothing to restore"),
        (400, {}, _masked_h5(cube, np.ones((40, 32))), H5, "mask 'mask' has shape (40, 32)"),
    ]
    for status, params, body, headers, message in cases:
        r = client.post("/v1/restore", params=params, content=body, headers=headers)
        assert r.status_code == status and message in r.json()["error"], (message, r.status_code, r.text)
    assert client.post("/v1/restore", content=_npy(cube), headers=NPY).status_code == 200


def _object_npy(marker: Path) -> bytes:
    """A .npy holding a pickled object whose unpickling would create ``marker``."""

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arr = np.empty(1, dtype=object)
    arr[0] = Evil()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    return b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + pickle.dumps(arr, protocol=3)


def test_bad_requests_answer_4xx_json_and_the_replica_survives(
        client: httpx.Client, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    good = rng.random((8, 40, 40)).astype(np.float32)
    nan = good.copy()
    nan[0, 1, 2] = np.nan
    marker = tmp_path / "unpickled"
    big_but_small_body = _file_bytes(np.zeros((8, 200, 200), np.uint8), ".tif")
    cases = [
        (422, _npy(rng.random((5, 40, 40)).astype(np.float32)), NPY, {}, "5 bands but the model restores 8"),
        (400, _npy(good[0]), NPY, {}, "not a cube"),
        (400, b"\x93NUMPY garbage", NPY, {}, "request body"),
        (400, _object_npy(marker), NPY, {}, "objects"),
        (400, b"", NPY, {}, "empty"),
        (400, b"\x89HDF\r\n\x1a\n broken", H5, {}, "request body"),
        (400, b"II*\x00 broken tiff", TIFF, {}, "request body"),
        (422, _npy(nan), NPY, {}, "non-finite"),
        (415, _npy(good), {"content-type": "text/plain"}, {}, "unsupported media type"),
        (415, _npy(good), {}, {}, "unsupported media type"),
        (413, _npy(rng.random((8, 100, 100)).astype(np.float32)), NPY, {}, "over the limit"),
        (413, big_but_small_body, TIFF, {}, "at most 100000"),
        (422, _npy(good), NPY, {"task": "denoise"}, "unknown task"),
        (422, _npy(good), NPY, {"tile": 16}, "32×32 tiles"),
        (422, _npy(good), NPY, {"tile": "big"}, "not an integer"),
        (422, _npy(good), NPY, {"overlap": 32}, "overlap"),
        (422, _npy(good), NPY, {"samples": 99}, "samples"),
        (422, _npy(good), NPY, {"format": "bmp"}, "unknown format"),
        (422, _npy(good), NPY, {"format": "png"}, "format png stores uint16, uint8, not float32"),
        (422, _npy(good.astype(np.uint16)), NPY, {"format": "png"}, "format png stores 1 or 3 bands, not 8"),
        (422, _npy(good), NPY, {"uncertainty": "true"}, "format=h5"),
        (422, _npy(good), NPY, {"value_range": "1,0"}, "value_range must be LO,HI"),
        (422, _npy(good), NPY, {"value_range": "zero"}, "value_range must be LO,HI"),
    ]
    for status, body, headers, params, message in cases:
        r = client.post("/v1/restore", content=body, headers=headers, params=params)
        assert r.status_code == status, (status, message, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
        payload = r.json()
        assert payload["status"] == status and message in payload["error"], (message, payload)
    assert not marker.exists()  # nothing was unpickled
    r = client.post("/v1/restore", content=_npy(good), headers=NPY)
    assert r.status_code == 200
    assert client.get("/v1/model").json()["stats"]["errors"] >= len(cases)


def test_concurrent_requests_all_succeed_and_share_batches(client: httpx.Client, published_tiny: Path) -> None:
    rng = np.random.default_rng(5)
    cubes = [(rng.random((8, 32, 32)) * (i + 1)).astype(np.float32) for i in range(8)]
    before = client.get("/v1/model").json()["stats"]

    def call(cube: np.ndarray) -> httpx.Response:
        return client.post("/v1/restore", content=_npy(cube), headers=NPY)

    with ThreadPoolExecutor(len(cubes)) as pool:
        responses = list(pool.map(call, cubes))
    assert [r.status_code for r in responses] == [200] * len(cubes)
    for cube, r in zip(cubes, responses):
        _close(np.load(io.BytesIO(r.content), allow_pickle=False), _reference(published_tiny, cube).cube)
    after = client.get("/v1/model").json()["stats"]
    assert after["requests"] - before["requests"] == len(cubes)
    assert after["tiles"] - before["tiles"] == len(cubes)
    assert after["batches"] - before["batches"] < len(cubes)  # tiles of different requests shared passes
    assert after["max_batch"] > 1


def test_an_internal_fault_answers_503_and_the_replica_serves_on(serve_url: str, published_tiny: Path) -> None:
    """A fault inside the model step (injected here, in test code: a subclass of the model deployment whose model
    step fails for one kind of request) answers a JSON 503 that names no internals, is counted as an
    error, and the same replicas serve the next request."""
    from hsivar_platform.serve import ServeSettings
    from hsivar_platform.serve.app import HSIVARModel, HSIVARService
    from ray import serve

    class Faulty(HSIVARModel.func_or_class):  # type: ignore[misc,name-defined]
        def _run_jobs(self, jobs):  # noqa: ANN001, ANN202 - the model deployment's own signature
            if any(float(job.tile.max()) > 0.999 for job in jobs):  # a cube with a saturated entry: the fault
                raise RuntimeError("injected fault")
            return super()._run_jobs(jobs)

    args = ServeSettings(model=str(published_tiny)).model_dump()
    model = serve.deployment(Faulty, name="FaultyModel", ray_actor_options={"num_cpus": 0.5}).bind(args)
    app = HSIVARService.options(name="FaultyGateway", ray_actor_options={"num_cpus": 0.25}).bind(args, model)
    serve.run(app, name="faulty", route_prefix="/faulty")
    try:
        rng = np.random.default_rng(8)
        fine = (0.1 + 0.8 * rng.random((8, 32, 32))).astype(np.float32)
        faulty = fine.copy()
        faulty[3, 5, 5] = 1.0
        with httpx.Client(base_url=f"{serve_url}/faulty", timeout=120) as c:
            r = c.post("/v1/restore", params={"value_range": "0,1"}, content=_npy(faulty), headers=NPY)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/json"
            assert r.json() == {"status": 503, "error": "internal error while restoring; the replica logged the "
                                                        "details, retry later"}
            assert c.get("/v1/model").json()["stats"]["errors"] == 1
            r = c.post("/v1/restore", params={"value_range": "0,1"}, content=_npy(fine), headers=NPY)
            assert r.status_code == 200, r.text
            assert c.get("/v1/model").json()["stats"]["requests"] == 1
    finally:
        serve.delete("faulty")


def test_bearer_token_from_the_environment(serve_url: str, published_tiny: Path) -> None:
    from hsivar_platform.serve import ServeSettings, build_app
    from ray import serve

    settings = ServeSettings(model=str(published_tiny), auth_token_env="HSIVAR_TEST_TOKEN")
    # the gateway checks the token: the variable is set in its process
    app = build_app(settings, gateway_options={"name": "Secured", "ray_actor_options": {
        "num_cpus": 0.25, "runtime_env": {"env_vars": {"HSIVAR_TEST_TOKEN": "s3cret"}}}},
        ray_actor_options={"num_cpus": 0.5})
    serve.run(app, name="secured", route_prefix="/secure")
    try:
        body = _npy(np.random.default_rng(6).random((8, 32, 32)).astype(np.float32))
        with httpx.Client(base_url=f"{serve_url}/secure", timeout=120) as c:
            assert c.get("/healthz").status_code == 200  # probes need no token
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
                r = c.post("/v1/restore", content=body, headers={**NPY, **headers})
                assert r.status_code == 401 and "bearer token" in r.json()["error"]
                assert r.headers["www-authenticate"] == "Bearer"
            assert c.get("/v1/model").status_code == 401
            r = c.post("/v1/restore", content=body, headers={**NPY, "authorization": "Bearer s3cret"})
            assert r.status_code == 200, r.text
            assert c.get("/v1/model", headers={"authorization": "Bearer s3cret"}).json()["bands"] == 8
    finally:
        serve.delete("secured")


def test_hsivar_serve_command_deploys_the_app(serve_url: str, published_tiny: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``hsivar serve --no-blocking`` deploys onto the running Ray/Serve (here: the session's) and returns: with
    autoscaling (the default: no --replicas) and the bearer token of this shell's HSIVAR_SERVE_TOKEN."""
    from hsivar_platform.cli import build_app
    from hsivar_platform.serve import DEPLOYMENT_NAME, MODEL_DEPLOYMENT_NAME

    app = build_app()
    from ray import serve
    from ray.serve.context import _get_global_client
    from typer.testing import CliRunner

    monkeypatch.setenv("HSIVAR_SERVE_TOKEN", "cli-s3cret")  # set in this shell only, not in the cluster's
    port = serve_url.rsplit(":", 1)[1]
    result = CliRunner().invoke(app, ["serve", "--model", str(published_tiny), "--port", port, "--name", "cli",
                                      "--route-prefix", "/cli", "--min-replicas", "1", "--max-replicas", "2",
                                      "--target-ongoing-requests", "3", "--cpus-per-replica", "0.5",
                                      "--no-blocking"])
    try:
        assert result.exit_code == 0, result.output
        assert f"{serve_url}/cli/v1/restore" in result.output
        # what Serve deployed (the controller's own record): the model deployment autoscales with the command's
        # bounds; the gateway is one light replica
        deployments = _get_global_client().get_serve_details()["applications"]["cli"]["deployments"]
        deployed = deployments[MODEL_DEPLOYMENT_NAME]
        assert deployments[DEPLOYMENT_NAME]["status"] == "HEALTHY"
        scaling = deployed["deployment_config"]["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (1, 2, 3.0)
        assert deployed["status"] == "HEALTHY" and len(deployed["replicas"]) >= 1
        with httpx.Client(base_url=f"{serve_url}/cli", timeout=120) as c:
            assert c.get("/healthz").json()["model"] == str(published_tiny)
            body = _npy(np.random.default_rng(7).random((8, 32, 32)).astype(np.float32))
            r = c.post("/v1/restore", content=body, headers=NPY)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
            r = c.post("/v1/restore", content=body, headers={**NPY, "authorization": "Bearer cli-s3cret"})
            assert r.status_code == 200, r.text
            info = c.get("/v1/model", headers={"authorization": "Bearer cli-s3cret"}).json()
            assert info["auth"] is True and info["bands"] == 8
    finally:
        serve.delete("cli")


def test_serve_yaml_deploys_with_its_autoscaling_and_models_latest(serve_url: str, published_tiny: Path,
                                                                    tmp_path: Path, mlflow_uri: str) -> None:
    """deploy/serve.yaml's application as Serve deploys it: its args (model models:/hsivar-tiny/latest, resolved
    in the replica from the registry at MLFLOW_TRACKING_URI) and its deployment options, autoscaling included."""
    import mlflow
    import yaml
    from hsivar_platform.model_uri import PUBLISHED_ARTIFACT_PATH
    from hsivar_platform.serve import DEPLOYMENT_NAME, MODEL_DEPLOYMENT_NAME, ServeSettings, build_app
    from hsivar_platform.tracking import register_published
    from ray import serve
    from ray.serve.context import _get_global_client

    from hsivar.models.hsivar import HSIVAR
    from hsivar.presets import preset
    from hsivar.publish import save_published

    (app_cfg,) = yaml.safe_load((Path(__file__).parents[3] / "deploy" / "serve.yaml").read_text())["applications"]
    assert app_cfg["args"]["model"] == "models:/hsivar-tiny/latest"
    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.create_experiment("serve-yaml", artifact_location=str(tmp_path / "artifacts"))
    torch.manual_seed(2)
    older = save_published(HSIVAR(preset("tiny", bands=8)).eval(), tmp_path / "older", stage="decoder")
    for model_dir in (older, published_tiny):  # version 1: another model; version 2 (latest): published_tiny
        run_id = client.create_run(experiment).info.run_id
        client.log_artifacts(run_id, str(model_dir), PUBLISHED_ARTIFACT_PATH)
        register_published(mlflow_uri, "hsivar-tiny", run_id)

    options = {d.pop("name"): d for d in app_cfg["deployments"]}
    assert sorted(options) == sorted([DEPLOYMENT_NAME, MODEL_DEPLOYMENT_NAME])
    env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_uri}}  # both resolve the model from the registry
    deployment, gateway = options[MODEL_DEPLOYMENT_NAME], options[DEPLOYMENT_NAME]
    deployment["ray_actor_options"] = {**deployment["ray_actor_options"], "num_cpus": 0.5,  # this 2-core machine
                                       "runtime_env": env}
    gateway["ray_actor_options"] = {**gateway["ray_actor_options"], "runtime_env": env}
    scaling = dict(deployment["autoscaling_config"])
    serve.run(build_app(ServeSettings.model_validate(app_cfg["args"]), gateway, **deployment), name="yaml",
              route_prefix="/yaml")
    try:
        deployments = _get_global_client().get_serve_details()["applications"]["yaml"]["deployments"]
        deployed = deployments[MODEL_DEPLOYMENT_NAME]
        got = deployed["deployment_config"]["autoscaling_config"]
        assert {k: got[k] for k in scaling} == scaling
        assert deployed["deployment_config"]["max_ongoing_requests"] == deployment["max_ongoing_requests"]
        assert deployed["status"] == "HEALTHY" and len(deployed["replicas"]) == scaling["initial_replicas"]
        front = deployments[DEPLOYMENT_NAME]
        assert front["status"] == "HEALTHY" and len(front["replicas"]) == gateway["num_replicas"]
        assert front["deployment_config"]["max_ongoing_requests"] == gateway["max_ongoing_requests"]
        with httpx.Client(base_url=f"{serve_url}/yaml", timeout=120) as c:
            info = c.get("/v1/model").json()
            assert info["model"] == "models:/hsivar-tiny/latest" and info["version"] == "2"
            cube = np.random.default_rng(14).random((8, 32, 40)).astype(np.float32)
            r = c.post("/v1/restore", params={"task": "gaussian"}, content=_npy(cube), headers=NPY)
            assert r.status_code == 200, r.text
            restored = np.load(io.BytesIO(r.content), allow_pickle=False)
        _close(restored, _reference(published_tiny, cube, task="gaussian").cube)  # version 2's weights
        assert not np.allclose(restored, _reference(older, cube, task="gaussian").cube, atol=1e-3)
    finally:
        serve.delete("yaml")
