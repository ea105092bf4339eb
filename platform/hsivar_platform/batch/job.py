"""Batch restoration: every cube under an input prefix → the same keys under an output prefix.

``run_batch(BatchOptions(input="s3://archive/raw/", output="s3://archive/restored/", model=URI))``
runs a Ray Data pipeline, one row per input file (:mod:`hsivar_platform.batch.stages`)::

    list (driver) → read + prepare (CPU tasks) → restore (actor pool holding the model, one GPU per actor
    when the cluster has GPUs) → finish + write (CPU tasks) → manifest rows (driver)

With GPU actors the reads and writes run on CPU tasks and overlap inference; an actor pool without GPUs runs all
three stages in its actors (``BatchOptions.fused``), which keep the cores busy by themselves and start no task
worker processes beside them.

Every stage is a step of the one restoration path (:mod:`hsivar.restore`), so an output equals
``Restorer.restore`` on the same file. Outputs go to the input's key under the output prefix, in the
input's format, back in the input's units and dtype; GeoTIFF keeps its CRS, transform, nodata and band
names / wavelengths. With ``uncertainty=True`` a per-pixel error bar is written beside each output as
``<stem>.std<ext>`` (float32; ``<stem>.std.tif`` beside a PNG or JPEG, which hold no floats): the calibrated
one of a calibrated model (:mod:`hsivar.uncertainty`), else the
standard deviation over ``samples > 1``. Voxels equal to the source's nodata value
are left out of the normalisation range and written back as nodata. Entries the file marks as not observed
(ENVI / GeoTIFF / HDF5 / .mat bad band list ``bbl``, GeoTIFF internal mask, HDF5 / .mat ``mask``:
:mod:`hsivar.io.masks`; a PNG's alpha) are left out too and synthesised; ``<stem>.kept<ext>`` (uint8, same
georeferencing; ``.tif`` beside a lossy JPEG) is 1 where an entry holds the input's value bit for bit and 0
where it was synthesised or restored.

**Resuming.** The driver rewrites ``<output>/_manifest.parquet`` (:mod:`~hsivar_platform.batch.manifest`)
as files finish, at most every ``manifest_interval_s``, and once more at the end. Outputs are written
atomically, so a kill leaves every output complete or absent. A re-run skips inputs whose manifest row
is ``ok`` (and whose output still exists) or ``skipped``, and retries failed and missing ones.

**Failures.** A bad input (corrupt, not 3-D, NaN/Inf, wrong band count, a mask of the wrong shape or a bad
band list of the wrong length, unreadable, unsafe key) is a ``failed`` row with its reason; the job goes on.
Files that are not cubes and cubes that are nodata or masked everywhere are ``skipped``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hsivar.restore import resolve_overlap
from hsivar.tasks import TaskArg
from hsivar_platform import ray_runtime, storage
from hsivar_platform.batch.keys import (
    KEPT_SUFFIX,
    Input,
    is_stac_input,
    item_id,
    list_inputs,
    list_stac_inputs,
    norm_prefix,
    remove_stale_temporaries,
    sidecar_uri,
    uncertainty_uri,
)
from hsivar_platform.batch.manifest import MANIFEST_COLUMNS, STATUSES, read_manifest, record, write_manifest
from hsivar_platform.batch.options import BatchOptions, BatchReport, steady_rate
from hsivar_platform.batch.stac import CollectionWriter
from hsivar_platform.batch.stages import ReadRestoreWrite, Restore, finish_and_write, read_and_tile
from hsivar_platform.locations import check_outlives_job, inside_job_copy
from hsivar_platform.model_uri import model_config, model_version, pin_model_uri

log = logging.getLogger(__name__)


def run_batch(options: BatchOptions, *, ray_address: str | None = None,
              log_dir: str | os.PathLike | None = None) -> BatchReport:
    """Restore every cube under ``options.input`` into ``options.output`` (see the module docstring).

    Ray is reached through :func:`hsivar_platform.ray_runtime.init` (``ray_address``; Ray's own log lines
    to ``log_dir`` when given) only when something is left to restore.

    Returns:
        :class:`BatchReport`; the manifest holds the per-file detail.
    Raises:
        ValueError: options that cannot work with this model (tile, overlap, uncertainty from one sample of a
            model without a calibrated uncertainty).
        FileNotFoundError: no model at ``options.model``, nothing at ``options.input``.
    """
    t_start = time.perf_counter()
    _check_locations(options)
    src, dst = norm_prefix(options.input), norm_prefix(options.output)
    if src == dst:
        raise ValueError(f"--output must differ from --input ({options.input}); outputs never replace inputs")
    # Every actor loads the version the driver resolved, and the manifest records it (models:/NAME/<version>).
    model = pin_model_uri(options.model)
    cfg = model_config(model)
    bands, S = cfg.vqvae.bands, cfg.vqvae.image_size
    overlap = resolve_overlap(S, options.tile, options.overlap)
    if options.uncertainty and options.samples < 2 and cfg.uncertainty is None:
        raise ValueError(f"--uncertainty needs --samples ≥ 2 with {model}: it has no calibrated uncertainty, so "
                         "the std is the spread over samples (0 for one)")
    version = model_version(model)

    inputs = list_stac_inputs(options.input, dst, options.assets) if is_stac_input(options.input) else \
        list_inputs(src, dst)
    manifest = {} if options.force else read_manifest(dst)
    existing = set(storage.list_files(dst)) if storage.exists(dst) else set()
    removed = remove_stale_temporaries(dst)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run under %s", removed, dst)

    todo: list[Input] = []
    already = 0
    collection = CollectionWriter(dst) if options.stac else None  # the Items of the outputs done and restored now
    for item in inputs:
        if item.skip_reason:
            manifest[item.uri] = record(item.uri, "skipped", error=item.skip_reason, model=model,
                                        model_requested=options.model, model_version=version)
        elif item.error:
            manifest[item.uri] = record(item.uri, "failed", error=item.error, model=model,
                                        model_requested=options.model, model_version=version)
        else:
            prev = manifest.get(item.uri)
            done = prev is not None and (prev["status"] == "skipped" or (
                prev["status"] == "ok" and prev.get("output_uri") == item.out and item.out in existing))
            if done:
                already += 1
                if collection is not None and prev.get("stac_item_uri"):
                    collection.add(prev["stac_item_uri"])
            else:
                todo.append(item)
    total = len(inputs)
    requested = "" if model == options.model else f" (from {options.model})"
    log.info("restore %s → %s with %s%s, version %s: %d input(s), %d already done, %d to restore",
             src, dst, model, requested, version, total, already, len(todo))

    processed, pipeline_s, steady = 0, 0.0, 0.0
    if todo:
        processed, pipeline_s, steady = _run_pipeline(
            options, todo, manifest, dst, collection, bands=bands, tile=S, overlap=overlap, task=options.task_arg(),
            tasks=tuple(cfg.dag.tasks), model=model, estimate=cfg.first_estimate, wavelengths=cfg.wavelengths,
            version=version, total=total, already=already, ray_address=ray_address, log_dir=log_dir)
    uri = _save(dst, manifest, collection)
    remove_stale_temporaries(dst)  # e.g. from workers of a killed earlier run that were still writing
    current = [manifest[i.uri] for i in inputs if i.uri in manifest]
    counts = {s: sum(r["status"] == s for r in current) for s in STATUSES}
    seconds = time.perf_counter() - t_start
    report = BatchReport(
        total=total, ok=counts["ok"], failed=counts["failed"], skipped=counts["skipped"], already_done=already,
        processed=processed, seconds=seconds, cubes_per_s=processed / pipeline_s if pipeline_s > 0 else 0.0,
        steady_cubes_per_s=steady,
        manifest=uri, model=model, model_requested=options.model, model_version=version,
        failures=[(r["input_uri"], r["error"]) for r in current if r["status"] == "failed"],
    )
    log.info("done: %d ok, %d failed, %d skipped of %d in %.1f s (%.2f cubes/s, %.2f once outputs flowed); "
             "manifest %s", report.ok, report.failed, report.skipped, total, seconds, report.cubes_per_s,
             report.steady_cubes_per_s, uri)
    return report


def _check_locations(options: BatchOptions) -> None:
    """Inside a Ray job's temporary working-directory copy, refuse an output that would land in it (Ray deletes
    the copy) and name the cause of an input missing from it (only the uploaded files are there).

    Raises:
        ValueError: the output resolves inside the copy; FileNotFoundError: the input resolves inside it and
            does not exist.
    """
    fix = "pass an absolute path (on shared storage for a cluster) or an s3:// prefix"
    check_outlives_job("--output", options.output, "the restored cubes and the manifest", fix=fix)
    missing = inside_job_copy(options.input)
    if missing is not None and not missing.exists():
        raise FileNotFoundError(
            f"--input: {options.input!r} resolves to {missing}, inside the temporary copy of the working directory "
            f"this Ray job runs in, which holds only the uploaded files (.rayignore and .gitignore leave work/ "
            f"out); {fix}")


def _save(dst: str, manifest: dict[str, dict[str, Any]], collection: CollectionWriter | None) -> str:
    """Rewrite the manifest, and the STAC Collection when Items were added since its last write (a failure to write
    the Collection is logged and retried at the next save: it never stops the restorations); → the manifest's URI."""
    uri = write_manifest(dst, manifest.values())
    if collection is not None and collection.changed:
        try:
            collection.write()
        except Exception as exc:  # metadata: the outputs and the manifest are what must not be lost
            log.warning("the STAC Collection %s was not written (retried at the next save): %s", collection.uri, exc)
    return uri


