"""The batch job's manifest: ``<output>/_manifest.parquet``, one row per input.

Columns (:data:`MANIFEST_COLUMNS`): input and output URIs, status (``ok`` / ``failed`` / ``skipped``),
error message, shape, bands, task used and its weights, tiles, seconds, the output's and the
uncertainty cube's sha256, the mask of entries kept as observed, what was known of the observation
(JSON: fraction of unobserved entries, missing bands, sr scale, noise σ), the model — ``model`` the URI the
job loaded, pinned (``models:/NAME/latest`` and aliases become ``models:/NAME/<version>``), ``model_requested``
the URI as given, ``model_version`` the registry version or a digest of the weights — when the row
finished, the output's STAC Item (:mod:`hsivar_platform.batch.stac`) and a warning when that metadata (Item,
geolocation table) could not be written beside a good output. The whole file is rewritten
atomically (:func:`hsivar_platform.storage.write_bytes`), so a killed job never leaves a corrupt manifest.
Manifests written before a column existed read back with it None.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from hsivar_platform import storage

MANIFEST_NAME = "_manifest.parquet"
"""File name of the manifest under the output prefix (``_`` keeps it out of prefix listings)."""

STATUSES = ("ok", "failed", "skipped")

MANIFEST_COLUMNS: tuple[str, ...] = (
    "input_uri", "output_uri", "status", "error", "shape", "bands", "task", "task_weights", "tiles",
    "seconds", "checksum", "uncertainty_uri", "uncertainty_checksum", "kept_uri", "observation", "model",
    "model_requested", "model_version", "finished_at", "stac_item_uri", "warning",
)


def manifest_schema() -> Any:
    """The pyarrow schema of ``_manifest.parquet`` (one row per input)."""
    import pyarrow as pa

    return pa.schema([
        ("input_uri", pa.string()), ("output_uri", pa.string()), ("status", pa.string()),
        ("error", pa.string()), ("shape", pa.list_(pa.int64())), ("bands", pa.int64()), ("task", pa.string()),
        ("task_weights", pa.string()), ("tiles", pa.int64()), ("seconds", pa.float64()),
        ("checksum", pa.string()), ("uncertainty_uri", pa.string()), ("uncertainty_checksum", pa.string()),
        ("kept_uri", pa.string()), ("observation", pa.string()), ("model", pa.string()),
        ("model_requested", pa.string()), ("model_version", pa.string()),
        ("finished_at", pa.timestamp("ms", tz="UTC")), ("stac_item_uri", pa.string()), ("warning", pa.string()),
    ])


def manifest_uri(output_prefix: str) -> str:
    """Where the manifest of ``output_prefix`` lives."""
    return storage.join(output_prefix, MANIFEST_NAME)


def read_manifest(output_prefix: str) -> dict[str, dict[str, Any]]:
    """The manifest rows under ``output_prefix`` keyed by input URI ({} when there is none); a column an older
    manifest lacks (e.g. ``model_requested``) is None in its rows."""
    import pyarrow.parquet as pq

    uri = manifest_uri(output_prefix)
    if not storage.exists(uri):
        return {}
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    return {row["input_uri"]: {**dict.fromkeys(MANIFEST_COLUMNS), **row} for row in table.to_pylist()}


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


def record(input_uri: str, status: str, **fields: Any) -> dict[str, Any]:
    """A manifest row for ``input_uri`` with ``status`` (one of :data:`STATUSES`), finished now."""
    row: dict[str, Any] = dict.fromkeys(MANIFEST_COLUMNS)
    row.update(input_uri=input_uri, status=status, error="", finished_at=datetime.now(timezone.utc))
    row.update(fields)
    return row
