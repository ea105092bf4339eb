"""Atomic writes: write_cube, staged and write_bytes_atomic leave the old file or the whole new one,
never a partial file, and remove their temporaries."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import h5py
import pytest
import spectral.io.envi

from hsivar.io import FORMAT_TABLE, WRITE_FORMATS, CubeError, CubeMeta, staged, write_bytes_atomic, write_cube
from hsivar.io.location import resolve_location


class Unconvertible:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("conversion failed")


def test_failed_conversion_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(CubeError, match="cannot convert") as err:
        write_cube(tmp_path / "x.tif", Unconvertible())
    assert str(tmp_path / "x.tif") in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_crash_mid_write_leaves_no_file(ref, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    row = FORMAT_TABLE[fmt]

    def crash(paths, arr, meta):
        row.write(paths, arr, meta)  # the temporaries are complete on disk ...
        with open(paths[0], "ab") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # ... when the process is interrupted before the rename

    monkeypatch.setitem(FORMAT_TABLE, fmt, dataclasses.replace(row, write=crash))
    cube = ref.cube if row.band_counts is None else ref.cube[: row.band_counts[-1]]
    dtype = None if row.dtypes is None or "float32" in row.dtypes else "uint8"
    with pytest.raises(KeyboardInterrupt):
        write_cube(tmp_path / f"x{row.write_suffix}", cube, CubeMeta(bands=len(cube)), dtype=dtype)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(ref, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.h5"
    write_cube(path, ref.cube)
    before = path.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", broken)  # fails inside the real writer
    with pytest.raises(CubeError, match="disk full") as err:
        write_cube(path, ref.cube + 1)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]


def test_envi_header_failure_leaves_neither_file(ref, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise OSError("header write failed")

    monkeypatch.setattr(spectral.io.envi, "write_envi_header", broken)
    with pytest.raises(CubeError, match="header write failed"):
        write_cube(tmp_path / "x.hdr", ref.cube)
    assert list(tmp_path.iterdir()) == []


def test_envi_renames_data_before_header(ref, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moved = []
    real_replace = os.replace

    def spy(src, dst):
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_cube(tmp_path / "x.hdr", ref.cube)
    assert moved == ["x.img", "x.hdr"]


def test_failed_remote_write_leaves_nothing(ref, memfs, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(paths, arr, meta):
        Path(paths[0]).write_bytes(b"half")
        raise OSError("interrupted")

    monkeypatch.setitem(FORMAT_TABLE, "npy", dataclasses.replace(FORMAT_TABLE["npy"], write=broken))
    with pytest.raises(CubeError, match="interrupted"):
        write_cube("memory://bucket/x.npy", ref.cube)
    assert memfs.find("/bucket") == []


# ------------------------------------------------------------------------------------------------
# The atomic write on its own


def test_write_bytes_atomic_local_replaces_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "deep" / "doc.json"
    write_bytes_atomic(path, b"old")  # the parent folders are created
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    write_bytes_atomic(str(path), b"new content")
    assert path.read_bytes() == b"new content"
    assert synced, "the data must reach the disk before the rename"
    assert [p.name for p in path.parent.iterdir()] == ["doc.json"]  # no temporary left


def test_write_bytes_atomic_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "doc.json"
    write_bytes_atomic(path, b"old")

    def broken(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="rename refused"):
        write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_write_bytes_atomic_remote_is_one_put(memfs, monkeypatch: pytest.MonkeyPatch) -> None:
    puts = []
    real_put = type(memfs).put_file
    monkeypatch.setattr(type(memfs), "put_file", lambda self, lpath, rpath, **kw: puts.append(rpath)
                        or real_put(self, lpath, rpath, **kw))  # fmt: skip
    write_bytes_atomic("memory://bucket/a/doc.json", b"payload")
    assert memfs.cat_file("/bucket/a/doc.json") == b"payload"
    assert puts == ["/bucket/a/doc.json"]


def test_staged_moves_files_in_order_and_cleans_up_on_error(tmp_path: Path) -> None:
    finals = [resolve_location(tmp_path / "data.img"), resolve_location(tmp_path / "data.hdr")]
    with staged(finals) as temps:
        assert [Path(t).parent for t in temps] == [tmp_path, tmp_path]  # same folder: rename, not copy
        for tmp, text in zip(temps, (b"data", b"header")):
            Path(tmp).write_bytes(text)
    assert (tmp_path / "data.img").read_bytes() == b"data" and (tmp_path / "data.hdr").read_bytes() == b"header"
    with pytest.raises(RuntimeError), staged([resolve_location(tmp_path / "other.npy")]) as (tmp,):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.hdr", "data.img"]
