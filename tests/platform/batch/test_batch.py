"""Batch restoration of prefixes on real local Ray: outputs equal Restorer, manifest, failures, S3, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hsivar_platform import storage
from hsivar_platform.batch import MANIFEST_NAME, BatchOptions, UnsafeKeyError, read_manifest, relative_key, run_batch
from hsivar_platform.batch.stac import COLLECTION_NAME, ITEM_SUFFIX
from hsivar_platform.testing import output_checksum
from typer.testing import CliRunner

from hsivar.io import CubeMeta, read_cube, write_cube
from hsivar.restore import Restorer, parse_value_range

ROOT = Path(__file__).resolve().parents[3]
CRS, TRANSFORM = "EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 4200000.0)
WAVELENGTHS = [450.0 + 20 * i for i in range(8)]


def _reference(model_dir: Path, cube: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
    """Restorer.restore on one thread (as in the Ray workers, so float sums run in the same order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = Restorer.from_published(model_dir).restore(cube, **kwargs)
    finally:
        torch.set_num_threads(threads)
    return out.cube, out.std


def _close(a: np.ndarray, b: np.ndarray) -> None:
    span = float(b.max() - b.min()) or 1.0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * span)


def _outputs(root: Path) -> list[str]:
    """Every file under the output folder (hidden ones included), relative, but the manifest and the STAC Items and
    Collection (tests/platform/batch/test_batch_archive.py checks those)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                  and p.name not in (MANIFEST_NAME, COLLECTION_NAME) and not p.name.endswith(ITEM_SUFFIX))


# ------------------------------------------------------------------------------------------ no Ray


def test_task_option_and_safe_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        BatchOptions(input="a", output="b", model="m", task="nope")
    assert parse_value_range("0,10000") == (0.0, 10000.0) and parse_value_range(None) is None
    for bad in ("1,0", "0", "a,b", "0,1,2"):
        with pytest.raises(ValueError, match="LO,HI"):
            parse_value_range(bad)
    with pytest.raises(ValueError, match="hi > lo"):
        BatchOptions(input="a", output="b", model="m", value_range=(1.0, 1.0))

    with pytest.raises(ValueError, match="must differ"):
        run_batch(BatchOptions(input=str(tmp_path), output=f"{tmp_path}/", model="nowhere"))
    from hsivar_platform.cli import build_app

    app = build_app()

    result = CliRunner().invoke(app, ["restore", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m",
                                      str(tmp_path / "no-model")])
    assert result.exit_code == 2 and "not a published model" in result.output

    assert relative_key("s3://bucket/raw/a/b.tif", "s3://bucket/raw") == "a/b.tif"
    assert relative_key(str(tmp_path / "raw" / "x.npy"), str(tmp_path / "raw")) == "x.npy"
    for key in ("s3://bucket/raw/../secret.npy", "s3://bucket/raw/a/../../x.npy", "s3://bucket/raw/a//x.npy",
                "s3://bucket/raw/./x.npy", "s3://bucket/raw/a\\..\\x.npy", "s3://bucket/other/x.npy"):
        with pytest.raises(UnsafeKeyError):
            relative_key(key, "s3://bucket/raw")


def test_a_manifest_written_before_model_requested_reads_and_rewrites(tmp_path: Path) -> None:
    """Older manifests have no model_requested column: their rows read back with it None and rewrite cleanly."""
    import pyarrow as pa
    from hsivar_platform.batch.manifest import manifest_schema, record, write_manifest

    old_schema = pa.schema([f for f in manifest_schema() if f.name != "model_requested"])
    row = record("a.npy", "ok", output_uri="out/a.npy", model="models:/m/3", model_version="3")
    pq.write_table(pa.Table.from_pylist([{k: row[k] for k in old_schema.names}], schema=old_schema),
                   tmp_path / MANIFEST_NAME)
    rows = read_manifest(str(tmp_path))
    assert rows["a.npy"]["model"] == "models:/m/3" and rows["a.npy"]["model_requested"] is None
    write_manifest(str(tmp_path), rows.values())
    assert pq.read_table(tmp_path / MANIFEST_NAME).column("model_requested").to_pylist() == [None]


# ------------------------------------------------------------------------------------------ local prefix


@pytest.fixture
def local_inputs(tmp_path: Path) -> dict[str, np.ndarray]:
    """Good cubes in three formats plus one bad input of each kind, under tmp_path/raw."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    good = {
        "a/c0.npy": (rng.random((8, 40, 40)) * 1000).astype(np.float32),
        "a/b/c1.npy": (rng.random((8, 24, 50)) * 3 - 1).astype(np.float32),
        "scene.tif": (rng.integers(100, 4000, (8, 36, 44))).astype(np.uint16),
        "lab.h5": rng.random((8, 40, 40)).astype(np.float32),
        "envi/cube.hdr": (rng.random((8, 32, 36)) * 100).astype(np.float32),  # + envi/cube.img
    }
    for key, cube in good.items():
        meta = None
        if key.endswith(".tif"):
            meta = CubeMeta(bands=8, crs=CRS, transform=TRANSFORM, nodata=0, wavelengths=WAVELENGTHS,
                            band_names=[f"b{i}" for i in range(8)])
        write_cube(raw / key, cube, meta)
    np.save(raw / "flat.npy", np.zeros((40, 40), np.float32))  # 2-D
    np.save(raw / "bands.npy", np.zeros((5, 40, 40), np.float32))  # wrong band count
    nan = rng.random((8, 40, 40)).astype(np.float32)
    nan[3, 5, 5] = np.nan
    np.save(raw / "nan.npy", nan)
    (raw / "corrupt.tif").write_bytes(b"II*\x00" + rng.bytes(200))  # corrupt (seeded bytes)
    full = raw / "full.npy"
    np.save(full, np.zeros((8, 40, 40), np.float32))
    full.write_bytes(full.read_bytes()[:500])  # truncated: unreadable
    (raw / "orphan.hdr").write_text("ENVI\nsamples = 4\nlines = 4\nbands = 8\n")  # header without data
    (raw / "notes.txt").write_text("not a cube")
    return good


