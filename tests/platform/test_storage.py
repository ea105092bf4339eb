"""Storage URIs against real backends: local paths, file://, and a local S3-compatible server."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
from hsivar_platform import storage


def test_local_paths_and_file_uris(tmp_path: Path) -> None:
    storage.write_bytes(tmp_path / "a" / "x.npy", b"123")
    storage.write_bytes(f"file://{tmp_path}/a/_manifest.parquet", b"m")
    storage.write_bytes(storage.join(str(tmp_path), "a", "b", "y.h5"), b"45")
    assert storage.list_files(tmp_path) == [str(tmp_path / "a" / "b" / "y.h5"), str(tmp_path / "a" / "x.npy")]
    assert storage.list_files(tmp_path, suffixes=[".npy"]) == [str(tmp_path / "a" / "x.npy")]
    assert storage.read_bytes(f"file://{tmp_path}/a/x.npy") == b"123"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["_manifest.parquet", "b", "x.npy"]  # no temp file
    assert storage.list_files(tmp_path / "nope") == []


def test_s3_round_trip_and_directories(s3_bucket: str, tmp_path: Path) -> None:
    uri = storage.join(s3_bucket, "raw", "scene_1.tif")
    storage.write_bytes(uri, b"cube")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"cube"
    assert storage.list_files(storage.join(s3_bucket, "raw")) == [uri]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"w")
    remote = storage.upload_dir(tmp_path / "model", storage.join(s3_bucket, "models", "m1"))
    local = storage.download_dir(remote, tmp_path / "copy")
    assert (local / "config.json").read_text() == "{}" and (local / "model.safetensors").read_bytes() == b"w"
    fs, path = storage.pyarrow_filesystem(storage.join(s3_bucket, "ckpt"))
    assert isinstance(fs, pafs.S3FileSystem)
    with fs.open_output_stream(f"{path}/probe") as f:
        f.write(b"ok")
    assert storage.read_bytes(storage.join(s3_bucket, "ckpt", "probe")) == b"ok"
