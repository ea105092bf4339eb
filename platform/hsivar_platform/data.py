"""Ray Data pipelines: streaming training examples and the seeded test protocol.

Training (:func:`training_dataset`), streaming and bounded in memory for prefixes far larger than RAM::

    list the prefix (file names only)
      → flat_map: one row per (uri, window) from each file's header   (no pixel is read yet)
      → map_batches: read each window (only that block where the format allows), min–max to [0, 1],
                     random tile crops + dihedral augmentation          (fused with the next step)
      → map_batches: the all-in-one training degradation on CPU workers
      → iter_torch_batches in each trainer worker (streaming_split)

Every row carries at most one window; a multi-GB scene never lands in one block. A file that cannot
be read (corrupt, wrong band count, smaller than a tile) is skipped with a logged warning naming it —
one bad cube never stops training.

Validation and evaluation (:func:`protocol_dataset`): rows (uri, index, case) of the fixed, seeded
test protocol (:func:`hsivar.degrade.degrade_for_test`), read and degraded inside
``map_batches``. Random draws of the training stream come from fresh OS entropy per task, so epochs
differ; the protocol is reproducible bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hsivar.degrade import ProtocolCase, case_level, degrade_for_test, sample_training_degradation
from hsivar.io import cube_shape, read_cube, split_listing
from hsivar.tasks import DEFAULT_TASKS, weights_in
from hsivar.tiling import tile_starts
from hsivar_platform import storage
from hsivar_platform.console import WORKER_TAG
from hsivar_platform.pipeline_config import DataSpec, DemoData

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DataSplits:
    """URI prefixes of the training, validation and test cubes (val/test may be absent)."""

    train: str
    val: str | None
    test: str | None


# ------------------------------------------------------------------------------------------ locations


def demo_data_uri(work_dir: str | os.PathLike, demo: DemoData, bands: int) -> str:
    """Local folder of the demo dataset with these settings: ``<work_dir>/data/demo-<hash>``."""
    key = json.dumps({**demo.model_dump(), "bands": bands}, sort_keys=True)
    return os.path.join(str(work_dir), "data", "demo-" + hashlib.sha1(key.encode()).hexdigest()[:10])


def ensure_demo_data(work_dir: str | os.PathLike, demo: DemoData, bands: int) -> str:
    """Generate the demo dataset into the work dir on first use (reused afterwards); → its folder.

    The manifest is written last by :func:`~hsivar.synth.make_demo_dataset`, so its presence
    marks a complete dataset.
    """
    from hsivar.synth import make_demo_dataset

    out = demo_data_uri(work_dir, demo, bands)
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        log.info("generating the demo dataset into %s", out)
        make_demo_dataset(out, n_train=demo.n_train, n_val=demo.n_val, n_test=demo.n_test, size=demo.size,
                          bands=bands, format=demo.format, seed=demo.seed)
    return out


def resolve_splits(data: DataSpec, work_dir: str | os.PathLike, bands: int) -> DataSplits:
    """The train / val / test prefixes of ``data.source`` (``demo`` is generated into ``work_dir``).

    A source holding a ``train/`` folder is split by its ``train/``, ``val/``, ``test/`` folders;
    otherwise the whole prefix is training data. ``data.val`` / ``data.test`` override.
    """
    src = ensure_demo_data(work_dir, data.demo, bands) if data.source == "demo" else data.source
    if list_cubes(storage.join(src, "train"), required=False):
        train = storage.join(src, "train")
        val = storage.join(src, "val") if list_cubes(storage.join(src, "val"), required=False) else None
        test = storage.join(src, "test") if list_cubes(storage.join(src, "test"), required=False) else None
    else:
        train, val, test = src, None, None
    return DataSplits(train=train, val=data.val or val, test=data.test or test)


def list_cubes(prefix: str, required: bool = True) -> list[str]:
    """Sorted URIs of the cube files under ``prefix`` (recursive), by the one listing rule of
    :func:`hsivar.io.split_listing` (ENVI once, by its header; files that are not cubes left out).

    Raises:
        FileNotFoundError: ``required`` and no cube file under ``prefix`` (the message names it).
    """
    files, _ = split_listing(storage.list_files(prefix))
    if required and not files:
        raise FileNotFoundError(f"{prefix}: no cube files under this prefix")
    return sorted(files)


# ------------------------------------------------------------------------------------------ training rows


def scene_windows(row: dict[str, Any], *, window: int, tile: int, bands: int) -> list[dict[str, Any]]:
    """Rows ``(uri, row0, col0, size)`` covering one scene with square windows, from its header only.

    Windows have side ``max(tile, min(window, H, W))``; the last window of a row/column is flush with
    the border. An unreadable file, a band count other than ``bands`` or a scene smaller than one tile
    yields no row and a warning naming the file.
    """
    uri = str(row["uri"])
    try:
        C, H, W = cube_shape(uri, storage_options=storage.storage_options(uri))
    except Exception as e:  # CubeError, OSError, anything a broken file throws: skip, never stop training
        log.warning(WORKER_TAG + " skipping %s: cannot read its header: %s", uri, e)
        return []
    if C != bands:
        log.warning(WORKER_TAG + " skipping %s: %d bands, the model trains on %d", uri, C, bands)
        return []
    if H < tile or W < tile:
        log.warning(WORKER_TAG + " skipping %s: %d×%d pixels is smaller than the %d×%d model tile",
                    uri, H, W, tile, tile)
        return []
    side = max(tile, min(window, H, W))
    return [{"uri": uri, "row0": r, "col0": c, "size": side}
            for r in tile_starts(H, side, 0) for c in tile_starts(W, side, 0)]


def normalise(x: np.ndarray, value_range: tuple[float, float] | None, clip: bool = True) -> np.ndarray | None:
    """Map x to [0, 1] with ``value_range`` (min, max), clipped unless ``clip`` is False, or with its own min–max;
    None for a constant x (or an empty range)."""
    lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
    if not hi > lo:
        return None
    y = ((x - lo) / (hi - lo)).astype(np.float32)
    return np.clip(y, 0.0, 1.0) if value_range is not None and clip else y


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 dihedral transforms of the spatial axes of x (C, H, W): rot90 by k % 4, flipped if k ≥ 4."""
    y = np.rot90(x, k % 4, axes=(1, 2))
    return np.ascontiguousarray(y[:, :, ::-1] if k >= 4 else y)