def test_batch_restores_a_local_prefix_with_manifest_and_failures(
        ray_cluster: None, published_tiny: Path, tmp_path: Path, local_inputs: dict[str, np.ndarray]) -> None:
    raw, out = tmp_path / "raw", tmp_path / "restored"
    runner = CliRunner()
    from hsivar_platform.cli import build_app

    app = build_app()

    args = ["restore", "--input", str(raw), "--output", str(out), "--model", str(published_tiny), "--json",
            "--log-level", "WARNING"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["total"], report["ok"], report["failed"], report["skipped"]) == (12, 5, 6, 1)
    assert report["processed"] == 11 and report["already_done"] == 0

    # Outputs: the same keys, formats and dtypes, equal to Restorer.restore on the same file, each with its STAC Item.
    assert _outputs(out) == sorted([*local_inputs, "envi/cube.img"])
    assert all((out / f"{key}{ITEM_SUFFIX}").is_file() for key in local_inputs) and (out / COLLECTION_NAME).is_file()
    for key, cube in local_inputs.items():
        restored, meta = read_cube(out / key)
        ref, _ = _reference(published_tiny, cube.astype(np.float32))
        if cube.dtype == np.uint16:
            assert meta.dtype == "uint16"
            np.testing.assert_allclose(restored, np.clip(np.rint(ref), 0, 65535), atol=1.0)
        else:
            _close(restored, ref)
    _, meta = read_cube(out / "scene.tif")
    assert meta.crs == CRS and meta.transform == TRANSFORM and meta.nodata == 0
    assert meta.wavelengths == WAVELENGTHS and meta.band_names == [f"b{i}" for i in range(8)]

    manifest = read_manifest(str(out))
    rows = {Path(uri).relative_to(raw).as_posix(): row for uri, row in manifest.items()}
    assert len(rows) == 12
    for key in local_inputs:
        row = rows[key]
        assert row["status"] == "ok" and row["error"] == "" and row["output_uri"] == str(out / key)
        assert row["checksum"] == output_checksum(row["output_uri"])
        assert row["shape"] == list(local_inputs[key].shape) and row["bands"] == 8
        assert row["task"] in json.loads(row["task_weights"]) and row["seconds"] > 0 and row["tiles"] >= 1
    reasons = {"flat.npy": "not a cube", "bands.npy": "5 bands but the model restores 8",
               "nan.npy": "non-finite", "corrupt.tif": "geotiff", "full.npy": "truncated",
               "orphan.hdr": "without its data file"}
    for key, reason in reasons.items():
        assert rows[key]["status"] == "failed" and reason in rows[key]["error"], rows[key]
        assert str(raw / key) in rows[key]["error"]
    assert rows["notes.txt"]["status"] == "skipped" and "not a cube file" in rows["notes.txt"]["error"]
    assert rows["bands.npy"]["shape"] == [5, 40, 40] and rows["bands.npy"]["bands"] == 5

    # A re-run skips the completed files (outputs untouched) and retries the failed ones.
    mtimes = {key: (out / key).stat().st_mtime_ns for key in local_inputs}
    result = runner.invoke(app, [*args, "--fail-on-error"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["already_done"] == 5 and report["processed"] == 6 and report["failed"] == 6
    assert mtimes == {key: (out / key).stat().st_mtime_ns for key in local_inputs}
    assert len(pq.read_table(out / MANIFEST_NAME)) == 12


def test_nodata_voxels_stay_nodata_and_one_decoding_gets_its_calibrated_error_bar(
        ray_cluster: None, published_tiny: Path, tmp_path: Path) -> None:
    cube = np.random.default_rng(3).integers(100, 4000, (8, 32, 40)).astype(np.int16)
    cube[:, :4, :4] = -9999
    meta = CubeMeta(bands=8, crs=CRS, transform=TRANSFORM, nodata=-9999)
    write_cube(tmp_path / "raw" / "edge.tif", cube, meta)
    write_cube(tmp_path / "raw" / "empty.tif", np.full((8, 32, 32), -9999, np.int16), meta)
    report = run_batch(BatchOptions(input=str(tmp_path / "raw"), output=str(tmp_path / "out"),
                                    model=str(published_tiny), uncertainty=True))  # one greedy decoding
    assert (report.ok, report.skipped, report.failed) == (1, 1, 0), report.failures
    skipped = read_manifest(str(tmp_path / "out"))[str(tmp_path / "raw" / "empty.tif")]
    assert skipped["status"] == "skipped" and "nothing to restore" in skipped["error"]
    assert not (tmp_path / "out" / "empty.tif").exists()
    restored, meta = read_cube(tmp_path / "out" / "edge.tif")
    assert meta.nodata == -9999 and meta.dtype == "int16"
    assert (restored[:, :4, :4] == -9999).all()
    # the valid voxels are Restorer's restoration with the same nodata value (whose range leaves nodata out:
    # tests/hsivar/test_restore.py), rounded to the source's int16
    valid = np.ones(cube.shape, bool)
    valid[:, :4, :4] = False
    ref, ref_std = _reference(published_tiny, cube.astype(np.float32), nodata=-9999.0)
    np.testing.assert_allclose(restored[valid], np.rint(ref[valid]), atol=1.0)
    # the model is calibrated (tests/platform/conftest); nodata voxels have a NaN bar
    std, std_meta = read_cube(tmp_path / "out" / "edge.std.tif", allow_nonfinite=True)
    assert std_meta.dtype == "float32" and np.isnan(std[~valid]).all() and (std[valid] > 0).all()
    np.testing.assert_allclose(std[valid], ref_std[valid], rtol=1e-4, atol=1e-3)


def test_uncertainty_from_one_decoding_of_an_uncalibrated_model_is_refused(
        published_tiny: Path, tmp_path: Path) -> None:
    from hsivar.publish import load_published, save_published

    model, _ = load_published(published_tiny)
    model.set_uncertainty(None)
    plain = save_published(model, tmp_path / "uncalibrated")
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "a.npy", np.zeros((8, 32, 32), np.float32))
    with pytest.raises(ValueError, match="needs --samples ≥ 2 .* no calibrated uncertainty"):
        run_batch(BatchOptions(input=str(tmp_path / "raw"), output=str(tmp_path / "out"), model=str(plain),
                               uncertainty=True))
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.slow
def test_force_reruns_everything_as_float32_on_two_model_actors(
        ray_cluster: None, published_tiny: Path, tmp_path: Path) -> None:
    """A plain re-run does nothing; ``force`` restores every input again (here with ``output_dtype=float32``, a pool
    of two model actors and the split pipeline of GPU pools): the outputs are replaced by the unrounded
    restorations, the manifest rewritten."""
    rng = np.random.default_rng(9)
    raw, out = tmp_path / "raw", tmp_path / "out"
    cubes = {f"c{i}.tif": rng.integers(100, 4000, (8, 32, 36)).astype(np.int16) for i in range(4)}
    for key, cube in cubes.items():
        write_cube(raw / key, cube, CubeMeta(bands=8, crs=CRS, transform=TRANSFORM))
    options = BatchOptions(input=str(raw), output=str(out), model=str(published_tiny), task="gaussian")
    first = run_batch(options)
    assert (first.ok, first.processed, first.failed) == (4, 4, 0), first.failures
    refs = {key: _reference(published_tiny, cube.astype(np.float32), task="gaussian")[0]
            for key, cube in cubes.items()}
    before = read_manifest(str(out))
    for key in cubes:
        restored, meta = read_cube(out / key)
        assert meta.dtype == "int16"
        np.testing.assert_allclose(restored, np.rint(refs[key]), atol=1.0)
    again = run_batch(options)
    assert (again.already_done, again.processed) == (4, 0)

    from ray._private.state import actors as all_actors  # the GCS's actor table (this Ray has no dashboard)

    started = [a["ActorClassName"] for a in all_actors().values()]
    assert "MapWorker(MapBatches(ReadRestoreWrite))" in started  # CPU actors run the three stages themselves

    # The split pipeline (the default with GPU actors): reads and writes on CPU tasks around the model actors.
    seen = set(all_actors())
    forced = run_batch(options.model_copy(update={"force": True, "output_dtype": "float32", "actors": 2,
                                                  "min_actors": 2, "fused": False}))
    started = [a["ActorClassName"] for k, a in all_actors().items() if k not in seen]
    assert started.count("MapWorker(MapBatches(Restore))") == 2, started  # a pool of two model actors
    assert (forced.ok, forced.processed, forced.already_done, forced.failed) == (4, 4, 0, 0), forced.failures
    assert _outputs(out) == sorted(cubes)
    after = read_manifest(str(out))
    for key in cubes:
        restored, meta = read_cube(out / key)
        assert meta.dtype == "float32" and meta.crs == CRS and meta.transform == TRANSFORM
        _close(restored, refs[key])
        assert not np.array_equal(restored, np.rint(restored))  # not the rounded int16 output of the first run
        row = after[str(raw / key)]
        assert row["status"] == "ok" and row["checksum"] == output_checksum(row["output_uri"])
        assert row["checksum"] != before[str(raw / key)]["checksum"]


def test_file_masks_are_synthesised_and_the_kept_sidecar_says_which(
        ray_cluster: None, published_tiny: Path, tmp_path: Path, smooth_cube) -> None:
    import h5py
    import rasterio

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    clean = smooth_cube((8, 32, 32), 1000.0)
    observed = np.ones((32, 32), np.uint8)
    observed[5:12, 4:20] = 0
    garbage = np.where(observed[None] == 0, np.float32(9999.0), clean)
    garbage[3] = 9999.0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            raw / "masked.tif", "w", driver="GTiff", width=32, height=32, count=8, dtype="float32", crs=CRS,
            transform=rasterio.Affine(*TRANSFORM)) as ds:
        ds.write(garbage)
        ds.write_mask(observed * 255)  # internal mask, nonzero = observed
        ds.update_tags(bbl="1,1,1,0,1,1,1,1")  # band 3 is bad
    envi = clean.copy()
    envi[[1, 6]] = np.nan
    envi[:, :2, :2] = -9999.0
    envi.astype("<f4").tofile(raw / "scene.img")
    (raw / "scene.hdr").write_text("ENVI\nsamples = 32\nlines = 32\nbands = 8\nheader offset = 0\ndata type = 4\n"
                                   "interleave = bsq\nbyte order = 0\ndata ignore value = -9999\n"
                                   "bbl = {1, 0, 1, 1, 1, 1, 0, 1}\n")
    with h5py.File(raw / "wrong.h5", "w") as f:
        f.create_dataset("cube", data=clean)
        f.create_dataset("mask", data=np.ones((32, 31), np.uint8))
    with h5py.File(raw / "hidden.h5", "w") as f:
        f.create_dataset("cube", data=clean)
        f.create_dataset("mask", data=np.zeros((32, 32), np.uint8))

    report = run_batch(BatchOptions(input=str(raw), output=str(out), model=str(published_tiny), task="inpaint"))
    assert (report.ok, report.failed, report.skipped) == (2, 1, 1), report.failures
    rows = read_manifest(str(out))
    failed = rows[str(raw / "wrong.h5")]
    assert failed["status"] == "failed" and "mask 'mask' has shape (32, 31)" in failed["error"], failed
    skipped = rows[str(raw / "hidden.h5")]
    assert skipped["status"] == "skipped" and "leaves no entry observed" in skipped["error"], skipped
    for key, kept_key in (("masked.tif", "masked.kept.tif"), ("scene.hdr", "scene.kept.hdr")):
        cube, meta = read_cube(raw / key, allow_nonfinite=True)
        restored, out_meta = read_cube(out / key)
        kept, kept_meta = read_cube(out / kept_key)
        nodata = cube == meta.nodata if meta.nodata is not None else np.zeros(cube.shape, bool)
        exact = ~meta.missing & ~nodata
        np.testing.assert_array_equal(kept.astype(bool), exact)  # 1 = kept as observed, 0 = synthesised
        np.testing.assert_array_equal(restored[exact], cube[exact])  # bit for bit
        assert np.isfinite(restored).all() and not (restored[meta.missing] == 9999.0).any()
        assert out_meta.missing is None and kept_meta.transform == out_meta.transform
        assert json.loads(rows[str(raw / key)]["observation"])["missing_fraction"] > 0
    assert kept_meta.nodata is None and read_cube(out / "scene.hdr")[1].nodata == -9999.0
    _, tif_kept = read_cube(out / "masked.kept.tif")
    assert tif_kept.crs == CRS and tif_kept.transform == TRANSFORM and tif_kept.dtype == "uint8"


