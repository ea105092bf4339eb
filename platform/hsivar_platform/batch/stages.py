"""The three Ray Data stages of the batch job, one input file per row.

    read_and_tile (CPU task)  → restore (actor pool holding the model) → finish_and_write (CPU task)

Each stage is a step of the one restoration path of :mod:`hsivar.restore`: :func:`~hsivar.restore.prepare_cube`,
:meth:`~hsivar.restore.Restorer.restore_prepared`, :func:`~hsivar.restore.finish`. A row that fails keeps its
error in the ``error`` column and passes through the later stages untouched; the last stage turns every row
into a manifest record, so one bad file never stops the job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from hsivar.degrade.observation import Observation
from hsivar.io import read_cube
from hsivar.restore import NothingToRestore, PreparedCube, calibrated_std, finish, prepare_cube
from hsivar.tasks import TaskArg, dominant_task
from hsivar_platform import storage
from hsivar_platform.batch import stac
from hsivar_platform.batch.output import meta_from_json, meta_to_json, write_glt, write_output

log = logging.getLogger(__name__)


def _first(batch: Mapping[str, Any], key: str) -> Any:
    value = batch[key][0]
    return value.item() if isinstance(value, np.generic) else value


def _str(batch: Mapping[str, Any], key: str) -> str:
    return str(_first(batch, key))


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor of a row's array (Ray Data hands out read-only arrays: copy those)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def describe(exc: BaseException, src: str) -> str:
    """The manifest's error text for ``exc`` raised while handling ``src`` (names the file)."""
    msg = str(exc) or type(exc).__name__
    if src not in msg:
        msg = f"{src}: {msg}"
    return msg if isinstance(exc, ValueError) else f"{type(exc).__name__}: {msg}"


def _bits(mask: np.ndarray | None) -> np.ndarray:
    """A (C, H, W) bool mask as packed bits (an empty array for None), to travel in a row."""
    return np.zeros(0, np.uint8) if mask is None else np.packbits(mask.reshape(-1))