def _run_pipeline(options: BatchOptions, todo: list[Input], manifest: dict[str, dict[str, Any]], dst: str,
                  collection: CollectionWriter | None, *,
                  bands: int, tile: int, overlap: int, task: TaskArg, tasks: tuple[str, ...], model: str,
                  estimate: bool, wavelengths: Sequence[float] | None, version: str,
                  total: int, already: int, ray_address: str | None,
                  log_dir: str | os.PathLike | None) -> tuple[int, float, float]:
    """Run the Ray Data pipeline over ``todo``, updating ``manifest`` (and its file) as rows finish;
    → (files processed, seconds from the pipeline's start, steady-state cubes/s: files after the first over the
    time from the first to the last finished file; 0 with fewer than 2)."""
    import ray
    import ray.data

    ray_runtime.init(ray_address, log_dir=log_dir)
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    max_actors = options.actors
    min_actors = min(options.min_actors or max_actors, max_actors)
    env = ray_runtime.runtime_env()  # workers see the driver's S3 endpoint and MLflow server

    items = [{"input_uri": i.uri, "output_uri": i.out,
              "uncertainty_uri": uncertainty_uri(i.out) if options.uncertainty else "",
              "kept_uri": sidecar_uri(i.out, KEPT_SUFFIX) if options.kept_mask else "",
              "item_id": item_id(i.rel) if options.stac and i.rel else ""} for i in todo]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 512))
    read = {"bands": bands, "tile": tile, "overlap": overlap, "value_range": options.value_range,
            "estimate": estimate, "wavelengths": wavelengths}
    restore = {"model": model, "device": "cuda" if gpus > 0 else "cpu", "task": task, "samples": options.samples,
               "seed": options.seed, "batch_size": options.batch_size, "tile": tile, "overlap": overlap,
               "uncertainty": options.uncertainty, "compiled": options.compiled}
    write = {"output_dtype": options.output_dtype, "tile": tile, "overlap": overlap, "model": model,
             "model_requested": options.model, "model_version": version, "tasks": tasks,
             "samples": options.samples, "seed": options.seed, "output_prefix": dst}
    pool = {"compute": ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors), "num_gpus": gpus,
            "num_cpus": options.cpus_per_actor, "runtime_env": env, "memory": options.memory_per_actor_gb * 2**30}
    fused = options.fused if options.fused is not None else gpus == 0
    if fused:  # every stage in the model actors (CPU pools: they keep the cores busy by themselves)
        ds = ds.map_batches(ReadRestoreWrite, batch_size=1, fn_constructor_kwargs={"read": read, "write": write,
                                                                                  **restore}, **pool)
    else:  # reads and writes on CPU tasks, overlapping the model actors' inference (GPU pools)
        ds = ds.map_batches(read_and_tile, batch_size=1, num_cpus=1, runtime_env=env, fn_kwargs=read)
        # Reserving the model's memory also keeps Ray Data from fusing the read stage into the model
        # actors (different resources), so reading and tiling overlap with inference.
        ds = ds.map_batches(Restore, batch_size=1, fn_constructor_kwargs=restore, **pool)
        ds = ds.map_batches(finish_and_write, batch_size=1, num_cpus=1, runtime_env=env, fn_kwargs=write)
    log.info("pipeline: %s", f"read, restore and write in {max_actors} model actor(s)" if fused else
             f"read tasks → {max_actors} model actor(s) → write tasks")

    t0 = time.perf_counter()
    last_manifest = last_log = t0
    t_first = t_last = t0
    done = failed = 0
    try:
        for row in ds.iter_rows():
            t_last = time.perf_counter()
            if done == 0:
                t_first = t_last
            rec = json.loads(row["record"])
            rec["finished_at"] = datetime.fromisoformat(rec["finished_at"])
            manifest[rec["input_uri"]] = {**dict.fromkeys(MANIFEST_COLUMNS), **rec}
            done += 1
            if rec["status"] == "failed":
                failed += 1
                log.warning("failed: %s", rec["error"])
            if collection is not None and rec.get("stac_item_uri"):
                collection.add(rec["stac_item_uri"], rec.get("stac_item"))
            now = time.perf_counter()
            if now - last_manifest >= options.manifest_interval_s:
                _save(dst, manifest, collection)
                last_manifest = now
            if now - last_log >= options.progress_interval_s or done == len(todo):
                rate = done / (now - t0) if now > t0 else 0.0
                left = len(todo) - done
                log.info("progress: %d/%d files (%d failed in this run), %.2f cubes/s, ~%.0f s left",
                         already + done, total, failed, rate, left / rate if rate > 0 else float("nan"))
                last_log = now
    finally:
        _save(dst, manifest, collection)
    return done, time.perf_counter() - t0, steady_rate(done, t_first, t_last)
