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
