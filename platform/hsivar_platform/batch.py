"""Batch restoration: every cube under an input prefix → the same keys under an output prefix.

``run_batch(BatchOptions(input="s3://archive/raw/", output="s3://archive/restored/", model=URI))``
runs a Ray Data pipeline, one row per input file::

    list (driver) → read + normalise + tile (CPU tasks) → restore tiles (actor pool holding the model,
    one GPU per actor when the cluster has GPUs) → blend + write (CPU tasks) → manifest rows (driver)

Every file is restored exactly as :meth:`hsivar.restore.Restorer.restore` would restore it (same
per-cube min–max normalisation, the same tiles in the same batches with the same seeds, the same
blending), so the batch output equals ``Restorer.restore`` on the same file. Outputs go to the input's
key under the output prefix, in the input's format, back in the input's units and dtype; GeoTIFF keeps
its CRS, transform, nodata and band names / wavelengths (:func:`hsivar.data.io.write_cube`). With
``samples > 1`` and ``uncertainty=True`` a per-pixel standard deviation cube is written beside each
output as ``<stem>.std<ext>`` (float32). Voxels equal to a GeoTIFF's / HDF5's nodata value are left
out of the normalisation range and written back as nodata.

**Manifest.** ``<output>/_manifest.parquet`` holds one row per input (:data:`MANIFEST_SCHEMA`):
input and output URIs, status (``ok`` / ``failed`` / ``skipped``), error message, shape, bands, task
used, seconds and the output's sha256. The driver rewrites the whole file atomically
(:func:`hsivar_platform.storage.write_bytes`) as files finish, at most every
``manifest_interval_s``, and once more at the end, so a killed job never leaves a corrupt manifest.
Outputs themselves are written atomically too (temporary name + rename locally, one PUT on S3), so a
kill leaves every output either complete or absent. A re-run skips inputs whose manifest row is
``ok`` (and whose output still exists) or ``skipped``, and retries failed and missing ones; an output
written just before a kill but not yet in the manifest is simply written again (same bytes).

**Failures.** A bad input (corrupt, not 3-D, NaN/Inf, wrong band count, unreadable, unsafe key) is a
``failed`` row with its reason; the job goes on with the rest. Files that are not cubes (unknown
extension) and cubes that are nodata everywhere are ``skipped``. Output keys are the input keys
relative to the input prefix; a key with ``..``, ``.`` or empty segments (possible in object stores)
is refused, so no output lands outside the output prefix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hsivar.data.io import CubeMeta, detect_format, read_cube, write_cube
from hsivar.models.var import Sampling
from hsivar.restore import RestoreInputError, Restorer, TileBlender, pad_to_tile, tile_grid
from hsivar.tasks import TASKS
from hsivar_platform import storage

log = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.parquet"
"""File name of the manifest under the output prefix (``_`` keeps it out of prefix listings)."""

STATUSES = ("ok", "failed", "skipped")
UNCERTAINTY_SUFFIX = ".std"
"""Inserted before the extension of an output to name its uncertainty cube: ``a.tif`` → ``a.std.tif``."""

class NothingToRestore(RestoreInputError):
    """Every voxel of the cube is nodata: the batch job marks it ``skipped``, Serve answers 422."""


TaskArg = str | dict[str, float]
"""``"auto"``, a task family name, or a {task: weight} mixture (see :func:`parse_task`)."""


# --------------------------------------------------------------------------------------------------
# Restoration steps shared by the batch pipeline and Serve: normalise + tile, restore tiles, blend.


def parse_task(text: str | Mapping[str, float] | None) -> TaskArg:
    """Parse a task option: ``"auto"``, a family name (``"gaussian"``) or a mixture.

    A mixture is written ``"gaussian:0.7,blur:0.3"`` (or given as a mapping); weights must be ≥ 0 and
    not all 0. Raises ValueError naming the unknown task / bad weight and the valid names.
    """
    if text is None:
        return "auto"
    if isinstance(text, Mapping):
        items = [(str(k), float(v)) for k, v in text.items()]
    else:
        s = str(text).strip()
        if s in ("", "auto"):
            return "auto"
        if ":" not in s and "=" not in s and "," not in s:
            if s not in TASKS:
                raise ValueError(f"unknown task {s!r}; expected auto, one of {', '.join(TASKS)} "
                                 "or a mixture like gaussian:0.7,blur:0.3")
            return s
        items = []
        for part in s.split(","):
            name, sep, weight = part.replace("=", ":").partition(":")
            try:
                items.append((name.strip(), float(weight) if sep else 1.0))
            except ValueError:
                raise ValueError(f"task mixture {s!r}: weight {weight!r} of {name.strip()!r} is not a number") from None
    mixture: dict[str, float] = {}
    for name, weight in items:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r} in mixture; expected names from {', '.join(TASKS)}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"task weight of {name!r} must be a finite number ≥ 0, got {weight}")
        mixture[name] = mixture.get(name, 0.0) + weight
    if not mixture or sum(mixture.values()) <= 0:
        raise ValueError("a task mixture needs at least one positive weight")
    return mixture


def default_sampling(samples: int) -> Sampling:
    """The decoding :meth:`Restorer.restore` uses: greedy for one sample, seeded top-p 0.9 for several."""
    return Sampling() if samples == 1 else Sampling(greedy=False, top_p=0.9)


@dataclass
class PreparedCube:
    """A cube normalised to [0, 1] and cut into the tiles the model restores.

    Attributes:
        tiles: (n, C, S, S) float32 tiles in [0, 1], in :func:`hsivar.restore.tile_grid` order.
        coords: n top-left corners (row, col) in the (reflect-)padded cube.
        shape: (C, H, W) of the cube.
        tile, overlap: S and the overlap in pixels.
        lo, scale: the normalisation: x01 = (x − lo) / scale, in the input's units.
        mask: (C, H, W) bool, voxels equal to ``nodata`` (written back as nodata), or None.
        nodata: the source's nodata value, when it occurs in the cube.
    """

    tiles: torch.Tensor
    coords: list[tuple[int, int]]
    shape: tuple[int, int, int]
    tile: int
    overlap: int
    lo: float
    scale: float
    mask: np.ndarray | None = None
    nodata: float | None = None


def _nodata_mask(cube: np.ndarray, nodata: float | None) -> np.ndarray | None:
    if nodata is None:
        return None
    mask = np.isnan(cube) if math.isnan(nodata) else cube == np.float32(nodata)
    return mask if mask.any() else None


def prepare_cube(cube: np.ndarray | torch.Tensor, bands: int, tile: int, overlap: int,
                 nodata: float | None = None, value_range: tuple[float, float] | None = None) -> PreparedCube:
    """Validate, normalise and tile one cube exactly as :meth:`Restorer.restore` does.

    Args:
        cube: (C, H, W) in any units; C must equal ``bands``.
        tile, overlap: the model's tile side S and the overlap (0 ≤ overlap < S).
        nodata: voxels equal to it (NaN allowed) are excluded from the min–max range, restored as the
            range minimum and written back as nodata by :func:`finish_cube`.
        value_range: (lo, hi) in the input's units mapped to [0, 1] — the clean data's range (e.g. (0, 1)
            for reflectance). Default: the cube's own min–max, which noise or outliers stretch: a noisy
            cube then comes out darker and shifted, so pass the range whenever it is known.
    Raises:
        RestoreInputError: not 3-D, wrong band count, empty, non-finite values (other than nodata),
            every voxel nodata, or a bad overlap — the messages of :class:`Restorer`.
    """
    x = torch.as_tensor(np.asarray(cube) if not isinstance(cube, torch.Tensor) else cube).float()
    if x.ndim != 3:
        raise RestoreInputError(f"expected a cube (C, H, W), got an array of shape {tuple(x.shape)}")
    C, H, W = x.shape
    if C != bands:
        raise RestoreInputError(f"cube has {C} bands but the model restores {bands} bands")
    if H == 0 or W == 0:
        raise RestoreInputError(f"cube is empty (shape {tuple(x.shape)})")
    if not 0 <= overlap < tile:
        raise RestoreInputError(f"overlap must be in [0, {tile}), got {overlap}")
    mask = _nodata_mask(x.numpy(), nodata)
    bad = ~torch.isfinite(x)
    if mask is not None:
        bad &= ~torch.from_numpy(mask)
    n_bad = int(bad.sum())
    if n_bad:
        raise RestoreInputError(f"cube has {n_bad} non-finite values (NaN/Inf)")
    if value_range is not None and not float(value_range[1]) > float(value_range[0]):
        raise RestoreInputError(f"value_range must be (lo, hi) with hi > lo, got {tuple(value_range)}")
    valid = x if mask is None else x[~torch.from_numpy(mask)]
    if valid.numel() == 0:
        raise NothingToRestore(f"every voxel equals the nodata value {nodata}; nothing to restore")
    lo, hi = (float(value_range[0]), float(value_range[1])) if value_range is not None else \
        (float(valid.min()), float(valid.max()))
    if mask is not None:
        x = torch.where(torch.from_numpy(mask), torch.tensor(lo, dtype=x.dtype), x)
    scale = (hi - lo) if hi > lo else 1.0
    x01 = (x - lo) / scale
    x01 = pad_to_tile(x01, tile)  # the padding and tile order of hsivar.restore.blend_tiles
    coords = tile_grid(H, W, tile, overlap)
    tiles = torch.stack([x01[:, r:r + tile, c:c + tile] for r, c in coords]).contiguous()
    return PreparedCube(tiles, coords, (C, H, W), tile, overlap, lo, scale, mask,
                        nodata if mask is not None else None)


def restore_tiles(restorer: Restorer, tiles: torch.Tensor, task: TaskArg = "auto", *, samples: int = 1,
                  seed: int = 0, batch_size: int = 8,
                  sampling: Sampling | None = None) -> tuple[torch.Tensor, list[float]]:
    """Run the model on a cube's tiles the way :meth:`Restorer.restore` does (same batches and seeds).

    Args:
        tiles: (n, C, S, S) in [0, 1] (from :func:`prepare_cube`).
        samples: decodings; sample i uses a generator seeded ``seed + i`` over the tiles in order.
    Returns:
        (outputs (samples, n, C, S, S) float32 on CPU in [0, 1], mean task weights per family (N,)).
    Raises:
        RestoreInputError: bad ``samples`` / ``batch_size``, or greedy decoding with ``samples > 1``.
    """
    if samples < 1 or batch_size < 1:
        raise RestoreInputError(f"samples and batch_size must be ≥ 1 (got {samples}, {batch_size})")
    sampling = default_sampling(samples) if sampling is None else sampling
    if samples > 1 and sampling.greedy:
        raise RestoreInputError("samples > 1 needs sampling (greedy decoding gives identical samples)")
    device = restorer.device
    n = tiles.shape[0]
    outs = torch.empty((samples, *tiles.shape), dtype=torch.float32)
    weight_sum = torch.zeros(len(restorer.model.dag.tasks), dtype=torch.float64)
    for s in range(samples):
        gen = torch.Generator(device=device).manual_seed(seed + s)
        for i in range(0, n, batch_size):
            chunk = tiles[i:i + batch_size].to(device)
            with restorer.autocast():
                out = restorer.model.restore(chunk, task, sampling, gen)
            outs[s, i:i + chunk.shape[0]] = out.cube.float().cpu()
            weight_sum += out.task_weights.detach().double().sum(0).cpu()
    return outs, (weight_sum / (n * samples)).tolist()


def blend_restored(outputs: torch.Tensor, prep: PreparedCube) -> tuple[np.ndarray, np.ndarray | None]:
    """Blend restored tiles back into a cube in the input's units, as :meth:`Restorer.restore` does.

    Args:
        outputs: (samples, n, C, S, S) restored tiles in [0, 1] (from :func:`restore_tiles`).
    Returns:
        (mean (C, H, W) float32, std (C, H, W) float32 over samples or None for one sample); nodata
        voxels (``prep.mask``) hold ``prep.nodata`` in the mean and NaN in the std.
    """
    C, H, W = prep.shape
    per_sample = []
    for sample in outputs:
        blender = TileBlender(C, H, W, prep.tile, prep.overlap)
        blender.add(prep.coords, sample)
        per_sample.append(blender.result() * prep.scale + prep.lo)
    stack = torch.stack(per_sample)
    mean = stack.mean(0).numpy().astype(np.float32)
    std = stack.std(0, unbiased=False).numpy().astype(np.float32) if len(per_sample) > 1 else None
    if prep.mask is not None:
        mean[prep.mask] = prep.nodata
        if std is not None:
            std[prep.mask] = np.nan
    return mean, std


def dominant_task(weights: Iterable[float]) -> str:
    """The task family with the largest weight (what "auto" decided, or a mixture's main part)."""
    w = list(weights)
    return TASKS[int(np.argmax(w))] if w else "auto"


# --------------------------------------------------------------------------------------------------
# Keys, outputs and checksums


class UnsafeKeyError(ValueError):
    """An input key cannot be mapped into the output prefix safely (``..``, ``.`` or empty segments)."""


def relative_key(uri: str, prefix: str) -> str:
    """The key of ``uri`` relative to ``prefix``, checked segment by segment (never normalised).

    Raises:
        UnsafeKeyError: ``uri`` is not under ``prefix`` or a segment is empty, ``.``, ``..`` or holds a
            backslash / NUL, so the output could land outside the output prefix.
    """
    fs, root = storage.filesystem(prefix)
    _, path = storage.filesystem(uri)
    root = root.rstrip("/")
    if path == root:  # the prefix is a single file
        rel = posixpath.basename(path)
    elif path.startswith(root + "/"):
        rel = path[len(root) + 1:]
    else:
        raise UnsafeKeyError(f"{uri}: not under the input prefix {prefix}")
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", "..") or "\\" in part or "\x00" in part:
            raise UnsafeKeyError(f"{uri}: unsafe key {rel!r} (empty, '.' or '..' segments or backslashes); "
                                 "refusing to derive an output key from it")
    return rel


def output_uri(output_prefix: str, rel: str) -> str:
    """The output URI for relative key ``rel`` (already checked by :func:`relative_key`)."""
    return storage.join(output_prefix, *rel.split("/"))


def uncertainty_uri(out_uri: str) -> str:
    """``…/a.tif`` → ``…/a.std.tif`` (ENVI ``a.hdr`` → ``a.std.hdr``)."""
    head, ext = posixpath.splitext(out_uri)
    return f"{head}{UNCERTAINTY_SUFFIX}{ext}"


def _sibling(uri: str, name: str) -> str:
    """The URI of file ``name`` in the same folder as ``uri``."""
    if storage.is_remote(uri):
        return posixpath.join(posixpath.dirname(uri), name)
    return str(Path(uri.removeprefix("file://")).parent / name)


def _written_files(local_dst: Path) -> list[Path]:
    """Files :func:`write_cube` produced for ``local_dst``, in the order they must be published
    (ENVI: data first, header last, so a header never names missing data)."""
    files = sorted(p for p in local_dst.parent.iterdir() if p.is_file())
    return sorted(files, key=lambda p: p.suffix.lower() == ".hdr")


def write_output(uri: str, cube: np.ndarray, meta: CubeMeta, dtype: str | None = None) -> str:
    """Write ``cube`` (C, H, W) to ``uri`` in the format of its extension, atomically; → sha256 hex.

    The cube is written to a local temporary folder first, hashed, then published with
    :func:`storage.write_bytes` (rename locally, a single PUT on S3). The checksum covers the bytes
    of every file written, in publication order (ENVI: data then header).
    """
    with tempfile.TemporaryDirectory(prefix="hsivar-out-") as tmp:
        local = Path(tmp) / posixpath.basename(uri.rstrip("/"))
        write_cube(local, cube, meta, dtype=dtype)
        digest = hashlib.sha256()
        for path in _written_files(local):
            data = path.read_bytes()
            digest.update(data)
            storage.write_bytes(_sibling(uri, path.name), data)
    return digest.hexdigest()


def output_checksum(uri: str) -> str:
    """sha256 of the output at ``uri`` as :func:`write_output` computes it (ENVI: data then header)."""
    digest = hashlib.sha256()
    if detect_format(uri) == "envi" and uri.lower().endswith(".hdr"):
        head = uri[: -len(".hdr")]
        digest.update(storage.read_bytes(head + ".img"))
    digest.update(storage.read_bytes(uri))
    return digest.hexdigest()


def _meta_to_json(meta: CubeMeta) -> str:
    return json.dumps(dataclasses.asdict(meta), default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def _meta_from_json(text: str) -> CubeMeta:
    d = json.loads(text)
    for key in ("transform", "value_range"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return CubeMeta(**d)


# --------------------------------------------------------------------------------------------------
# Options, manifest


def parse_value_range(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` (input units) → (lo, hi); None or "" → None. Raises ValueError naming the text."""
    if text is None or not text.strip():
        return None
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:  # not two numbers
        raise ValueError(f"value_range must be LO,HI with HI > LO, got {text!r}") from None
    if not hi > lo:
        raise ValueError(f"value_range must be LO,HI with HI > LO, got {text!r}")
    return lo, hi


class BatchOptions(BaseModel):
    """Options of a batch restoration (the ``hsivar restore`` / ``jobs/restore_batch.py`` flags)."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="input prefix (local folder, file://, s3://) or a single cube file")
    output: str = Field(description="output prefix; receives the outputs and _manifest.parquet")
    model: str = Field(description="published model: local dir, s3:// prefix, models:/NAME/VERSION or @ALIAS")
    task: str = Field("auto", description="auto, a task family, or a mixture gaussian:0.7,blur:0.3")
    tile: int | None = Field(None, description="tile side; must equal the model's (default: the model's)")
    overlap: int | None = Field(None, ge=0, description="tile overlap in pixels (default: tile/4)")
    samples: int = Field(1, ge=1, description="decodings per cube; >1 samples with top-p 0.9")
    seed: int = Field(0, description="seed of the first sample")
    value_range: tuple[float, float] | None = Field(
        None, description="(lo, hi) input units mapped to [0, 1], e.g. 0 1 for reflectance; default each cube's "
        "own min–max (noise stretches it: pass the range when it is known)")
    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    uncertainty: bool = Field(False, description="write <stem>.std<ext> (needs samples > 1)")
    output_dtype: Literal["source", "float32"] = Field("source", description="dtype of the outputs")
    actors: int = Field(1, ge=1, description="model actors (the pool's maximum size)")
    min_actors: int | None = Field(None, ge=1, description="smallest pool size (default: actors)")
    gpus_per_actor: float | None = Field(None, ge=0, description="default: 1 when the cluster has GPUs, else 0")
    cpus_per_actor: float = Field(1.0, gt=0)
    memory_per_actor_gb: float = Field(1.0, gt=0, description="memory reserved per model actor (GiB)")
    force: bool = Field(False, description="restore every input again, ignoring the manifest")
    fail_on_error: bool = Field(False, description="exit non-zero when any input failed")
    manifest_interval_s: float = Field(2.0, ge=0, description="least seconds between manifest rewrites")
    progress_interval_s: float = Field(5.0, ge=0, description="least seconds between progress log lines")

    @field_validator("value_range")
    @classmethod
    def _value_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[1] > v[0]:
            raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {v}")
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        parse_task(v)
        return v

    def task_arg(self) -> TaskArg:
        """The parsed task (:func:`parse_task`)."""
        return parse_task(self.task)


MANIFEST_COLUMNS: tuple[str, ...] = (
    "input_uri", "output_uri", "status", "error", "shape", "bands", "task", "task_weights", "tiles",
    "seconds", "checksum", "uncertainty_uri", "uncertainty_checksum", "model", "finished_at",
)


def manifest_schema() -> Any:
    """The pyarrow schema of ``_manifest.parquet`` (one row per input)."""
    import pyarrow as pa

    return pa.schema([
        ("input_uri", pa.string()), ("output_uri", pa.string()), ("status", pa.string()),
        ("error", pa.string()), ("shape", pa.list_(pa.int64())), ("bands", pa.int64()), ("task", pa.string()),
        ("task_weights", pa.string()), ("tiles", pa.int64()), ("seconds", pa.float64()),
        ("checksum", pa.string()), ("uncertainty_uri", pa.string()), ("uncertainty_checksum", pa.string()),
        ("model", pa.string()), ("finished_at", pa.timestamp("ms", tz="UTC")),
    ])


def manifest_uri(output_prefix: str) -> str:
    """Where the manifest of ``output_prefix`` lives."""
    return storage.join(output_prefix, MANIFEST_NAME)


def read_manifest(output_prefix: str) -> dict[str, dict[str, Any]]:
    """The manifest rows under ``output_prefix`` keyed by input URI ({} when there is none)."""
    import pyarrow.parquet as pq

    uri = manifest_uri(output_prefix)
    if not storage.exists(uri):
        return {}
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    return {row["input_uri"]: row for row in table.to_pylist()}


def write_manifest(output_prefix: str, rows: Iterable[Mapping[str, Any]]) -> str:
    """Write all ``rows`` as the manifest, atomically (the whole Parquet file in one write); → its URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = manifest_schema()
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    uri = manifest_uri(output_prefix)
    storage.write_bytes(uri, buf.getvalue())
    return uri


def _record(input_uri: str, status: str, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(MANIFEST_COLUMNS)
    row.update(input_uri=input_uri, status=status, error="", finished_at=datetime.now(timezone.utc))
    row.update(fields)
    return row


# --------------------------------------------------------------------------------------------------
# Pipeline stages (run in Ray workers). Rows: one input file each; columns are numpy arrays.


def _first(batch: Mapping[str, Any], key: str) -> Any:
    value = batch[key][0]
    return value.item() if isinstance(value, np.generic) else value


def _str(batch: Mapping[str, Any], key: str) -> str:
    return str(_first(batch, key))


def read_and_tile(batch: dict[str, np.ndarray], *, bands: int, tile: int, overlap: int,
                  value_range: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Stage 1 (CPU task): read one input, normalise and tile it; errors become the row's ``error``."""
    t0 = time.perf_counter()
    src = _str(batch, "input_uri")
    error, skip, prep, meta, shape = "", False, None, None, (0, 0, 0)
    try:
        cube, meta = read_cube(src, storage_options=storage.storage_options(src), allow_nonfinite=True)
        shape = cube.shape
        prep = prepare_cube(cube, bands, tile, overlap, nodata=meta.nodata, value_range=value_range)
    except Exception as exc:  # one bad file is a manifest row, never a failed job
        error, skip = _describe(exc, src), isinstance(exc, NothingToRestore)
    empty = torch.zeros((0, bands, tile, tile))
    mask = np.packbits(prep.mask.reshape(-1)) if prep is not None and prep.mask is not None else np.zeros(0, np.uint8)
    return {
        "input_uri": batch["input_uri"], "output_uri": batch["output_uri"],
        "uncertainty_uri": batch["uncertainty_uri"],
        "error": np.array([error]),
        "skip": np.array([skip]),
        "tiles": (prep.tiles if prep is not None else empty).numpy()[None],
        "shape": np.array([shape if len(shape) == 3 else (0, 0, 0)], dtype=np.int64),
        "lo": np.array([prep.lo if prep is not None else 0.0]),
        "scale": np.array([prep.scale if prep is not None else 1.0]),
        "nodata": np.array([prep.nodata if prep is not None and prep.nodata is not None else np.nan]),
        "mask": mask[None],
        "meta": np.array([_meta_to_json(meta) if meta is not None else "{}"]),
        "seconds": np.array([time.perf_counter() - t0]),
    }


def _describe(exc: BaseException, src: str) -> str:
    msg = str(exc) or type(exc).__name__
    if src not in msg:
        msg = f"{src}: {msg}"
    return msg if isinstance(exc, ValueError) else f"{type(exc).__name__}: {msg}"


class TileRestorer:
    """Stage 2 (actor pool): holds the model and restores each row's tiles (:func:`restore_tiles`)."""

    def __init__(self, model: str, device: str, task: TaskArg, samples: int, seed: int, batch_size: int) -> None:
        from hsivar_platform.models import load_restorer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.restorer = load_restorer(model, device=device)
        self.task, self.samples, self.seed, self.batch_size = task, samples, seed, batch_size
        log.info("model actor ready: %s on %s", model, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        error = _str(batch, "error")
        n_tasks = len(self.restorer.model.dag.tasks)
        outputs = np.zeros((self.samples, 0, *batch["tiles"][0].shape[1:]), np.float32)
        weights = np.zeros(n_tasks, np.float32)
        if not error:
            try:
                tiles = torch.from_numpy(np.ascontiguousarray(batch["tiles"][0], dtype=np.float32))
                with torch.inference_mode():
                    outs, w = restore_tiles(self.restorer, tiles, self.task, samples=self.samples,
                                            seed=self.seed, batch_size=self.batch_size)
                outputs, weights = outs.numpy(), np.asarray(w, np.float32)
            except Exception as exc:
                error = _describe(exc, _str(batch, "input_uri"))
        out = {k: v for k, v in batch.items() if k != "tiles"}
        out.update(error=np.array([error]), restored=outputs[None], task_weights=weights[None],
                   seconds=batch["seconds"] + (time.perf_counter() - t0))
        return out


def blend_and_write(batch: dict[str, np.ndarray], *, output_dtype: str, tile: int, overlap: int,
                    model: str) -> dict[str, np.ndarray]:
    """Stage 3 (CPU task): blend the restored tiles, write the output (and uncertainty); → a manifest row."""
    t0 = time.perf_counter()
    src, dst, std_dst = _str(batch, "input_uri"), _str(batch, "output_uri"), _str(batch, "uncertainty_uri")
    error = _str(batch, "error")
    shape = [int(v) for v in batch["shape"][0]]
    row: dict[str, Any] = {"output_uri": dst, "shape": shape if any(shape) else None, "bands": shape[0] or None,
                           "model": model}
    status = "failed"
    if not error:
        try:
            meta = _meta_from_json(_str(batch, "meta"))
            nodata = float(_first(batch, "nodata"))
            has_mask = batch["mask"][0].size > 0
            mask = (np.unpackbits(batch["mask"][0], count=math.prod(shape)).reshape(shape).astype(bool)
                    if has_mask else None)
            prep = PreparedCube(torch.empty(0), tile_grid(shape[1], shape[2], tile, overlap), tuple(shape), tile,
                                overlap, float(_first(batch, "lo")), float(_first(batch, "scale")), mask,
                                nodata if has_mask else None)
            restored = torch.from_numpy(np.ascontiguousarray(batch["restored"][0], dtype=np.float32))
            mean, std = blend_restored(restored, prep)
            dtype = meta.dtype if output_dtype == "source" else "float32"
            row["checksum"] = write_output(dst, mean, meta, dtype=dtype)
            if std_dst:
                std_meta = dataclasses.replace(meta, nodata=float("nan") if has_mask else None)
                row["uncertainty_uri"] = std_dst
                row["uncertainty_checksum"] = write_output(std_dst, std, std_meta, dtype="float32")
            weights = [float(v) for v in batch["task_weights"][0]]
            row.update(task=dominant_task(weights), task_weights=json.dumps(dict(zip(TASKS, weights))),
                       tiles=len(prep.coords))
            status = "ok"
        except Exception as exc:
            error = _describe(exc, src)
    if error and bool(_first(batch, "skip")):
        status = "skipped"
    row.update(input_uri=src, status=status, error=error,
               seconds=float(_first(batch, "seconds")) + time.perf_counter() - t0,
               finished_at=datetime.now(timezone.utc).isoformat())
    return {"record": np.array([json.dumps(row)])}


# --------------------------------------------------------------------------------------------------
# Driver


@dataclass
class BatchReport:
    """What a run did.

    ``total`` inputs listed; ``ok`` / ``failed`` / ``skipped``: their manifest status after the run;
    ``already_done``: inputs skipped because an earlier run completed them; ``processed``: inputs this
    run went through (restored or failed); ``cubes_per_s``: ``processed`` over the pipeline's time
    (from the start of the Ray Data pipeline); ``failures``: (input URI, error) of every failed input.
    """

    total: int
    ok: int
    failed: int
    skipped: int
    already_done: int
    processed: int
    seconds: float
    cubes_per_s: float
    manifest: str
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return dataclasses.asdict(self)


@dataclass
class _Input:
    uri: str
    rel: str | None
    out: str | None
    skip_reason: str = ""
    error: str = ""


def _norm_prefix(uri: str) -> str:
    """Local prefixes as absolute paths, remote ones without a trailing slash."""
    s = str(uri)
    if storage.is_remote(s):
        return s.rstrip("/")
    return str(Path(s.removeprefix("file://")).absolute())


def _is_envi_data_with_header(uri: str, names: set[str]) -> bool:
    """An ENVI data file (``x.img``, ``x.dat``, … or extension-less ``x``) whose header is listed too."""
    head, ext = posixpath.splitext(uri)
    if uri + ".hdr" in names:
        return True
    return ext.lower() in (".img", ".dat", ".raw", ".bsq", ".bil", ".bip") and head + ".hdr" in names


def list_inputs(input_prefix: str, output_prefix: str) -> list[_Input]:
    """The inputs under ``input_prefix`` with their output URIs (or why they are skipped / refused).

    An ENVI cube is listed once, by its ``.hdr``; files under ``output_prefix`` (when it lies inside
    the input prefix) are left out.

    Raises:
        FileNotFoundError: nothing exists at ``input_prefix``.
    """
    src, dst = _norm_prefix(input_prefix), _norm_prefix(output_prefix)
    fs, root = storage.filesystem(src)
    if not fs.exists(root):
        raise FileNotFoundError(f"{input_prefix}: no such input prefix or file")
    if fs.isfile(root):
        uris = [src]
    else:
        uris = storage.list_files(src)
    names = set(uris)
    inputs = []
    for uri in uris:
        if uri == dst or uri.startswith(dst.rstrip("/") + "/"):
            continue
        if _is_envi_data_with_header(uri, names):
            continue  # restored through its header
        try:
            detect_format(uri)
        except ValueError:
            inputs.append(_Input(uri, None, None, skip_reason="not a cube file (unsupported extension)"))
            continue
        try:
            rel = relative_key(uri, src)
        except UnsafeKeyError as exc:
            inputs.append(_Input(uri, None, None, error=str(exc)))
            continue
        inputs.append(_Input(uri, rel, output_uri(dst, rel)))
    return inputs


def _remove_stale_temporaries(output_prefix: str) -> int:
    """Delete temporary files an interrupted local run left behind (``.name.*.tmp`` / ``.name.tmp-*``)."""
    if storage.is_remote(output_prefix):
        return 0  # object stores get whole objects (one PUT) or nothing
    root = Path(output_prefix)
    if not root.is_dir():
        return 0
    n = 0
    for path in root.rglob(".*"):
        if path.is_file() and (path.name.endswith(".tmp") or ".tmp-" in path.name):
            path.unlink(missing_ok=True)
            n += 1
    return n


def model_config(model: str) -> tuple[int, int]:
    """(bands, tile) of the published model at ``model`` (reads only its config where possible)."""
    from hsivar.publish import CONFIG_FILE, read_config

    if storage.is_remote(model) and not model.startswith("models:/"):
        with tempfile.TemporaryDirectory(prefix="hsivar-cfg-") as tmp:
            Path(tmp, CONFIG_FILE).write_bytes(storage.read_bytes(storage.join(model, CONFIG_FILE)))
            cfg, _ = read_config(tmp)
    else:
        from hsivar_platform.models import resolve_model

        cfg, _ = read_config(resolve_model(model))
    return cfg.vqvae.bands, cfg.vqvae.image_size


FORWARDED_ENV: tuple[str, ...] = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EC2_METADATA_DISABLED",
    "MLFLOW_TRACKING_URI",
)
"""Where-to-find-things variables the driver passes to its Ray workers (no credentials: those come from
the cluster's own environment, so they never appear in job metadata)."""


def forwarded_env() -> dict[str, str]:
    """The :data:`FORWARDED_ENV` variables set in this process, for a ``runtime_env``."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray (``address``, else ``RAY_ADDRESS``, else a running local cluster, else start one)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or None, log_to_driver=False)


def run_batch(options: BatchOptions, *, ray_address: str | None = None) -> BatchReport:
    """Restore every cube under ``options.input`` into ``options.output`` (see the module docstring).

    Returns:
        :class:`BatchReport`; the manifest holds the per-file detail.
    Raises:
        ValueError: options that cannot work with this model (tile, overlap, uncertainty without samples).
        FileNotFoundError: no model at ``options.model``.
    """
    t_start = time.perf_counter()
    src, dst = _norm_prefix(options.input), _norm_prefix(options.output)
    if src == dst:
        raise ValueError(f"--output must differ from --input ({options.input}); outputs never replace inputs")
    bands, S = model_config(options.model)
    if options.tile is not None and options.tile != S:
        raise ValueError(f"this model restores {S}×{S} tiles; --tile {options.tile} is not possible")
    overlap = S // 4 if options.overlap is None else options.overlap
    if not 0 <= overlap < S:
        raise ValueError(f"--overlap must be in [0, {S}), got {overlap}")
    if options.uncertainty and options.samples < 2:
        raise ValueError("--uncertainty needs --samples ≥ 2 (the std over one sample is 0)")
    task = options.task_arg()

    inputs = list_inputs(src, dst)
    manifest = {} if options.force else read_manifest(dst)
    existing = set(storage.list_files(dst)) if storage.exists(dst) else set()
    removed = _remove_stale_temporaries(dst)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run under %s", removed, dst)

    todo: list[_Input] = []
    already = 0
    for item in inputs:
        if item.skip_reason:
            manifest[item.uri] = _record(item.uri, "skipped", error=item.skip_reason, model=options.model)
        elif item.error:
            manifest[item.uri] = _record(item.uri, "failed", error=item.error, model=options.model)
        else:
            prev = manifest.get(item.uri)
            done = prev is not None and (prev["status"] == "skipped" or (
                prev["status"] == "ok" and prev.get("output_uri") == item.out and item.out in existing))
            if done:
                already += 1
            else:
                todo.append(item)
    total = len(inputs)
    log.info("restore %s → %s: %d input(s), %d already done, %d to restore", src, dst, total, already, len(todo))

    processed, pipeline_s = 0, 0.0
    if todo:
        processed, pipeline_s = _run_pipeline(options, todo, manifest, dst, bands=bands, tile=S, overlap=overlap,
                                              task=task, total=total, already=already, ray_address=ray_address)
    uri = write_manifest(dst, manifest.values())
    _remove_stale_temporaries(dst)  # e.g. from workers of a killed earlier run that were still writing
    current = [manifest[i.uri] for i in inputs if i.uri in manifest]
    counts = {s: sum(r["status"] == s for r in current) for s in STATUSES}
    seconds = time.perf_counter() - t_start
    report = BatchReport(
        total=total, ok=counts["ok"], failed=counts["failed"], skipped=counts["skipped"], already_done=already,
        processed=processed, seconds=seconds, cubes_per_s=processed / pipeline_s if pipeline_s > 0 else 0.0,
        manifest=uri, failures=[(r["input_uri"], r["error"]) for r in current if r["status"] == "failed"],
    )
    log.info("done: %d ok, %d failed, %d skipped of %d in %.1f s (%.2f cubes/s); manifest %s",
             report.ok, report.failed, report.skipped, total, seconds, report.cubes_per_s, uri)
    return report


def _run_pipeline(options: BatchOptions, todo: list[_Input], manifest: dict[str, dict[str, Any]], dst: str, *,
                  bands: int, tile: int, overlap: int, task: TaskArg, total: int, already: int,
                  ray_address: str | None) -> tuple[int, float]:
    """Run the Ray Data pipeline over ``todo``, updating ``manifest`` (and its file) as rows finish;
    → (files processed, seconds from the pipeline's start)."""
    import ray
    import ray.data

    ensure_ray(ray_address)
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # progress goes to the log, one line every progress_interval_s
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    device = "cuda" if gpus > 0 else "cpu"
    max_actors = options.actors
    min_actors = min(options.min_actors or max_actors, max_actors)

    # Workers see the S3 endpoint and MLflow server the driver was given, whatever the cluster's default.
    env = forwarded_env()
    runtime_env = {"env_vars": env} if env else None
    items = [{"input_uri": i.uri, "output_uri": i.out,
              "uncertainty_uri": uncertainty_uri(i.out) if options.uncertainty else ""} for i in todo]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 512))
    ds = ds.map_batches(read_and_tile, batch_size=1, fn_kwargs={"bands": bands, "tile": tile, "overlap": overlap,
                                                           "value_range": options.value_range},
                        num_cpus=1, runtime_env=runtime_env)
    ds = ds.map_batches(
        TileRestorer, batch_size=1,
        fn_constructor_kwargs={"model": options.model, "device": device, "task": task, "samples": options.samples,
                               "seed": options.seed, "batch_size": options.batch_size},
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
        num_gpus=gpus, num_cpus=options.cpus_per_actor, runtime_env=runtime_env,
        # Reserving the model's memory also keeps Ray Data from fusing the read stage into the model
        # actors (different resources), so reading and tiling overlap with inference.
        memory=options.memory_per_actor_gb * 2**30,
    )
    ds = ds.map_batches(blend_and_write, batch_size=1, num_cpus=1, runtime_env=runtime_env,
                        fn_kwargs={"output_dtype": options.output_dtype, "tile": tile, "overlap": overlap,
                                   "model": options.model})

    t0 = time.perf_counter()
    last_manifest = last_log = t0
    done = failed = 0
    try:
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            rec["finished_at"] = datetime.fromisoformat(rec["finished_at"])
            manifest[rec["input_uri"]] = {**dict.fromkeys(MANIFEST_COLUMNS), **rec}
            done += 1
            if rec["status"] == "failed":
                failed += 1
                log.warning("failed: %s", rec["error"])
            now = time.perf_counter()
            if now - last_manifest >= options.manifest_interval_s:
                write_manifest(dst, manifest.values())
                last_manifest = now
            if now - last_log >= options.progress_interval_s or done == len(todo):
                rate = done / (now - t0) if now > t0 else 0.0
                left = len(todo) - done
                log.info("progress: %d/%d files (%d failed in this run), %.2f cubes/s, ~%.0f s left",
                         already + done, total, failed, rate, left / rate if rate > 0 else float("nan"))
                last_log = now
    finally:
        ctx.enable_progress_bars = bars
        write_manifest(dst, manifest.values())
    return done, time.perf_counter() - t0
