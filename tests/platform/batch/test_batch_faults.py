"""The batch job against a flaky object store: a fault-injecting proxy (tests/platform/fault_proxy.py) between the
job and the real local S3 server resets and stalls connections; the job retries, never leaves a partial output,
and records in the manifest what it could not write; a rerun after the store heals finishes the rest."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hsivar_platform import storage
from hsivar_platform.batch import BatchOptions, read_manifest, run_batch
from hsivar_platform.testing import output_checksum

from hsivar.io import read_cube, write_cube
from hsivar.restore import Restorer


def _restored(model_dir: Path, cube: np.ndarray) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers
    try:
        return Restorer.from_published(model_dir).restore(cube, value_range=(0.0, 1.0)).cube
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_batch_retries_a_flaky_store_and_records_what_it_could_not_write(
        ray_cluster: None, published_tiny: Path, s3_bucket: str, fault_proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    cubes = {name: rng.random((8, 32, 32)).astype(np.float32) for name in ("a", "b", "c")}
    opts = storage.storage_options(s3_bucket)
    for name, cube in cubes.items():  # written straight to the server, not through the proxy
        write_cube(storage.join(s3_bucket, "raw", f"{name}.npy"), cube, storage_options=opts)
    model = storage.upload_dir(published_tiny, storage.join(s3_bucket, "models", "tiny8"))

    # From here on the job (driver and Ray workers: AWS_ENDPOINT_URL is forwarded) talks through the proxy,
    # which resets every 4th connection, resets every upload of restored/b.npy, and stalls the first read of an
    # input for longer than the read timeout.
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    monkeypatch.setenv("HSIVAR_S3_READ_TIMEOUT_S", "1.5")
    monkeypatch.setenv("HSIVAR_S3_MAX_ATTEMPTS", "4")
    fault_proxy.reset_every = 4
    fault_proxy.reset_if = lambda line: line.startswith("PUT") and "/restored/b.npy" in line
    fault_proxy.stall_if = lambda line: line.startswith("GET") and "/raw/" in line
    fault_proxy.stall_s = 4.0
    options = BatchOptions(input=f"{s3_bucket}/raw/", output=f"{s3_bucket}/restored/", model=model,
                           value_range=(0.0, 1.0))
    t0 = time.monotonic()
    report = run_batch(options)
    first_s = time.monotonic() - t0
    assert (report.ok, report.failed) == (2, 1), report.failures
    counts = fault_proxy.counts
    assert counts.resets > 0 and counts.stalls == 1
    uploads_of_b = sum(1 for line in counts.requests if line.startswith("PUT") and "/restored/b.npy" in line)
    assert uploads_of_b > 1  # retried before giving up

    manifest = read_manifest(f"{s3_bucket}/restored")
    failed = manifest[storage.join(s3_bucket, "raw", "b.npy")]
    assert failed["status"] == "failed" and "b.npy" in failed["error"], failed
    fs, root = storage.filesystem(f"{s3_bucket}/restored")
    every = sorted(p.rsplit("/", 1)[1] for p in fs.find(root))  # hidden and temporary names included
    assert every == ["_manifest.parquet", "a.npy", "a.npy.stac.json", "c.npy", "c.npy.stac.json",
                     "collection.json"], every  # nothing partial, nothing left behind

    fault_proxy.heal()  # the store recovers: the rerun restores only what failed
    t1 = time.monotonic()
    again = run_batch(options)
    assert (again.already_done, again.processed, again.ok, again.failed) == (2, 1, 3, 0), again.failures
    manifest = read_manifest(f"{s3_bucket}/restored")
    for name, cube in cubes.items():
        row = manifest[storage.join(s3_bucket, "raw", f"{name}.npy")]
        assert row["status"] == "ok" and row["checksum"] == output_checksum(row["output_uri"])
        restored, _ = read_cube(row["output_uri"], storage_options=opts)
        np.testing.assert_allclose(restored, _restored(published_tiny, cube), rtol=0, atol=1e-4)
    print(f"\n[fault] S3 proxy: {counts.connections} connections, {counts.resets} reset, {counts.stalls} stalled; "
          f"b.npy uploaded {uploads_of_b}× then recorded as failed; job {first_s:.1f} s, "
          f"rerun {time.monotonic() - t1:.1f} s")
