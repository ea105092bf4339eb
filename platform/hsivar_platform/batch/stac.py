"""STAC metadata of a batch job's outputs, and STAC JSON as a batch job's input (with ``pystac``).

* **Items.** Every restored output ``…/a.tif`` gets ``…/a.tif.stac.json``: a STAC 1.1 Item whose geometry, bbox
  and ``proj:*`` fields come from the output's georeferencing (footprint in EPSG:4326; a swath product such as
  EMIT uses its ortho grid), ``eo:bands`` name every band with its centre wavelength and FWHM (µm, as the eo
  extension wants), and whose assets are the restored cube (``data``), its uncertainty cube and its mask of
  entries kept as observed when they were written. Provenance is in ``hsivar:*`` properties (input href and
  sha256, model URI as given and pinned, version, family, task and estimated task weights, samples, seed,
  software version) and a ``derived_from`` link to the input. Hrefs between the job's own files are relative,
  so the output prefix can be moved or copied as a whole.
* **Collection.** ``<output>/collection.json`` links every Item of the prefix, with the union of their
  footprints and time ranges; the driver rewrites it atomically as outputs finish and once at the end.
* **Inputs.** ``--input`` may be a STAC Item, Collection or ItemCollection JSON (local path or URI): the job
  restores the assets named by ``--asset`` (default: the assets with the role ``data``), each to
  ``<output>/<item id>/<asset file name>``.
* **Validation** (:func:`validate`) runs offline: against the STAC core schemas that ``pystac`` ships, and
  against extension schemas found in a local folder (``HSIVAR_STAC_SCHEMAS``, laid out like their URLs:
  ``<dir>/stac-extensions.github.io/eo/v1.1.0/schema.json``). Extension schemas without a local copy are
  reported as not checked, never downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension

import hsivar
from hsivar.io import CubeMeta
from hsivar_platform import storage

log = logging.getLogger(__name__)

ITEM_SUFFIX = ".stac.json"
"""Appended to an output's name to name its STAC Item: ``a.tif`` → ``a.tif.stac.json``."""

COLLECTION_NAME = "collection.json"
"""The STAC Collection of an output prefix."""

SCHEMA_DIR_ENV = "HSIVAR_STAC_SCHEMAS"
"""Environment variable naming a local folder of STAC extension schemas for :func:`validate`."""

_MEDIA_TYPES = {
    "geotiff": pystac.MediaType.COG,
    "hdf5": pystac.MediaType.HDF5,
    "npy": "application/x-npy",
    "npz": "application/zip",
    "mat": "application/x-matlab-data",
    "envi": "text/plain",  # the asset is the ENVI header, which names its data file
}


class StacInputError(ValueError):
    """A STAC input document cannot be used (not STAC JSON, no such asset); the message names the document."""


@dataclass
class Provenance:
    """How an output was made, recorded in its Item's ``hsivar:*`` properties.

    Attributes:
        input_uri: the restored input (absolute URI or path); input_sha256: sha256 hex of its bytes.
        model: the model URI the job loaded (pinned); model_requested: as given; model_version: its version.
        family: the model family (``hsivar``); task: the dominant task; task_weights: {task: weight}, the
            estimated (auto) or requested mixture; samples, seed: the decoding's.
        created: when it was restored (UTC); the Item's ``datetime`` when the input does not say when it was
            acquired.
    """

    input_uri: str
    input_sha256: str
    model: str
    model_requested: str
    model_version: str
    task: str
    task_weights: Mapping[str, float]
    samples: int
    seed: int
    family: str = "hsivar"
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def item_uri(output_uri: str) -> str:
    """``…/a.tif`` → ``…/a.tif.stac.json``."""
    return output_uri + ITEM_SUFFIX


def collection_uri(output_prefix: str) -> str:
    """``<output>/collection.json``."""
    return storage.join(output_prefix, COLLECTION_NAME)


