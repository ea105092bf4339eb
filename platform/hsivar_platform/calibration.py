"""``hsivar calibrate``: calibrate a published model on validation cubes after the fact, and publish the result.

The training job calibrates at the end of stage 3 (:func:`hsivar.calibrate.calibrate`). A model published before
the calibrated uncertainty existed, or one a team wants calibrated on its own held-out scenes, goes through the
same function here: the validation cubes are read and degraded by the seeded protocol exactly as the training
job's validation does (:func:`hsivar_platform.data.protocol_rows` → :func:`~hsivar_platform.data.degrade_case`),
restored in this process with the true task (no Ray: a few hundred tiles), and the model is published as a new
directory — the same weights, ``config.json`` with the fitted uncertainty and sharp blur width (and, with
``fit_trust``, the trust τ fitted again) and metadata saying where it came from. The input model is never changed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hsivar.calibrate import CalibrationExample, CalibrationFit, calibrate
from hsivar.degrade import DEFAULT_TASKS, protocol_cases
from hsivar.publish import load_published, save_published
from hsivar.restore import Restorer
from hsivar_platform import storage
from hsivar_platform.data import degrade_case, list_cubes, protocol_rows
from hsivar_platform.model_uri import pin_model_uri, resolve_model


def _location(uri: str) -> str:
    """A comparable form of a location: remote URIs without a trailing slash, local paths resolved."""
    return str(uri).rstrip("/") if storage.is_remote(uri) else str(Path(str(uri).removeprefix("file://")).resolve())


def calibration_examples(files: list[str], levels: str, *, bands: int, crop: int | None,
                         norm_window: int | None = None,
                         tasks: Sequence[str] = DEFAULT_TASKS) -> list[CalibrationExample]:
    """The seeded protocol's cases (``levels``: ``all`` or ``middle``) of the families ``tasks`` (the model's) on
    ``files``, as calibration examples ((C, H, W) in [0, 1]; cubes that cannot be read are left out with a warning,
    as in validation)."""
    rows = [degrade_case(r, bands=bands, crop=crop, norm_window=norm_window)
            for r in protocol_rows(files, protocol_cases(levels, tasks))]  # type: ignore[arg-type]
    return [CalibrationExample(np.asarray(r["degraded"], np.float32), np.asarray(r["clean"], np.float32),
                               str(r["task"]), float(r["level"]), np.asarray(r["band_mask"], bool))
            for r in rows if r is not None]


def calibrate_published(model_uri: str, data_uri: str, out: str, *, levels: str = "all",
                        max_cubes: int | None = None, crop: int | None = None, fit_trust: bool = False,
                        echo: Callable[[str], None] = print) -> CalibrationFit:
    """Calibrate the published model at ``model_uri`` on the cubes under ``data_uri`` and publish it at ``out``.

    Args:
        model_uri: a published model (dir, ``s3://``, ``models:/NAME/VERSION`` / ``latest`` / ``@ALIAS``).
        data_uri: a prefix of clean validation cubes (never the test cubes the model is judged on).
        out: where the calibrated copy is published (local dir or ``s3://`` prefix); must not be the input.
        levels: ``all`` (every level of the model's families: 19 cases per cube for MP-HSIR's six) or ``middle``
            (one per family).
        max_cubes: the first N cubes only; crop: centre crop side in pixels (None: whole cubes).
        fit_trust: fit the trust τ again too (default: keep the model's).
    Returns:
        The :class:`~hsivar.calibrate.CalibrationFit`.
    Raises:
        FileNotFoundError: no model or no cube; ValueError: ``out`` is the model's location, or no example
            of the model's tasks could be built.
    """
    pinned = pin_model_uri(model_uri)
    if _location(out) == _location(model_uri):
        raise ValueError(f"--out {out} is the model's own location; calibration publishes a new copy")
    model, doc = load_published(resolve_model(pinned))
    restorer = Restorer(model)
    files = list_cubes(data_uri)[: max_cubes or None]
    examples = calibration_examples(files, levels, bands=restorer.bands, crop=crop, tasks=restorer.tasks)
    echo(f"[hsivar] calibrating {pinned} on {len(examples)} example(s) from {len(files)} cube(s) under {data_uri}")
    fit = calibrate(restorer, examples, fit_trust=fit_trust)
    for line in fit.report(restorer.tasks):
        echo(f"[hsivar]   {line}")
    if fit.fit_width_scale is None:
        echo(f"[hsivar]   no blur example the data fit reads (noiseless, zero-padded, at most 128 px a side): the "
             f"model's ratio to the data fit's blur width stays {restorer.cfg.fit_width_scale:.2f}")
    for task, cov in fit.coverage.items():
        echo(f"[hsivar]   {task}: within 1σ {cov['cover_1sigma']:.3f}, within 2σ {cov['cover_2sigma']:.3f}, "
             f"corr(σ, |error|) {cov['std_error_corr']:.2f} ({fit.examples[task]} example(s))")
    metadata = {**doc.get("metadata", {}), "calibrated_from": pinned, "calibration_data": data_uri,
                "calibration_levels": levels, "calibration_examples": sum(fit.examples.values())}
    with tempfile.TemporaryDirectory(prefix="hsivar-calibrated-") as tmp:
        local = save_published(model, Path(tmp) / "model", stage=doc.get("stage", "decoder"), metadata=metadata)
        storage.upload_dir(local, out)
    echo(f"[hsivar] published the calibrated model at {out}")
    return fit