def random_gain(x: np.ndarray, gain: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """x (C, H, W) in [0, 1] times a gain log-uniform in ``gain`` = (lo, hi), capped at 1 / max(x) (stays ≤ 1)."""
    g = float(np.exp(rng.uniform(np.log(gain[0]), np.log(gain[1]))))
    peak = float(x.max())
    if peak > 0:
        g = min(g, 1.0 / peak)
    return (x * np.float32(g)).astype(np.float32)


def read_crops(batch: dict[str, np.ndarray], *, bands: int, tile: int, crops_per_window: int, augment: bool,
               value_range: tuple[float, float] | None,
               gain: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Read each window of the batch and cut random ``tile``² crops from it (dihedral + gain augmentation).

    Args:
        batch: columns uri, row0, col0, size (one row per window).
    Returns:
        ``{"hq": (N, C, tile, tile) float32 in [0, 1]}``, N = crops_per_window × windows read; a
        window that cannot be read is skipped with a warning.
    """
    rng = np.random.default_rng()
    crops: list[np.ndarray] = []
    for uri, r0, c0, side in zip(batch["uri"], batch["row0"], batch["col0"], batch["size"]):
        uri = str(uri)
        try:
            win, _ = read_cube(uri, window=(int(r0), int(c0), int(side), int(side)),
                               storage_options=storage.storage_options(uri))
        except Exception as e:
            log.warning(WORKER_TAG + " skipping a window of %s at (%d, %d): %s", uri, r0, c0, e)
            continue
        win01 = normalise(win, value_range)
        if win01 is None:
            continue  # a constant window teaches nothing
        for _ in range(crops_per_window):
            r, c = rng.integers(0, win01.shape[1] - tile + 1), rng.integers(0, win01.shape[2] - tile + 1)
            crop = win01[:, r:r + tile, c:c + tile]
            crop = dihedral(crop, int(rng.integers(8))) if augment else np.ascontiguousarray(crop)
            crops.append(random_gain(crop, gain, rng) if gain is not None else crop)
    if not crops:
        return {"hq": np.zeros((0, bands, tile, tile), np.float32)}
    return {"hq": np.stack(crops)}


def degrade_batch(batch: dict[str, np.ndarray], *, tasks: Sequence[str] = DEFAULT_TASKS,
                  estimate: bool = False) -> dict[str, np.ndarray]:
    """Apply the training degradation sampler to each clean crop.

    Args:
        tasks: the families drawn from (the model's ``dag.tasks``), in the order of the weights returned.
        estimate: also compute each example's classical first estimate and kept entries
            (:func:`hsivar.training.example_estimate`), for models with ``first_estimate``.
    Returns:
        ``hq`` (N, C, S, S) and ``lq`` (N, C, S, S) float32 — clean in [0, 1], degraded (may leave
        [0, 1]: noise is not clipped) — ``task_weights`` (N, T) float32 (one-hot over the T families of ``tasks``)
        and with ``estimate`` ``x0`` (N, C, S, S) float32 and ``kept`` (N, C, S, S) uint8.
    """
    from hsivar.training import example_estimate

    hq = batch["hq"]
    rng = np.random.default_rng()
    cols: dict[str, list[np.ndarray]] = {"lq": [], "task_weights": [], "x0": [], "kept": []}
    for crop in hq:
        degraded, record = sample_training_degradation(crop, rng, tasks)
        lq = np.asarray(degraded, dtype=np.float32)
        cols["lq"].append(lq)
        cols["task_weights"].append(weights_in(record.weights, tasks))
        if estimate:
            x0, kept = example_estimate(lq, record)
            cols["x0"].append(x0)
            cols["kept"].append(kept.astype(np.uint8))
    names = ("lq", "task_weights", *(("x0", "kept") if estimate else ()))
    if not cols["lq"]:
        empty = {"lq": hq.copy(), "task_weights": np.zeros((0, len(tasks)), np.float32),
                 "x0": hq.copy(), "kept": hq.astype(np.uint8)}
        return {"hq": hq, **{k: empty[k] for k in names}}
    return {"hq": hq, **{k: np.stack(cols[k]) for k in names}}


TRAINING_BLOCK_BYTES = 4 * 2**20
"""Target size of the training stream's blocks. A Ray Data map task hands on its output a block at a time, and
under the default (128 MiB) a block is ≈256 examples with their first estimates — ≈10 s of work before a pass
delivers anything, paid again at every pass (docs/experiments.md)."""


def training_dataset(files: Sequence[str], data: DataSpec, *, bands: int, tile: int,
                     tasks: Sequence[str] = DEFAULT_TASKS, estimate: bool = False) -> ray.data.Dataset:
    """The streaming training dataset of ``files`` (see the module docstring).

    Args:
        files: cube URIs (:func:`list_cubes`).
        data: windows, crops, augmentation, normalisation.
        bands: the model's band count (other counts are skipped with a warning).
        tile: the model's tile side S (``cfg.vqvae.image_size``).
        tasks: the degradation families (the model's ``dag.tasks``).
    Returns:
        A Ray Dataset of rows ``hq`` (C, S, S), ``lq`` (C, S, S) float32, ``task_weights`` (T,) (T task families);
        with ``estimate`` (models with ``first_estimate``) also ``x0`` (C, S, S) and ``kept`` (C, S, S).
    """
    import ray.data

    if not files:
        raise ValueError("training_dataset: no files")
    ds = ray.data.from_items([{"uri": u} for u in files], override_num_blocks=min(len(files), 64))
    ds.context.target_max_block_size = TRAINING_BLOCK_BYTES
    ds = ds.flat_map(scene_windows, fn_kwargs={"window": data.window, "tile": tile, "bands": bands})
    ds = ds.map_batches(read_crops, batch_size=1, concurrency=data.read_concurrency,
                        fn_kwargs={"bands": bands, "tile": tile, "crops_per_window": data.crops_per_window,
                                   "augment": data.dihedral, "value_range": data.value_range,
                                   "gain": data.gain})
    # the same limit as the reads: Ray Data fuses the two steps into one task, which a limit on one alone would split
    return ds.map_batches(degrade_batch, batch_size=max(data.crops_per_window, 8), concurrency=data.read_concurrency,
                          fn_kwargs={"tasks": tuple(tasks), "estimate": estimate})


# ------------------------------------------------------------------------------------------ protocol


def protocol_rows(files: Sequence[str], cases: Sequence[ProtocolCase]) -> list[dict[str, Any]]:
    """One row per (cube, case): ``uri, index, task, level, case`` (index = position of the cube in ``files``)."""
    return [{"uri": str(u), "index": i, "task": c.task, "level": float(c.level), "case": c.name}
            for i, u in enumerate(files) for c in cases]


def _centre_window(shape: tuple[int, int, int], crop: int | None) -> tuple[int, int, int, int] | None:
    if crop is None:
        return None
    _, H, W = shape
    h, w = min(crop, H), min(crop, W)
    return ((H - h) // 2, (W - w) // 2, h, w)


def _centre_slices(shape: tuple[int, ...], side: int) -> tuple[slice, slice]:
    """The rows and columns of the centre ``side``² window of an array of ``shape`` (…, H, W)."""
    r0, c0, h, w = _centre_window((0, *shape[-2:]), side)  # type: ignore[misc]
    return slice(r0, r0 + h), slice(c0, c0 + w)


def degrade_case(row: dict[str, Any], *, bands: int, crop: int | None, seed: int = 2024,
                 norm_window: int | None = None, blur_margin: int = 0) -> dict[str, Any] | None:
    """Read one cube (its centre ``crop``² when given), normalise it to [0, 1] and apply one protocol case.

    The min–max normalisation uses the centre ``max(crop, norm_window)``² region (validation passes
    the training window, so tiles are scaled as in training), then the centre ``crop``² is kept and degraded.
    With ``blur_margin`` (pixels, needs ``crop``) a blur case blurs the centre ``crop + 2·blur_margin``² instead,
    scaled alike, and keeps its centre ``crop``²: the scene goes on beyond the crop's frame, as in a camera's blurred
    image, instead of the protocol's zero padding at the crop's edge (:func:`hsivar.deblur.border_of`).

    Returns:
        The row plus ``clean`` and ``degraded`` (C, H, W) float32, ``task_weights`` (T,) in :data:`~hsivar.tasks.TASKS`
        order,
        ``band_mask`` (C,) bool (the bands scored: the missing ones for bandmiss, else all) and
        ``ergas_ratio`` (1/s for sr, else 1); None (with a warning) when the cube cannot be used (too small for
        the blur margin, among others).
    """
    uri = str(row["uri"])
    opts = storage.storage_options(uri)
    task = str(row["task"])
    margin = blur_margin if crop is not None and task == "blur" else 0
    try:
        shape = cube_shape(uri, storage_options=opts)
        if shape[0] != bands:
            raise ValueError(f"{shape[0]} bands, the model restores {bands}")
        scaled = None if crop is None else max(crop, norm_window or 0)  # the region whose min–max scales the cube
        degraded_side = None if crop is None else crop + 2 * margin  # a smaller cube is degraded whole, as before
        if margin and min(shape[1:]) < degraded_side:  # type: ignore[operator]
            raise ValueError(f"{shape[1]}×{shape[2]} px: a blur margin of {margin} px around the {crop}-px "
                             f"crop needs {degraded_side} px a side")
        region = None if crop is None else max(scaled, degraded_side)  # type: ignore[type-var]
        cube, _ = read_cube(uri, window=_centre_window(shape, region), storage_options=opts)
    except Exception as e:
        log.warning(WORKER_TAG + " skipping %s in the test protocol: %s", uri, e)
        return None
    stats = cube if scaled is None else cube[(slice(None), *_centre_slices(cube.shape, scaled))]
    # scaled by the centre region's min–max; the blur margin beyond it may leave [0, 1]
    x = normalise(cube, (float(stats.min()), float(stats.max())), clip=False)
    if x is None:
        log.warning(WORKER_TAG + " skipping %s in the test protocol: constant cube", uri)
        return None
    if degraded_side is not None:
        x = np.ascontiguousarray(x[(slice(None), *_centre_slices(x.shape, degraded_side))])
    level = case_level(task, float(row["level"]))
    degraded, record = degrade_for_test(x, task, level, seed=seed, index=int(row["index"]))
    clean = x
    if margin:
        keep = (slice(None), *_centre_slices(x.shape, crop))  # type: ignore[arg-type]
        clean, degraded = np.ascontiguousarray(x[keep]), np.ascontiguousarray(np.asarray(degraded)[keep])
    mask = record.band_mask
    return {**{k: row[k] for k in ("uri", "index", "task", "level", "case")},
            "clean": clean, "degraded": np.asarray(degraded, dtype=np.float32),
            "task_weights": record.weights.astype(np.float32),
            "band_mask": np.ones(clean.shape[0], bool) if mask is None else mask,
            "ergas_ratio": float(1.0 / record.scale) if record.scale else 1.0}


def degrade_cases(batch: dict[str, np.ndarray], *, bands: int, crop: int | None, seed: int = 2024,
                  norm_window: int | None = None, blur_margin: int = 0) -> dict[str, Any]:
    """``map_batches`` form of :func:`degrade_case` (rows that fail are dropped)."""
    n = len(batch["uri"])
    rows = [degrade_case({k: v[i] for k, v in batch.items()}, bands=bands, crop=crop, seed=seed,
                         norm_window=norm_window, blur_margin=blur_margin) for i in range(n)]
    rows = [r for r in rows if r is not None]
    if not rows:
        return {}
    return {k: np.stack([r[k] for r in rows]) if isinstance(rows[0][k], np.ndarray) else np.array([r[k] for r in rows])
            for k in rows[0]}


def protocol_dataset(files: Sequence[str], cases: Sequence[ProtocolCase], *, bands: int, crop: int | None,
                     seed: int = 2024, norm_window: int | None = None, blur_margin: int = 0) -> ray.data.Dataset:
    """The seeded test protocol over ``files`` as a Ray Dataset (read and degraded in ``map_batches``).

    Args:
        crop: centre crop side in pixels (validation: the model tile), None for whole cubes.
        norm_window: side of the centre region whose min–max normalises the crop (default: the crop).
        blur_margin: pixels of scene around the crop that a blur case blurs too (0: the protocol's zero padding
            at the crop's edge; see :func:`degrade_case`).
    Returns:
        Rows of :func:`degrade_case` (one per cube and case, in a stable order).
    """
    import ray.data

    rows = protocol_rows(files, cases)
    if not rows:
        raise ValueError("protocol_dataset: no (cube, case) rows")
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 32))
    return ds.map_batches(degrade_cases, batch_size=1, fn_kwargs={"bands": bands, "crop": crop, "seed": seed,
                                                                  "norm_window": norm_window,
                                                                  "blur_margin": blur_margin})


__all__ = [
    "DataSplits", "degrade_case", "degrade_cases", "degrade_batch", "demo_data_uri", "dihedral", "ensure_demo_data",
    "list_cubes", "normalise", "protocol_dataset", "protocol_rows", "random_gain", "read_crops", "resolve_splits",
    "scene_windows", "training_dataset",
]