def _relative(target: str, start_file: str) -> str:
    """Href of ``target`` relative to the folder of ``start_file`` (both under one prefix), ``./``-prefixed."""
    rel = posixpath.relpath(storage.filesystem(target)[1], posixpath.dirname(storage.filesystem(start_file)[1]))
    return rel if rel.startswith("..") else f"./{rel}"


def footprint(meta: CubeMeta, height: int, width: int) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The (GeoJSON polygon in EPSG:4326, bbox [west, south, east, north]) of a (H, W) raster, or (None, None).

    The grid is ``meta.crs`` + ``meta.transform``; a swath cube without them uses the ortho grid its product
    names (``meta.extras["product"]``: ``crs``, ``transform``, ``glt_shape``), e.g. EMIT's geolocation table.
    """
    from rasterio.warp import transform_geom

    crs, transform, shape = meta.crs, meta.transform, (height, width)
    product = meta.extras.get("product") or {}
    if (crs is None or transform is None) and product.get("crs") and product.get("transform"):
        crs, transform = product["crs"], tuple(product["transform"])
        shape = tuple(product.get("glt_shape") or shape)[-2:]
    if crs is None or transform is None:
        return None, None
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    h, w = shape
    corners = [(c + a * col + b * row, f + d * col + e * row) for col, row in ((0, 0), (w, 0), (w, h), (0, h))]
    polygon = {"type": "Polygon", "coordinates": [[list(p) for p in (*corners, corners[0])]]}
    geometry = transform_geom(crs, "EPSG:4326", polygon)
    xs = [p[0] for p in geometry["coordinates"][0]]
    ys = [p[1] for p in geometry["coordinates"][0]]
    return {"type": "Polygon", "coordinates": [[list(p) for p in geometry["coordinates"][0]]]}, \
        [min(xs), min(ys), max(xs), max(ys)]


def _acquired(meta: CubeMeta) -> datetime | None:
    """The acquisition time a sensor product states (``extras["product"]["datetime"]``, ISO 8601), as UTC."""
    text = (meta.extras.get("product") or {}).get("datetime")
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def output_item(output_uri: str, meta: CubeMeta, shape: Sequence[int], provenance: Provenance, *,
                item_id: str, output_sha256: str, assets: Mapping[str, str] | None = None) -> pystac.Item:
    """The STAC Item of one restored output.

    Args:
        output_uri: the restored cube; meta: its metadata (the input's, as written); shape: its (C, H, W).
        provenance: how it was made; item_id: unique within the output prefix (its key relative to it).
        output_sha256: sha256 hex of the output's bytes.
        assets: further assets written beside it, ``{key: uri}`` (``uncertainty``, ``kept``, ``glt``).

    Returns:
        A ``pystac.Item`` with relative asset hrefs (to the Item's own location, :func:`item_uri`).
    """
    c, h, w = (int(v) for v in shape)
    geometry, bbox = footprint(meta, h, w)
    acquired = _acquired(meta)
    when = acquired or provenance.created
    item = pystac.Item(id=item_id, geometry=geometry, bbox=bbox, datetime=when, properties={
        "created": provenance.created.isoformat().replace("+00:00", "Z"),
        "hsivar:input": provenance.input_uri,
        "hsivar:input_sha256": provenance.input_sha256,
        "hsivar:input_format": meta.format,
        "hsivar:model": provenance.model,
        "hsivar:model_requested": provenance.model_requested,
        "hsivar:model_version": provenance.model_version,
        "hsivar:family": provenance.family,
        "hsivar:task": provenance.task,
        "hsivar:task_weights": {k: float(v) for k, v in provenance.task_weights.items()},
        "hsivar:samples": int(provenance.samples),
        "hsivar:seed": int(provenance.seed),
        "hsivar:software_version": hsivar.__version__,
    })
    if meta.extras.get("product"):
        item.properties["hsivar:product"] = json.loads(json.dumps(meta.extras["product"], default=str))
    if acquired is None:
        item.properties["hsivar:datetime_is_processing_time"] = True
    href_of = item_uri(output_uri)
    fmt = _format_of(output_uri)
    media = _MEDIA_TYPES.get(fmt)
    data = pystac.Asset(_relative(output_uri, href_of), title="restored cube", media_type=media, roles=["data"],
                        extra_fields={"hsivar:sha256": output_sha256})
    item.add_asset("data", data)
    titles = {"uncertainty": ("per-entry error bar (input units)", ["uncertainty"]),
              "kept": ("1 where an entry holds the input's value, 0 where it was synthesised", ["metadata"]),
              "glt": ("geolocation table of the swath (x, y), on the product's ortho grid", ["metadata"])}
    for key, uri in (assets or {}).items():
        title, roles = titles.get(key, (key, ["metadata"]))
        item.add_asset(key, pystac.Asset(_relative(uri, href_of), title=title, roles=roles,
                                         media_type=_MEDIA_TYPES.get(_format_of(uri))))
    if meta.wavelengths is not None or meta.band_names is not None:
        bands = []
        for i in range(c):
            name = meta.band_names[i] if meta.band_names is not None else f"band_{i + 1}"
            centre = meta.wavelengths[i] / 1000.0 if meta.wavelengths is not None else None
            width = meta.fwhm[i] / 1000.0 if meta.fwhm is not None else None
            bands.append(Band.create(name=name, center_wavelength=centre, full_width_half_max=width))
        EOExtension.ext(item.assets["data"], add_if_missing=True).apply(bands=bands)
    if meta.crs is not None and meta.transform is not None:
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        code = _epsg_code(meta.crs)
        proj.apply(code=code, wkt2=None if code else _wkt2(meta.crs), shape=[h, w],
                   transform=[float(v) for v in meta.transform[:6]])
    return item


def _format_of(uri: str) -> str | None:
    from hsivar.io import detect_format

    try:
        return detect_format(uri)
    except ValueError:
        return None


def _epsg_code(crs: str) -> str | None:
    from rasterio.crs import CRS

    epsg = CRS.from_user_input(crs).to_epsg()
    return f"EPSG:{epsg}" if epsg else None


def _wkt2(crs: str) -> str:
    from rasterio.crs import CRS

    return CRS.from_user_input(crs).to_wkt(version="WKT2_2019")


def time_text(when: datetime) -> str:
    """A UTC instant as STAC writes it (``2022-06-09T08:12:27Z``)."""
    return pystac.utils.datetime_to_str(when)


def _to_json(obj: pystac.STACObject | Mapping[str, Any]) -> bytes:
    d = obj if isinstance(obj, Mapping) else obj.to_dict(include_self_link=False, transform_hrefs=False)
    return json.dumps(d, indent=1).encode()


def write_item(item: pystac.Item, output_uri: str, output_prefix: str) -> str:
    """Write ``item`` beside its output, atomically, with a ``collection`` link to the prefix's Collection;
    → the Item's URI."""
    uri = item_uri(output_uri)
    item.collection_id = collection_id(output_prefix)
    rel = _relative(collection_uri(output_prefix), uri)
    item.add_link(pystac.Link(pystac.RelType.COLLECTION, rel, media_type=pystac.MediaType.JSON))
    item.add_link(pystac.Link(pystac.RelType.ROOT, rel, media_type=pystac.MediaType.JSON))
    item.add_link(pystac.Link(pystac.RelType.PARENT, rel, media_type=pystac.MediaType.JSON))
    item.add_link(pystac.Link(pystac.RelType.DERIVED_FROM, item.properties["hsivar:input"]))
    storage.write_bytes(uri, _to_json(item))
    return uri


def collection_id(output_prefix: str) -> str:
    """The Collection id of an output prefix: ``hsivar-<last segment>``."""
    return "hsivar-" + (posixpath.basename(storage.filesystem(output_prefix)[1].rstrip("/")) or "restored")


class CollectionWriter:
    """``<output>/collection.json``, rewritten atomically from the Items added so far; each Item is read once (for
    its id, bbox and time range), so rewriting as outputs finish costs no more reads."""

    def __init__(self, output_prefix: str) -> None:
        """``output_prefix``: the batch job's output prefix (normalised, see ``keys.norm_prefix``)."""
        self.prefix = output_prefix
        self.uri = collection_uri(output_prefix)
        self._items: dict[str, tuple[str, list[float] | None, list[datetime]]] = {}
        self.changed = False  # Items were added since the last write

    def add(self, item_at: str, item: Mapping[str, Any] | None = None) -> None:
        """Add the Item at ``item_at``: its JSON ``item`` when the caller holds it, else read now (a missing or
        unreadable Item is left out, with a warning)."""
        if item_at in self._items:
            return
        if item is None:
            try:
                item = json.loads(storage.read_bytes(item_at))
            except (OSError, ValueError) as exc:
                log.warning("STAC Item %s left out of the Collection: %s", item_at, exc)
                return
        props = item.get("properties", {})
        times = [datetime.fromisoformat(props[k].replace("Z", "+00:00"))
                 for k in ("datetime", "start_datetime", "end_datetime") if props.get(k)]
        self._items[item_at] = (str(item.get("id")), item.get("bbox"), times)
        self.changed = True

    def __len__(self) -> int:
        return len(self._items)

    def write(self) -> str:
        """Write the Collection linking every Item added, with the union of their extents; → its URI."""
        boxes = [box for _, box, _ in self._items.values() if box]
        times = [t for _, _, ts in self._items.values() for t in ts]
        bbox = ([min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                 max(b[3] for b in boxes)] if boxes else [-180.0, -90.0, 180.0, 90.0])
        interval = [min(times), max(times)] if times else [datetime.now(timezone.utc), None]
        collection = pystac.Collection(
            id=collection_id(self.prefix),
            description=f"Cubes restored by hsivar {hsivar.__version__} under {self.prefix}",
            extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
            license="other", title="hsivar restorations")
        for item_at, (item_id, _, _) in sorted(self._items.items()):
            collection.add_link(pystac.Link(pystac.RelType.ITEM, _relative(item_at, self.uri),
                                            media_type=pystac.MediaType.JSON, title=item_id))
        d = collection.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = [link for link in d["links"] if link["rel"] != "root"] + [
            {"rel": "root", "href": f"./{COLLECTION_NAME}", "type": pystac.MediaType.JSON}]
        storage.write_bytes(self.uri, _to_json(d))
        self.changed = False
        return self.uri


def validate(obj: Mapping[str, Any], schema_dir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """Validate a STAC Item / Collection / Catalog dict offline; → (schema URIs checked, schema URIs not checked
    because no local copy exists).

    Core schemas come with ``pystac`` (STAC 1.1.0); a schema ``https://host/path`` (an extension's, or the core
    schema of another STAC version) is read from ``<schema_dir>/host/path`` (default ``$HSIVAR_STAC_SCHEMAS``)
    when that file exists. Nothing is downloaded: a schema, or a schema it refers to, without a local copy is
    reported as not checked.

    Raises:
        pystac.errors.STACValidationError: the object breaks a schema (the message names the object and rule).
    """
    import referencing.exceptions
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    root = schema_dir if schema_dir is not None else os.environ.get(SCHEMA_DIR_ENV)

    class Offline(JsonSchemaSTACValidator):
        def _get_schema(self, schema_uri: str) -> dict[str, Any]:
            if schema_uri not in self.schema_cache:
                local = Path(root, schema_uri.split("://", 1)[-1]) if root else None
                if local is None or not local.is_file():
                    raise _NotLocal(schema_uri)
                self.schema_cache[schema_uri] = json.loads(local.read_text())
            return self.schema_cache[schema_uri]

    validator = Offline()
    d = dict(obj)
    kind = pystac.STACObjectType(d["type"] if d.get("type") in ("Collection", "Catalog") else "Feature")
    version = d.get("stac_version", pystac.get_stac_version())
    core = validator.schema_uri_map.get_object_schema_uri(kind, version)
    checked, skipped = [], []
    for uri in [core, *d.get("stac_extensions", [])]:
        try:
            validator._get_schema(uri)  # without a local copy: not checked (and nothing for pystac to log)
            if uri == core:
                validator.validate_core(d, kind, version)
            else:
                validator.validate_extension(d, kind, version, uri)
            checked.append(uri)
        except (_NotLocal, referencing.exceptions.Unresolvable):
            skipped.append(uri)
    return checked, skipped


class _NotLocal(LookupError):
    """A schema without a local copy (:func:`validate` never downloads one)."""


@dataclass
class StacAsset:
    """One asset a STAC input names: its item's id, its absolute href."""

    item_id: str
    href: str


def stac_assets(uri: str, assets: Sequence[str] | None = None) -> list[StacAsset]:
    """The assets to restore from a STAC Item, Collection / Catalog (its ``item`` links) or ItemCollection JSON at
    ``uri``; an asset named twice (the same href) is listed once.

    Args:
        uri: local path or URI of the JSON document.
        assets: asset keys to take from every item; default: the assets whose roles include ``data``.

    Raises:
        StacInputError: not JSON, not a STAC Item / Collection / ItemCollection, no item, an item without a named
            asset or with an unusable id, a malformed link or asset (the message names the document).
    """
    try:
        d = json.loads(storage.read_bytes(uri))
    except (OSError, ValueError) as exc:
        raise StacInputError(f"{uri}: cannot read as STAC JSON: {exc}") from exc
    try:
        out = _assets_of(uri, d, assets)
    except (KeyError, TypeError, AttributeError) as exc:
        raise StacInputError(f"{uri}: malformed STAC document ({type(exc).__name__}: {exc})") from exc
    if not out:
        raise StacInputError(f"{uri}: no item to restore (a Collection / Catalog is read through its 'item' links)")
    unique = {a.href: a for a in reversed(out)}
    return [a for a in out if unique[a.href] is a]


def _assets_of(uri: str, d: Any, assets: Sequence[str] | None) -> list[StacAsset]:
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "Feature":
        items = [(d, uri)]
    elif kind == "FeatureCollection":
        items = [(f, uri) for f in d.get("features", [])]
    elif kind in ("Collection", "Catalog"):
        items = []
        for link in d.get("links", []):
            if link.get("rel") == "item":
                href = _absolute(link["href"], uri)
                try:
                    items.append((json.loads(storage.read_bytes(href)), href))
                except (OSError, ValueError) as exc:
                    raise StacInputError(f"{uri}: cannot read its item {href}: {exc}") from exc
    else:
        raise StacInputError(f"{uri}: not a STAC Item, Collection or ItemCollection (type {kind!r})")
    out = []
    for item, at in items:
        item_id = str(item.get("id") or "")
        if not item_id or "/" in item_id or item_id in (".", ".."):
            raise StacInputError(f"{uri}: an item has an unusable id {item_id!r}")
        named = item.get("assets", {})
        keys = list(assets) if assets else [k for k, a in named.items() if "data" in (a.get("roles") or [])]
        if not keys:
            raise StacInputError(f"{uri}: item {item_id!r} has no asset with the role 'data'; name one with --asset "
                                 f"(it has: {', '.join(named) or 'none'})")
        for key in keys:
            if key not in named:
                raise StacInputError(f"{uri}: item {item_id!r} has no asset {key!r} (it has: {', '.join(named)})")
            out.append(StacAsset(item_id, _absolute(named[key]["href"], at)))
    return out


def _absolute(href: str, base: str) -> str:
    """``href`` resolved against the document at ``base``, as a browser would (RFC 3986): absolute URIs stay,
    others join the base's folder (``/x`` on a remote base: the base's bucket or host); local paths are
    percent-decoded."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    if "://" in href:
        return href
    if storage.is_remote(base):  # urljoin knows http(s) only: join the path part by hand (s3://bucket/…)
        parts = urlsplit(base)
        path = href if href.startswith("/") else posixpath.join(posixpath.dirname(parts.path), href)
        return urlunsplit((parts.scheme, parts.netloc, posixpath.normpath(path), "", ""))
    if href.startswith("/"):
        return unquote(href)
    return str((Path(base.removeprefix("file://")).absolute().parent / unquote(href)).resolve())
