"""Fixtures of the cube I/O tests: tiny real files in every format, written with the formats' own
libraries (numpy, h5py, scipy.io, rasterio, hand-written ENVI headers), independently of write_cube."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
import rasterio
import scipy.io
from affine import Affine

from hsivar.io import CubeError, CubeMeta

SOURCES = ["npy", "npz", "hdf5", "mat", "mat73", "geotiff", "envi_bsq", "envi_bil", "envi_bip"]
"""Kinds of fixture file :meth:`Reference.make` writes."""


def _reference_cube() -> np.ndarray:
    cube = np.random.default_rng(0).uniform(0.0, 1000.0, size=(8, 12, 16)).astype(np.float32)
    cube.setflags(write=False)  # shared by every test: copy before changing it
    return cube


@dataclass(frozen=True)
class Reference:
    """The reference cube of the tests, its metadata, and writers of fixture files holding it.

    Attributes:
        cube: float32 (C, H, W) = (8, 12, 16), values in [0, 1000); distinct sizes so that any axis
            mix-up changes the shape. Read-only.
        wavelengths: band centres in nm (400, 440, ..., 680).
        names: band names ``"band 0"``...
        transform: 10 m pixels, north up, UTM 33N coordinates.
    """

    cube: np.ndarray = field(default_factory=_reference_cube)
    wavelengths: list[float] = field(default_factory=lambda: [400.0 + 40.0 * i for i in range(8)])
    names: list[str] = field(default_factory=lambda: [f"band {i}" for i in range(8)])
    transform: Affine = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the reference cube."""
        return self.cube.shape

    def meta(self) -> CubeMeta:
        """A fresh CubeMeta with every field a format may store (wavelengths, FWHM, names, CRS, transform,
        nodata)."""
        return CubeMeta(
            bands=self.shape[0],
            wavelengths=list(self.wavelengths),
            fwhm=[10.0 + i for i in range(self.shape[0])],
            band_names=list(self.names),
            crs="EPSG:32633",
            transform=tuple(self.transform)[:6],
            nodata=-1.0,
        )

    @staticmethod
    def write_mat73(path: Path, **variables: np.ndarray) -> None:
        """Write variables the way MATLAB's `save -v7.3` does: HDF5 behind a 512-byte text header, each
        array stored with its axes reversed (MATLAB is column-major), a MATLAB_class attribute."""
        classes = {"float64": "double", "float32": "single", "uint16": "uint16"}
        with h5py.File(path, "w", userblock_size=512) as f:
            for name, value in variables.items():
                ds = f.create_dataset(name, data=np.ascontiguousarray(np.asarray(value).T))
                ds.attrs["MATLAB_class"] = np.bytes_(classes[np.asarray(value).dtype.name])
            # A char variable as MATLAB writes it (uint16 codes): must never be taken for the cube.
            text = np.frombuffer("hyperspectral".encode("utf-16-le"), dtype=np.uint16)[:, None]
            f.create_dataset("description", data=text).attrs["MATLAB_class"] = np.bytes_("char")
            f.create_group("#refs#")
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        with open(path, "r+b") as f:
            f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")

    @staticmethod
    def write_envi(data_path: Path, cube: np.ndarray, interleave: str, header_extra: str = "") -> Path:
        """Write an ENVI data file and its header (``data_path`` with suffix .hdr) by hand; returns the header."""
        axes = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave]
        np.ascontiguousarray(cube.transpose(axes)).astype("<f4").tofile(data_path)
        hdr = data_path.with_suffix(".hdr")
        hdr.write_text(
            "ENVI\n"
            "description = {test cube}\n"
            f"samples = {cube.shape[2]}\nlines = {cube.shape[1]}\nbands = {cube.shape[0]}\n"
            "header offset = 0\nfile type = ENVI Standard\ndata type = 4\n"
            f"interleave = {interleave}\nbyte order = 0\n" + header_extra
        )
        return hdr

    @staticmethod
    def write_geotiff(path: Path, cube: np.ndarray, **profile: object) -> None:
        """Write a (C, H, W) cube as a plain GeoTIFF with rasterio (strips, directory first)."""
        c, h, w = cube.shape
        with rasterio.open(
            path, "w", driver="GTiff", width=w, height=h, count=c, dtype=cube.dtype.name, **profile
        ) as ds:
            ds.write(cube)

    def make(self, kind: str, folder: Path) -> Path:
        """Write the reference cube as ``kind`` (one of :data:`SOURCES`) into ``folder``; returns the path to read."""
        wl = np.asarray(self.wavelengths)
        c, h, w = self.shape
        cube = self.cube
        if kind == "npy":
            path = folder / "cube.npy"
            np.save(path, cube)
        elif kind == "npz":
            path = folder / "cube.npz"
            np.savez(path, reflectance=cube, wavelengths=wl)
        elif kind == "hdf5":
            path = folder / "cube.h5"
            with h5py.File(path, "w") as f:
                f.create_dataset("data/cube", data=cube, chunks=(1, 6, 8))
                f.create_dataset("data/wavelengths", data=wl)
                f.create_dataset("data/quality", data=np.zeros(h * w))
        elif kind == "mat":
            path = folder / "cube.mat"
            scipy.io.savemat(path, {"hsi": cube.transpose(1, 2, 0), "wavelengths": wl[None, :]})
        elif kind == "mat73":
            path = folder / "cube73.mat"
            self.write_mat73(path, hsi=cube.transpose(1, 2, 0), wavelengths=wl[None, :])
        elif kind == "geotiff":
            path = folder / "cube.tif"
            with rasterio.open(
                path, "w", driver="GTiff", width=w, height=h, count=c, dtype="float32",
                crs="EPSG:32633", transform=self.transform, nodata=-1.0,
            ) as ds:  # fmt: skip
                ds.write(cube)
                for i in range(c):
                    ds.set_band_description(i + 1, self.names[i])
                    ds.update_tags(i + 1, wavelength=str(self.wavelengths[i]))
        elif kind.startswith("envi_"):
            interleave = kind.split("_")[1]
            if interleave == "bil":  # micrometres in the header must come back as nanometres
                waves = "wavelength units = Micrometers\nwavelength = {" + ", ".join(f"{v / 1000}" for v in wl) + "}\n"
            else:
                waves = "wavelength units = Nanometers\nwavelength = {" + ", ".join(str(v) for v in wl) + "}\n"
            names = "band names = {" + ", ".join(self.names) + "}\n"
            mapinfo = "map info = {UTM, 1, 1, 500000.0, 4000000.0, 10.0, 10.0, 33, North, WGS-84}\n"
            path = self.write_envi(folder / "cube.img", cube, interleave, waves + names + mapinfo)
        else:
            raise AssertionError(kind)
        return path


@pytest.fixture(scope="session")
def ref() -> Reference:
    """The reference cube, its metadata and the fixture-file writers."""
    return Reference()


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest, ref: Reference, tmp_path: Path) -> tuple[str, Path]:
    """(kind, path) of the reference cube written as each kind of :data:`SOURCES` in turn."""
    return request.param, ref.make(request.param, tmp_path)


@pytest.fixture
def memfs() -> Iterator[fsspec.AbstractFileSystem]:
    """fsspec's in-memory filesystem (``memory://`` URIs), empty before and after the test."""
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    yield fs
    fs.store.clear()


@contextlib.contextmanager
def _raises_naming(path: Path | str, match: str) -> Iterator[pytest.ExceptionInfo[CubeError]]:
    with pytest.raises(CubeError, match=match) as info:
        yield info
    assert str(path) in str(info.value), str(info.value)


@pytest.fixture
def raises_naming() -> Callable[[Path | str, str], contextlib.AbstractContextManager]:
    """``with raises_naming(path, match):`` expects a CubeError matching ``match`` that names ``path``."""
    return _raises_naming
