"""Cube I/O on s3:// URIs against a real local S3-compatible server (moto), through fsspec/s3fs."""

from __future__ import annotations

import numpy as np
import pytest

from hsivar.io import CubeError, CubeMeta, read_cube, write_bytes_atomic, write_cube


@pytest.mark.parametrize("ext", ["npy", "h5", "tif", "mat"])
def test_s3_round_trip_and_window(s3_server: str, s3_bucket: str, ext: str) -> None:
    rng = np.random.default_rng(0)
    cube = rng.random((5, 12, 16), dtype=np.float32)
    uri = f"{s3_bucket}/raw/scene.{ext}"
    opts = {"client_kwargs": {"endpoint_url": s3_server}}
    write_cube(uri, cube, CubeMeta(wavelengths=[450.0, 500.0, 550.0, 600.0, 650.0]), storage_options=opts)
    back, meta = read_cube(uri, storage_options=opts)
    np.testing.assert_allclose(back, cube, rtol=0, atol=1e-6)
    assert meta.bands == 5
    win, _ = read_cube(uri, window=(2, 3, 4, 5), bands=[1, 3], storage_options=opts)
    np.testing.assert_allclose(win, cube[[1, 3], 2:6, 3:8], atol=1e-6)


def test_s3_missing_object_names_the_uri(s3_server: str, s3_bucket: str) -> None:
    uri = f"{s3_bucket}/raw/nothing.npy"
    with pytest.raises(CubeError, match="nothing.npy"):
        read_cube(uri, storage_options={"client_kwargs": {"endpoint_url": s3_server}})


def test_s3_write_bytes_atomic(s3_server: str, s3_bucket: str) -> None:
    import s3fs

    opts = {"client_kwargs": {"endpoint_url": s3_server}}
    write_bytes_atomic(f"{s3_bucket}/run/config.json", b'{"a": 1}', storage_options=opts)
    fs = s3fs.S3FileSystem(**opts)
    assert fs.cat_file(f"{s3_bucket}/run/config.json".removeprefix("s3://")) == b'{"a": 1}'


@pytest.mark.parametrize("ext", ["npy", "tif", "hdr"])
def test_s3_failed_write_leaves_no_partial_object(s3_server: str, s3_bucket: str, ext: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that fails after writing part of its file, against the real S3 server: a new key gets no object
    at all, an existing one keeps its old bytes (ENVI: neither the .hdr nor the .img of the new cube)."""
    import dataclasses

    import s3fs

    from hsivar.io import FORMAT_TABLE, detect_format

    opts = {"client_kwargs": {"endpoint_url": s3_server}}
    fs = s3fs.S3FileSystem(**opts)
    bucket = s3_bucket.removeprefix("s3://")
    old = np.random.default_rng(1).random((4, 8, 10), dtype=np.float32)
    write_cube(f"{s3_bucket}/kept/scene.{ext}", old, storage_options=opts)
    before = {key: fs.cat_file(key) for key in fs.find(bucket)}
    assert before

    fmt = detect_format(f"x.{ext}")
    row = FORMAT_TABLE[fmt]

    def broken(paths, arr, meta):
        row.write(paths, arr, meta)  # every file complete on the local side ...
        with open(paths[0], "ab") as f:
            f.write(b"partial")
        raise OSError("connection reset")  # ... then the writer fails before anything is put

    monkeypatch.setitem(FORMAT_TABLE, fmt, dataclasses.replace(row, write=broken))
    new = old + 1
    for key in (f"{s3_bucket}/fresh/scene.{ext}", f"{s3_bucket}/kept/scene.{ext}"):
        with pytest.raises(CubeError, match="connection reset"):
            write_cube(key, new, storage_options=opts)
    fs.invalidate_cache()
    assert {key: fs.cat_file(key) for key in fs.find(bucket)} == before  # no new object, the old bytes
    monkeypatch.undo()
    back, _ = read_cube(f"{s3_bucket}/kept/scene.{ext}", storage_options=opts)
    np.testing.assert_array_equal(back, old)
