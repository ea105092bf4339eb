"""The demo's data: clean demo cubes in the bucket, the held-out cubes degraded into an archive to
repair, and the scores of the batch job's outputs against the clean cubes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hsivar.io import CubeMeta, read_cube, write_cube
from hsivar.render import Example
from hsivar.tasks import DEFAULT_TASKS, TASKS
from hsivar_platform import storage
from hsivar_platform.console import Echo


def read(uri: str) -> np.ndarray:
    """The cube (C, H, W) float32 at ``uri`` (local or s3://)."""
    cube, _ = read_cube(uri, storage_options=storage.storage_options(uri))
    return cube


def remove_prefix(uri: str) -> None:
    """Delete everything under ``uri`` (the demo's own output prefixes, rewritten by every run)."""
    fs, path = storage.filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def normalise01(cube: np.ndarray) -> np.ndarray:
    """Min–max to [0, 1], as the test protocol does before degrading (:func:`hsivar_platform.data.degrade_case`)."""
    from hsivar_platform.data import normalise

    out = normalise(cube, None)
    return cube.astype(np.float32) if out is None else out


# ------------------------------------------------------------------------------------------ 1. data


def make_data(clean_prefix: str, n_train: int, n_val: int, n_test: int, size: int, bands: int, fmt: str,
              seed: int, echo: Echo) -> dict[str, Any]:
    """The clean demo dataset under ``clean_prefix`` (generated unless its manifest matches); → the manifest."""
    from hsivar.synth import make_demo_dataset

    man_uri = storage.join(clean_prefix, "manifest.json")
    want = {"counts": {"train": n_train, "val": n_val, "test": n_test}, "size": size, "bands": bands,
            "format": fmt, "seed": seed}
    if storage.exists(man_uri):
        manifest = json.loads(storage.read_bytes(man_uri))
        if all(manifest.get(k) == v for k, v in want.items()):
            echo(f"[demo] reusing the demo cubes under {clean_prefix}")
            return manifest
        remove_prefix(clean_prefix)
    echo(f"[demo] building {n_train} + {n_val} + {n_test} demo cubes ({bands} bands, {size}×{size} px) from real "
         f"reflectance spectra into {clean_prefix} …")
    make_demo_dataset(clean_prefix, n_train=n_train, n_val=n_val, n_test=n_test, size=size, bands=bands,
                      format=fmt, seed=seed)
    return json.loads(storage.read_bytes(man_uri))


PRODUCT_FORMATS = ("enmap", "prisma", "emit")
"""Sensor products the demo archive holds one scene of each (written in their real layouts)."""


def make_products(prefix: str, size: int, bands: int, seed: int, echo: Echo) -> list[str]:
    """One clean demo scene per sensor product (EnMAP L2A, PRISMA L2D, EMIT L2A) under ``prefix/<format>/``, in the
    product's real on-disk layout (:func:`hsivar.synth.make_demo_dataset`), so the batch job reads products and
    writes them as COGs with STAC Items; → the URI of each product's file that names it."""
    from hsivar.synth import make_demo_dataset

    named = []
    for fmt in PRODUCT_FORMATS:
        written = make_demo_dataset(storage.join(prefix, fmt), n_train=0, n_val=0, n_test=1, size=size, bands=bands,
                                    format=fmt, seed=seed)
        fs, path = storage.filesystem(written[-1])
        fs.rm(path)  # the dataset's manifest.json: not part of a product
        named.append(written[0])
    echo(f"[demo] wrote one {', '.join(PRODUCT_FORMATS)} scene each ({bands} bands, {size}×{size} px) under {prefix}")
    return named


@dataclass
class ArchiveItem:
    """One degraded held-out cube of the archive (and where its restoration will be)."""

    task: str
    level: float
    index: int
    clean_uri: str
    degraded_uri: str
    restored_uri: str
    record: Any  # hsivar.degrade.DegradationRecord


def make_archive(test_files: list[str], degraded_prefix: str, restored_prefix: str, wavelengths: list[float] | None,
                 echo: Echo, tasks: Sequence[str] = DEFAULT_TASKS) -> list[ArchiveItem]:
    """Degrade every held-out cube by every family of ``tasks`` (the model's) at its middle test level into
    ``degraded_prefix/<task>/``.

    The cubes are normalised and degraded exactly as the evaluation's protocol does (same seeds), so
    the batch outputs can be scored against the clean cubes.
    """
    from hsivar.degrade import degrade_for_test, protocol_cases

    remove_prefix(degraded_prefix)
    items = []
    for index, uri in enumerate(test_files):
        clean = normalise01(read(uri))
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        for case in protocol_cases("middle", tasks):
            task, level = case.task, case.level
            degraded, record = degrade_for_test(clean, task, level, index=index)
            dst = storage.join(degraded_prefix, task, name)
            write_cube(dst, np.asarray(degraded, np.float32), CubeMeta(bands=clean.shape[0], wavelengths=wavelengths),
                       storage_options=storage.storage_options(dst))
            items.append(ArchiveItem(task, float(level), index, uri, dst, storage.join(restored_prefix, task, name),
                                     record))
    echo(f"[demo] wrote {len(items)} degraded cubes ({len(test_files)} held-out × {len(tasks)} families) under "
         f"{degraded_prefix}")
    return items


def score_outputs(items: list[ArchiveItem]) -> tuple[list[dict[str, Any]], list[Example]]:
    """Score the batch outputs against the clean cubes.

    Returns:
        (per family: mean PSNR / SSIM / SAM of the degraded inputs and the restorations over the
        held-out cubes, plus the mean std and, on the entries each restoration synthesised (not kept as
        observed), the share within 1σ and 2σ and the correlation of σ with |error|; one :class:`Example` per
        family: its first cube).
    """
    from hsivar.metrics import evaluate_record
    from hsivar.uncertainty import coverage_stats
    from hsivar_platform.batch.keys import KEPT_SUFFIX, sidecar_uri, uncertainty_uri

    per_task: dict[str, list[dict[str, float]]] = {t: [] for t in TASKS}
    examples: dict[str, Example] = {}
    clean_cache: dict[str, np.ndarray] = {}
    for it in items:
        if it.clean_uri not in clean_cache:
            clean_cache[it.clean_uri] = normalise01(read(it.clean_uri))
        clean = clean_cache[it.clean_uri]
        degraded, restored = read(it.degraded_uri), read(it.restored_uri)
        std = read(uncertainty_uri(it.restored_uri)) if storage.exists(uncertainty_uri(it.restored_uri)) else None
        before = evaluate_record(degraded, clean, it.record).as_dict()
        after = evaluate_record(restored, clean, it.record).as_dict()
        kept_uri = sidecar_uri(it.restored_uri, KEPT_SUFFIX)
        free = ~read(kept_uri).astype(bool) if storage.exists(kept_uri) else np.ones(clean.shape, bool)
        cover = coverage_stats((restored - clean)[free], std[free]) if std is not None else \
            coverage_stats(np.empty(0), np.empty(0))
        per_task[it.task].append({"psnr_degraded": before["psnr"], "psnr_restored": after["psnr"],
                                  "ssim_degraded": before["ssim"], "ssim_restored": after["ssim"],
                                  "sam_degraded": before["sam"], "sam_restored": after["sam"],
                                  "mean_std": float(np.mean(std)) if std is not None else float("nan"), **cover})
        if it.task not in examples:
            examples[it.task] = Example(it.task, it.level, clean, degraded, restored, std, before["psnr"],
                                        after["psnr"])
    rows = []
    for task in TASKS:
        if per_task[task]:
            level = next(it.level for it in items if it.task == task)
            rows.append({"task": task, "level": level, "cubes": len(per_task[task]),
                         **{k: float(np.mean([r[k] for r in per_task[task]])) for k in per_task[task][0]}})
    return rows, [examples[t] for t in TASKS if t in examples]