def _unbits(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The inverse of :func:`_bits`."""
    return None if bits.size == 0 else np.unpackbits(bits, count=math.prod(shape)).reshape(shape).astype(bool)


def _prepared(batch: Mapping[str, Any], tile: int, overlap: int, *, for_model: bool) -> PreparedCube:
    """The :class:`PreparedCube` a row describes, with its kept entries: for the model stage with the normalised
    cube, the first estimate and the observation (what consistency needs); for the last stage with the nodata
    mask."""
    shape = tuple(int(v) for v in batch["shape"][0])
    nodata_mask = _unbits(batch["mask"][0], shape)
    nodata = float(_first(batch, "nodata")) if batch["mask"][0].size else None
    lo, scale = float(_first(batch, "lo")), float(_first(batch, "scale"))
    kept = _unbits(batch["kept"][0], shape)
    source = batch["source"][0] if kept is not None else None
    if for_model:
        facts = json.loads(_str(batch, "observation"))
        obs = Observation.from_facts(facts, _unbits(batch["missing"][0], shape)) if facts else None
        estimate = batch["estimate01"][0]
        wavelengths = json.loads(_str(batch, "wavelengths") or "null")
        return PreparedCube.described(shape, tile, overlap, lo, scale, None, nodata,  # type: ignore[arg-type]
                                      _tensor(batch["cube01"][0]), observation=obs,
                                      estimate01=_tensor(estimate) if estimate.size else None,
                                      wavelengths=tuple(wavelengths) if wavelengths else None, kept=kept,
                                      source=source)
    return PreparedCube.described(shape, tile, overlap, lo, scale, nodata_mask, nodata,  # type: ignore[arg-type]
                                  kept=kept, source=source)


def read_and_tile(batch: dict[str, np.ndarray], *, bands: int, tile: int, overlap: int,
                  value_range: tuple[float, float] | None = None, estimate: bool = False,
                  wavelengths: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Stage 1: read one input and :func:`~hsivar.prepared.prepare_cube` it, the entries its bad band list or mask
    marks as not observed (``meta.missing``) included (the normalised cube, its range, nodata mask, observation
    with its missing entries, first estimate when the model uses one, and the exactly observed entries travel
    on); errors become the row's ``error`` (a mask of the wrong shape: the file failed; a mask leaving nothing
    observed: skipped, like a cube that is nodata everywhere). The first estimate interpolates over the file's band
    centres (nm), else ``wavelengths`` (the model's). Without ``value_range`` a cube is normalised by its own
    min–max, an image (PNG, JPEG) by its dtype's full range."""
    t0 = time.perf_counter()
    src = _str(batch, "input_uri")
    error, skip, prep, meta, shape = "", False, None, None, (0, 0, 0)
    try:
        cube, meta = read_cube(src, storage_options=storage.storage_options(src), allow_nonfinite=True)
        shape = cube.shape
        full = meta.extras.get("full_range")  # an image's values are fractions of its dtype's full scale
        prep = prepare_cube(cube, bands, tile, overlap, nodata=meta.nodata,
                            value_range=value_range or (tuple(full) if full else None),
                            missing=meta.missing, estimate=estimate, wavelengths=meta.wavelengths or wavelengths)
    except Exception as exc:  # one bad file is a manifest row, never a failed job
        error, skip = describe(exc, src), isinstance(exc, NothingToRestore)
    ok = prep is not None
    obs = prep.observation if ok else None
    empty = np.zeros((bands, 0, 0), np.float32)
    return {
        "input_uri": batch["input_uri"], "output_uri": batch["output_uri"],
        "uncertainty_uri": batch["uncertainty_uri"], "kept_uri": batch["kept_uri"], "item_id": batch["item_id"],
        "error": np.array([error]),
        "skip": np.array([skip]),
        "cube01": (prep.cube01.numpy() if ok else empty)[None],
        "estimate01": (prep.estimate01.numpy() if ok and prep.estimate01 is not None else empty)[None],
        "shape": np.array([shape if len(shape) == 3 else (0, 0, 0)], dtype=np.int64),
        "lo": np.array([prep.lo if ok else 0.0]),
        "scale": np.array([prep.scale if ok else 1.0]),
        "nodata": np.array([prep.nodata if ok and prep.nodata is not None else np.nan]),
        "mask": _bits(prep.mask if ok else None)[None],
        "observation": np.array([json.dumps(obs.facts()) if obs is not None else "{}"]),
        "observation_summary": np.array([json.dumps(obs.summary()) if obs is not None else ""]),
        "missing": _bits(obs.missing if obs is not None else None)[None],
        "kept": _bits(prep.kept if ok else None)[None],
        "source": (prep.source if ok and prep.source is not None else empty)[None],
        "meta": np.array([meta_to_json(meta) if meta is not None else "{}"]),
        "wavelengths": np.array([json.dumps(list(prep.wavelengths) if ok and prep.wavelengths else None)]),
        "seconds": np.array([time.perf_counter() - t0]),
    }


class Restore:
    """Stage 2 (actor pool): holds the model and restores each row's cube, tile batch by tile batch, blended
    per sample (the blending is cheap next to the model and keeps what leaves the actor cube-sized)."""

    def __init__(self, model: str, device: str, task: TaskArg, samples: int, seed: int, batch_size: int,
                 tile: int, overlap: int, uncertainty: bool = False, compiled: bool = False) -> None:
        """Load the model at URI ``model`` (pinned by the driver: a registry URI names its version) on
        ``device`` (``auto``: CUDA when this actor has a GPU); ``uncertainty``: add the calibrated error bar of a
        calibrated model to each row (it needs the input and first estimate, which only this stage holds);
        ``compiled``: CUDA graphs on a GPU, compiled decoding steps on a CPU (:class:`~hsivar.restore.Restorer`)."""
        from hsivar_platform.model_uri import load_restorer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.restorer = load_restorer(model, device=device, compiled=compiled)
        self.task, self.samples, self.seed, self.batch_size = task, samples, seed, batch_size
        self.tile, self.overlap = tile, overlap
        self.uncertainty = uncertainty and self.restorer.calibrated
        log.info("model actor ready: %s on %s", model, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add ``restored`` (1, samples, C, H, W) in [0, 1], ``task_weights`` (1, N) and ``std01`` (1, C, H, W), the
        calibrated error bar in [0, 1] units (empty unless asked for and the model is calibrated), to the row; when
        a blur width, haze or an exposure was estimated (:meth:`~hsivar.restore.Restorer.observe`), the row's kept
        entries and observation follow."""
        t0 = time.perf_counter()
        error = _str(batch, "error")
        restored = np.zeros((1, self.samples, 0, 0, 0), np.float32)
        weights = np.zeros((1, len(self.restorer.tasks)), np.float32)
        std01 = np.zeros((1, 0, 0, 0), np.float32)
        reobserved: dict[str, np.ndarray] = {}
        if not error:
            try:
                prep = _prepared(batch, self.tile, self.overlap, for_model=True)
                seen = self.restorer.observe(prep, self.task)  # blur width, haze, exposure: only the model tells
                if seen is not prep:  # the kept entries narrowed to what the new observation calls exact
                    source = seen.source if seen.source is not None else np.zeros((prep.shape[0], 0, 0), np.float32)
                    reobserved = {"kept": _bits(seen.kept)[None], "source": source[None],
                                  "observation_summary": np.array([json.dumps(seen.observation.summary())])}
                out = self.restorer.restore_prepared(seen, self.task, samples=self.samples, seed=self.seed,
                                                     batch_size=self.batch_size)
                restored, weights = out.samples01.numpy()[None], np.asarray([out.task_weights], np.float32)
                if self.uncertainty:
                    coef = self.restorer.uncertainty_coefficients(out.task_weights)
                    std01 = calibrated_std(seen, out.samples01, coef)[None]
            except Exception as exc:
                error = describe(exc, _str(batch, "input_uri"))
        out_row = {k: v for k, v in batch.items() if k not in ("cube01", "estimate01", "missing")}
        out_row.update(reobserved)
        out_row.update(error=np.array([error]), restored=restored, task_weights=weights, std01=std01,
                       seconds=batch["seconds"] + (time.perf_counter() - t0))
        return out_row


class ReadRestoreWrite(Restore):
    """The three stages in one model actor, file after file (for pools without GPUs): on CPUs the actors keep every
    core busy by themselves, and no task worker processes start beside them (each would import torch and the
    model code again, seconds of CPU before the first output)."""

    def __init__(self, read: dict[str, Any], write: dict[str, Any], **restore: Any) -> None:
        """``read``, ``write``: the keyword arguments of :func:`read_and_tile` and :func:`finish_and_write`;
        ``restore``: those of :class:`Restore`."""
        super().__init__(**restore)
        self.read, self.write = read, write

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One input row → its manifest record, as the three stages would give it."""
        return finish_and_write(super().__call__(read_and_tile(batch, **self.read)), **self.write)


def finish_and_write(batch: dict[str, np.ndarray], *, output_dtype: str, tile: int, overlap: int, model: str,
                     model_requested: str, model_version: str, tasks: tuple[str, ...], samples: int = 1,
                     seed: int = 0, output_prefix: str = "") -> dict[str, np.ndarray]:
    """Stage 3: :func:`~hsivar.prepared.finish` the restored samples and write the output (its uncertainty, the
    mask of entries kept as observed when there are some, the geolocation table of a swath product, and its STAC
    Item when the row has an ``item_id``) → the row's manifest record as JSON."""
    t0 = time.perf_counter()
    src, dst, std_dst = _str(batch, "input_uri"), _str(batch, "output_uri"), _str(batch, "uncertainty_uri")
    error = _str(batch, "error")
    shape = [int(v) for v in batch["shape"][0]]
    row: dict[str, Any] = {"output_uri": dst, "shape": shape if any(shape) else None, "bands": shape[0] or None,
                           "model": model, "model_requested": model_requested, "model_version": model_version}
    status = "failed"
    if not error:
        try:
            meta = meta_from_json(_str(batch, "meta"))
            prep = _prepared(batch, tile, overlap, for_model=False)
            std01 = batch["std01"][0] if batch["std01"][0].size else None  # the calibrated bar, else sample spread
            mean, std = finish(prep, _tensor(batch["restored"][0]), std01)
            dtype = meta.dtype if output_dtype == "source" else "float32"
            row["checksum"] = write_output(dst, mean, meta, dtype=dtype)
            if std_dst:
                std_meta = dataclasses.replace(meta, nodata=float("nan") if prep.mask is not None else None)
                row["uncertainty_uri"] = std_dst
                row["uncertainty_checksum"] = write_output(std_dst, std, std_meta, dtype="float32")
            kept_dst = _str(batch, "kept_uri")
            if kept_dst and prep.kept is not None:
                kept_meta = dataclasses.replace(meta, nodata=None)
                write_output(kept_dst, prep.kept.astype(np.uint8), kept_meta, dtype="uint8")
                row["kept_uri"] = kept_dst
            row["observation"] = _str(batch, "observation_summary") or None
            weights = [float(v) for v in batch["task_weights"][0]]
            row.update(task=dominant_task(weights, tasks), task_weights=json.dumps(dict(zip(tasks, weights))),
                       tiles=len(prep.coords))
            status = "ok"
            try:  # metadata beside a good output: its failure is a warning on the row, never a failed restoration
                sidecars = {k: row[f"{k}_uri"] for k in ("uncertainty", "kept") if row.get(f"{k}_uri")}
                glt = write_glt(src, dst, meta)
                if glt:
                    sidecars["glt"] = glt
                item_id = _str(batch, "item_id")
                if item_id:
                    provenance = stac.Provenance(
                        input_uri=src, input_sha256=storage.sha256(src), model=model,
                        model_requested=model_requested, model_version=model_version, task=row["task"],
                        task_weights=dict(zip(tasks, weights)), samples=samples, seed=seed)
                    item = stac.output_item(dst, meta, mean.shape, provenance, item_id=item_id,
                                            output_sha256=row["checksum"], assets=sidecars)
                    row["stac_item_uri"] = stac.write_item(item, dst, output_prefix)
                    # what the Collection needs of the Item, so the driver does not read it back
                    row["stac_item"] = {"id": item.id, "bbox": item.bbox,
                                        "properties": {"datetime": stac.time_text(item.datetime)}}
            except Exception as exc:
                row["warning"] = f"metadata not written: {describe(exc, src)}"
                log.warning("%s", row["warning"])
        except Exception as exc:
            error = describe(exc, src)
    if error and bool(_first(batch, "skip")):
        status = "skipped"
    row.update(input_uri=src, status=status, error=error,
               seconds=float(_first(batch, "seconds")) + time.perf_counter() - t0,
               finished_at=datetime.now(timezone.utc).isoformat())
    return {"record": np.array([json.dumps(row)])}