# ------------------------------------------------------------------------------------------ S3


def test_batch_on_s3_with_uncertainty_matches_restorer(
        ray_cluster: None, published_tiny: Path, s3_bucket: str) -> None:
    rng = np.random.default_rng(1)
    cubes = {"raw/x/one.npy": (rng.random((8, 40, 40)) * 50).astype(np.float32),
             "raw/two.h5": rng.random((8, 32, 36)).astype(np.float32)}
    for key, cube in cubes.items():
        write_cube(storage.join(s3_bucket, key), cube, storage_options=storage.storage_options(s3_bucket))
    model = storage.upload_dir(published_tiny, storage.join(s3_bucket, "models", "tiny8"))
    options = BatchOptions(input=f"{s3_bucket}/raw/", output=f"{s3_bucket}/restored/", model=model, samples=2,
                           seed=7, uncertainty=True, value_range=(0.0, 50.0))
    report = run_batch(options)
    assert (report.ok, report.failed, report.processed) == (2, 0, 2), report.failures

    listed = storage.list_files(f"{s3_bucket}/restored")
    assert listed == sorted(storage.join(s3_bucket, "restored", k) for k in
                            ("x/one.npy", "x/one.std.npy", "two.h5", "two.std.h5", COLLECTION_NAME,
                             f"x/one.npy{ITEM_SUFFIX}", f"two.h5{ITEM_SUFFIX}"))
    item = json.loads(storage.read_bytes(storage.join(s3_bucket, "restored", f"x/one.npy{ITEM_SUFFIX}")))
    assert item["assets"]["data"]["href"] == "./one.npy" and item["assets"]["uncertainty"]["href"] == "./one.std.npy"
    assert {"rel": "collection", "href": f"../{COLLECTION_NAME}", "type": "application/json"} in item["links"]
    assert item["properties"]["hsivar:samples"] == 2 and item["properties"]["hsivar:seed"] == 7
    manifest = read_manifest(f"{s3_bucket}/restored")
    for key, cube in cubes.items():
        row = manifest[storage.join(s3_bucket, key)]
        assert row["status"] == "ok" and row["checksum"] == output_checksum(row["output_uri"])
        assert row["uncertainty_checksum"] == output_checksum(row["uncertainty_uri"])
        opts = storage.storage_options(s3_bucket)
        restored, _ = read_cube(row["output_uri"], storage_options=opts)
        std, _ = read_cube(row["uncertainty_uri"], storage_options=opts)
        ref, ref_std = _reference(published_tiny, cube, samples=2, seed=7, value_range=(0.0, 50.0))
        _close(restored, ref)
        _close(std, ref_std)
    assert run_batch(options).already_done == 2  # nothing left to do

    # The Collection on S3 is a STAC input: its Items' relative hrefs resolve on the bucket; each data asset is
    # restored again under <output>/<item id>/.
    again = run_batch(BatchOptions(input=f"{s3_bucket}/restored/{COLLECTION_NAME}", output=f"{s3_bucket}/again/",
                                   model=model, value_range=(0.0, 50.0)))
    assert (again.ok, again.failed) == (2, 0), again.failures
    assert {storage.join(s3_bucket, "again", k) for k in ("x__one.npy/one.npy", "two.h5/two.h5")} <= set(
        storage.list_files(f"{s3_bucket}/again"))


def test_batch_with_a_registry_alias_and_a_single_file(
        ray_cluster: None, published_tiny: Path, tmp_path: Path, mlflow_uri: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """models:/NAME@ALIAS and models:/NAME/latest resolve in the driver and in the actors (MLFLOW_TRACKING_URI is
    forwarded); the manifest and the report name the version loaded, models:/NAME/<number>, and what was asked."""
    import mlflow
    from hsivar_platform.model_uri import PUBLISHED_ARTIFACT_PATH
    from hsivar_platform.tracking import register_published

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # the driver's; forwarded to the actors
    client = mlflow.MlflowClient(mlflow_uri)  # no mlflow.set_tracking_uri: that is process-global state
    experiment = client.create_experiment("batch-test", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(published_tiny), PUBLISHED_ARTIFACT_PATH)
    version = register_published(mlflow_uri, "hsivar-batch-test", run_id)
    client.set_registered_model_alias("hsivar-batch-test", "production", version)

    cube = (np.random.default_rng(8).random((8, 32, 48)) * 10).astype(np.float32)
    write_cube(tmp_path / "one.npy", cube)
    report = run_batch(BatchOptions(input=str(tmp_path / "one.npy"), output=str(tmp_path / "out"),
                                    model="models:/hsivar-batch-test@production", task="inpaint"))
    assert report.ok == 1, report.failures
    restored, _ = read_cube(tmp_path / "out" / "one.npy")
    _close(restored, _reference(published_tiny, cube, task="inpaint")[0])
    row = read_manifest(str(tmp_path / "out"))[str(tmp_path / "one.npy")]
    assert row["task"] == "inpaint" and row["model"] == f"models:/hsivar-batch-test/{version}"
    assert row["model_requested"] == "models:/hsivar-batch-test@production" and row["model_version"] == str(version)

    # A second version (the same weights): models:/NAME/latest is pinned to it.
    latest = register_published(mlflow_uri, "hsivar-batch-test", run_id)
    assert int(latest) == int(version) + 1
    report = run_batch(BatchOptions(input=str(tmp_path / "one.npy"), output=str(tmp_path / "out-latest"),
                                    model="models:/hsivar-batch-test/latest", task="inpaint"))
    assert report.ok == 1 and report.model == f"models:/hsivar-batch-test/{latest}", report
    assert report.model_requested == "models:/hsivar-batch-test/latest"
    row = read_manifest(str(tmp_path / "out-latest"))[str(tmp_path / "one.npy")]
    assert row["model"] == f"models:/hsivar-batch-test/{latest}" and row["model_version"] == str(latest)
    assert row["model_requested"] == "models:/hsivar-batch-test/latest"


# ------------------------------------------------------------------------------------------ kill + resume


def test_killed_job_resumes_with_every_output_exactly_once(
        ray_cluster: None, published_tiny: Path, tmp_path: Path) -> None:
    """SIGKILL the job's driver midway, re-run it: every output once, none truncated, manifest complete."""
    import ray

    n = 36
    raw, out = tmp_path / "raw", tmp_path / "out"
    rng = np.random.default_rng(2)
    raw.mkdir()
    for i in range(n):
        np.save(raw / f"c{i:03d}.npy", (rng.random((8, 32, 32)) * 100).astype(np.float32))
    cmd = [sys.executable, str(ROOT / "jobs" / "restore_batch.py"), "--input", str(raw), "--output", str(out),
           "--model", str(published_tiny), "--ray-address", ray.get_runtime_context().gcs_address,
           "--manifest-interval-s", "0", "--log-level", "WARNING"]
    log = (tmp_path / "job1.log").open("wb")
    job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    done_at_kill: dict = {}
    try:
        while time.monotonic() < deadline and job.poll() is None:
            done_at_kill = read_manifest(str(out)) if (out / MANIFEST_NAME).exists() else {}
            if len(done_at_kill) >= 3:
                break
            time.sleep(0.2)
        assert job.poll() is None, f"the job ended before it could be killed:\n{(tmp_path / 'job1.log').read_text()}"
        assert len(done_at_kill) >= 3, "no progress within the deadline"
        os.kill(job.pid, signal.SIGKILL)
    finally:
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL

    at_kill = _outputs(out)
    assert 3 <= len([p for p in at_kill if not p.startswith(".")]) < n, at_kill  # killed midway
    for name in at_kill:  # whatever exists under its final name is complete
        if not name.startswith("."):
            read_cube(out / name)
    manifest = read_manifest(str(out))  # never corrupt
    assert all(row["status"] == "ok" for row in manifest.values())

    result = subprocess.run(cmd[:-2] + ["--json", "--log-level", "WARNING"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"killed with {len(done_at_kill)} rows in the manifest, {len(at_kill)} files; re-run: {report}")
    assert report["ok"] == n and report["failed"] == 0
    assert report["already_done"] >= len(done_at_kill) and report["processed"] == n - report["already_done"]

    assert _outputs(out) == [f"c{i:03d}.npy" for i in range(n)]  # each exactly once, no temporaries left
    manifest = read_manifest(str(out))
    assert len(manifest) == n
    for row in manifest.values():
        assert row["status"] == "ok"
        assert output_checksum(row["output_uri"]) == row["checksum"]
        cube, _ = read_cube(row["output_uri"])
        assert cube.shape == (8, 32, 32) and np.isfinite(cube).all()
    # The STAC Collection after the resume links the Item of every output, from both runs, once each.
    collection = json.loads((out / COLLECTION_NAME).read_text())
    linked = sorted(link["href"] for link in collection["links"] if link["rel"] == "item")
    assert linked == [f"./c{i:03d}.npy{ITEM_SUFFIX}" for i in range(n)]
    assert all((out / href).is_file() for href in linked)
