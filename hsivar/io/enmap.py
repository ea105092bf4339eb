"""EnMAP L1C / L2A products (DLR ground segment, ``GeoTIFF+Metadata`` delivery), read only.

A product is a folder of files sharing one prefix, e.g.
``ENMAP01-____L2A-DT0000001280_20220609T081227Z_001_V010110_20221108T122313Z``
(``DT<datatake>_<tile start UTC>_<tile>_V<processor version, 2 digits per part>_<processing time>``):

- ``<prefix>-SPECTRAL_IMAGE.TIF``: the cube, a GeoTIFF on a map grid (UTM zone of the scene), int16
  digital numbers, one raster band per spectral band (band- or pixel-interleaved);
- ``<prefix>-METADATA.XML``: root ``level_X``; per band ``specific/bandCharacterisation/bandID[@number]``
  with ``wavelengthCenterOfBand`` (nm), ``FWHMOfBand`` (nm), ``GainOfBand`` and ``OffsetOfBand``; the
  band count ``product/image/merge/channels``; ``base/level`` (``L1C`` / ``L2A``);
  ``base/temporalCoverage/startTime`` / ``stopTime``; ``specific/backgroundValue``;
  ``product/ortho/projection`` (``UTM_Zone33_North``, ...);
- quality layers ``<prefix>-QL_QUALITY_{CLOUD,CIRRUS,HAZE,SNOW,CLOUDSHADOW,CLASSES,TESTFLAGS}.TIF`` and
  ``-QL_PIXELMASK.TIF``, quicklooks ``-QL_VNIR.TIF`` / ``-QL_SWIR.TIF``, ``-THUMBNAIL.jpg``,
  ``-HISTORY.XML``.

The layout follows the EnMAP product specification as read by ESA SNAP's EnMAP reader (``EnmapMetadata``:
the XPaths above, the file-name regular expressions), EnPT's L2A writer (``EnMAP_Metadata_L2A_MapGeo``:
``bandID`` elements, ``ortho/projection`` values) and the EnMAP-Box L1C / L2A importers (physical value
= DN x ``GainOfBand`` + ``OffsetOfBand``; L2A reflectance gain 1e-4, offset 0).

What the reader returns: float32 physical values (L2A: surface reflectance, L1C: top-of-atmosphere
radiance) = DN x gain + offset per band, except that DNs equal to the no-data value (the GeoTIFF's
nodata, else ``specific/backgroundValue``; -32768 in DLR products) keep that value unscaled and
``meta.nodata`` says it. Wavelengths and FWHM (nm) come from the XML; CRS and transform from the GeoTIFF.
``meta.missing``: a pixel is not observed in any band where the cloud, cirrus, snow or cloud-shadow
layer flags it (nonzero, other than the layer's own nodata value). Haze is *not* treated as missing: a
hazy pixel is a degraded observation, not a lost one. Absent quality layers are not used.

Not supported: L1B (sensor geometry, separate ``SPECTRAL_IMAGE_VNIR`` / ``_SWIR`` cubes), the
``BSQ/BIL/BIP+Metadata`` and ``JPEG2000+Metadata`` deliveries, EOLab's analysis-ready ``*_COG.tiff``
products, the per-band ``QL_PIXELMASK`` (defective detector pixels), the land/water classes, the
detector-overlap band handling and bad-band lists (``expectedChannelsList``, band statistics).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pathlib
import posixpath
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.windows
from affine import Affine
from rasterio.crs import CRS

from hsivar.io import layout
from hsivar.io.bands import spacing_fwhm
from hsivar.io.location import Location, resolve_location, staged
from hsivar.io.masks import MissingReader
from hsivar.io.meta import CubeError, CubeMeta

__all__ = [
    "ENMAP_ERRORS",
    "MISSING_LAYERS",
    "NAME_PATTERNS",
    "SPECTRAL_SUFFIX",
    "member_of",
    "open_enmap",
    "write_demo",
]

NAME_PATTERNS: tuple[str, ...] = ("*-SPECTRAL_IMAGE.TIF",)
SPECTRAL_SUFFIX = "-SPECTRAL_IMAGE.TIF"
"""What ends the name of the file holding an EnMAP product's cube; the product's other files share its prefix."""

METADATA_SUFFIX = "-METADATA.XML"
"""What ends the name of the product's metadata XML."""

MISSING_LAYERS: tuple[str, ...] = ("CLOUD", "CIRRUS", "SNOW", "CLOUDSHADOW")
"""Quality layers (``<prefix>-QL_QUALITY_<name>.TIF``) whose flagged pixels are not observed in any band."""

DEGRADED_LAYERS: tuple[str, ...] = ("HAZE",)
"""Quality layers that flag degraded, still observed pixels (never missing)."""

NODATA = -32768
"""The no-data DN of DLR's int16 L1C / L2A cubes."""

L2A_GAIN = 1.0e-4
"""``GainOfBand`` of DLR L2A reflectance (offset 0): reflectance = DN x 1e-4."""

_MEMBER = re.compile(r"^(?P<prefix>.+)-(?:QL_[A-Z0-9_]+|METADATA|HISTORY|LICENSE|THUMBNAIL)\.(?:TIF|XML|TXT|jpg|JPG)$")
_VERSION = re.compile(r"_V(\d{6})_")
_LEVEL = re.compile(r"-_*(L1B|L1C|L2A)-")

ENMAP_ERRORS: tuple[type[Exception], ...] = (rasterio.errors.RasterioError, ET.ParseError)
"""Library errors meaning "not a valid EnMAP product" (besides OSError, ValueError, ...)."""


# ------------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Bands:
    """What ``bandCharacterisation`` says, in band order (``bandID`` number 1..C)."""

    wavelengths: list[float]
    fwhm: list[float] | None
    gains: np.ndarray  # (C,) float64, as written in the XML
    offsets: np.ndarray  # (C,) float64


@dataclass
class _Metadata:
    """The facts the reader takes from ``METADATA.XML``."""

    bands: _Bands
    channels: int | None
    background: float | None
    projection: str | None
    product: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def member_of(uri: str) -> str | None:
    """The ``…-SPECTRAL_IMAGE.TIF`` of the EnMAP product that file ``uri`` belongs to (``…-METADATA.XML``,
    ``…-QL_QUALITY_CLOUD.TIF``, ``…-THUMBNAIL.jpg``, …), in the same folder, else ``None``."""
    head, name = posixpath.split(uri)
    match = _MEMBER.match(name)
    if match is None:
        return None
    return posixpath.join(head, match["prefix"] + SPECTRAL_SUFFIX) if head else match["prefix"] + SPECTRAL_SUFFIX


def _sibling(loc: Location, prefix: str, suffix: str) -> Location:
    return loc.with_path(posixpath.join(posixpath.dirname(loc.path), prefix + suffix))


def _float(text: str | None, src: str, what: str) -> float:
    """A number of the XML; CubeError naming ``src`` and ``what`` when absent or not a finite number."""
    try:
        value = float((text or "").strip())
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise CubeError(f"{src}: {what} is {text!r}, not a finite number")
    return value


def _band_characterisation(root: ET.Element, src: str) -> _Bands:
    elements = root.findall("specific/bandCharacterisation/bandID")
    if not elements:
        raise CubeError(f"{src}: no specific/bandCharacterisation/bandID elements: not an EnMAP L1C/L2A metadata file")
    numbers = []
    for i, el in enumerate(elements):
        number = el.get("number", str(i + 1))
        if not number.strip().isdigit():
            raise CubeError(f"{src}: bandID number {number!r} is not a band number")
        numbers.append(int(number))
    if sorted(numbers) != list(range(1, len(elements) + 1)):
        raise CubeError(f"{src}: bandID numbers {sorted(numbers)} are not 1..{len(elements)}")
    ordered = [el for _, el in sorted(zip(numbers, elements), key=lambda pair: pair[0])]
    wavelengths, fwhm, gains, offsets = [], [], [], []
    for number, el in enumerate(ordered, start=1):
        what = f"band {number}"
        wavelengths.append(_float(el.findtext("wavelengthCenterOfBand"), src, f"{what} wavelengthCenterOfBand"))
        gains.append(_float(el.findtext("GainOfBand"), src, f"{what} GainOfBand"))
        offset = el.findtext("OffsetOfBand")
        offsets.append(0.0 if offset is None else _float(offset, src, f"{what} OffsetOfBand"))
        width = el.findtext("FWHMOfBand")
        fwhm.append(None if width is None else _float(width, src, f"{what} FWHMOfBand"))
    return _Bands(
        wavelengths=wavelengths,
        fwhm=None if any(v is None for v in fwhm) else fwhm,
        gains=np.asarray(gains, np.float64),
        offsets=np.asarray(offsets, np.float64),
    )


def _product_facts(root: ET.Element, prefix: str) -> dict[str, Any]:
    """Product level, sensor, acquisition times, processor version, datatake / tile: a small JSON-able dict."""
    level = (root.findtext("base/level") or "").strip()
    if not level:
        match = _LEVEL.search(prefix)
        level = match[1] if match else ""
    facts: dict[str, Any] = {"platform": "EnMAP", "sensor": "HSI", "name": prefix}
    if level:
        facts["level"] = level
        facts["quantity"] = "surface reflectance" if level.startswith("L2") else "top-of-atmosphere radiance"
    start = layout.iso_utc(root.findtext("base/temporalCoverage/startTime"))
    stop = layout.iso_utc(root.findtext("base/temporalCoverage/stopTime"))
    if start:
        facts["datetime"] = start
    if stop:
        facts["end_datetime"] = stop
    version = _VERSION.search(prefix)
    if version:  # V010302 = processor 1.3.2 (two digits per part)
        digits = version[1]
        facts["version"] = ".".join(str(int(digits[i : i + 2])) for i in (0, 2, 4))
    for key, path in (("datatake", "specific/datatakeID"), ("tile", "specific/tileID")):
        text = (root.findtext(path) or "").strip()
        if text:
            facts[key] = text
    return facts


def _read_metadata(xml: Location, prefix: str) -> _Metadata:
    """Parse ``METADATA.XML``; CubeError naming it when it is absent, malformed or lacks the band table."""
    if not xml.fs.isfile(xml.path):
        raise CubeError(f"{xml.text}: EnMAP metadata file missing (expected beside the spectral image)")
    with xml.open() as f:
        data = f.read()
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise CubeError(f"{xml.text}: malformed XML: {exc}") from exc
    bands = _band_characterisation(root, xml.text)
    channels_text = root.findtext("product/image/merge/channels")
    channels = None
    if channels_text is not None:
        if not channels_text.strip().isdigit():
            raise CubeError(f"{xml.text}: product/image/merge/channels is {channels_text!r}, not a band count")
        channels = int(channels_text)
    background_text = root.findtext("specific/backgroundValue")
    meta = _Metadata(
        bands=bands,
        channels=channels,
        background=None,
        projection=(root.findtext("product/ortho/projection") or "").strip() or None,
        product=_product_facts(root, prefix),
    )
    if background_text is not None:
        try:
            meta.background = float(background_text)
        except ValueError:
            meta.warnings.append(f"ignored specific/backgroundValue {background_text!r}")
    if "datetime" not in meta.product and root.find("base/temporalCoverage/startTime") is not None:
        meta.warnings.append("ignored base/temporalCoverage/startTime: not an ISO-8601 time")
    return meta


def _crs_from_projection(projection: str | None) -> str | None:
    """``product/ortho/projection`` (``UTM_Zone33_North``, ``Geographic``, ``LAEA-ETRS89``) as ``EPSG:xxxx``."""
    if projection is None:
        return None
    match = re.fullmatch(r"UTM_Zone(\d{1,2})_(North|South)", projection)
    if match and 1 <= int(match[1]) <= 60:
        return f"EPSG:{(32600 if match[2] == 'North' else 32700) + int(match[1])}"
    return {"Geographic": "EPSG:4326", "LAEA-ETRS89": "EPSG:3035"}.get(projection)


def _open_raster(loc: Location, stack: contextlib.ExitStack) -> Any:
    """A rasterio dataset of ``loc`` (remote files through fsspec), closed by ``stack``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return stack.enter_context(rasterio.open(loc.path) if loc.local else rasterio.open(loc.path, opener=loc.fs))


def _missing_reader(
    loc: Location, prefix: str, shape: tuple[int, int, int], stack: contextlib.ExitStack
) -> tuple[MissingReader | None, list[str]]:
    """The reader of the pixels the cloud / cirrus / snow / cloud-shadow layers flag (every band of them
    missing), and the names of the layers present; ``(None, [])`` when none is.

    Raises:
        CubeError: a layer whose raster size differs from the cube's (the message names the layer).
    """
    count, height, width = shape
    layers = []
    for name in MISSING_LAYERS:
        ql = _sibling(loc, prefix, f"-QL_QUALITY_{name}.TIF")
        if not ql.fs.isfile(ql.path):
            continue  # products may be delivered without some layers
        ds = _open_raster(ql, stack)
        if (ds.height, ds.width) != (height, width):
            raise CubeError(
                f"{ql.text}: quality layer is {ds.height} x {ds.width} pixels, the spectral image {height} x {width}"
            )
        layers.append((name, ds))
    if not layers:
        return None, []

    def read(window: layout.Window, bands: list[int] | None) -> np.ndarray:
        r0, c0, h, w = window
        flagged = np.zeros((h, w), bool)
        for _, ds in layers:
            values = ds.read(1, window=rasterio.windows.Window(c0, r0, w, h))
            hit = values != 0
            if ds.nodata is not None:  # the layer's own fill value (outside the scene) is not a flag
                hit &= values != ds.nodata
            flagged |= hit
        c = count if bands is None else len(bands)
        return np.broadcast_to(flagged[None], (c, h, w)).copy()

    return read, [name for name, _ in layers]


def open_enmap(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions) -> layout.Source:
    """Open an EnMAP L1C / L2A product by its ``…-SPECTRAL_IMAGE.TIF``; ``…-METADATA.XML`` and the quality
    layers are found beside it. Only headers and the XML are read here; values are read by window.

    Raises:
        CubeError: a file name that does not end in ``-SPECTRAL_IMAGE.TIF``; ``METADATA.XML`` missing,
            malformed or without a band table; band counts of the XML and the GeoTIFF that disagree; a
            quality layer of another raster size (not looked at when only the shape is asked); a spectral
            image that is not an integer or float GeoTIFF.
    """
    name = posixpath.basename(loc.path)
    if not name.endswith(SPECTRAL_SUFFIX):
        raise CubeError(f"{loc.text}: not an EnMAP spectral image (the name must end in {SPECTRAL_SUFFIX})")
    prefix = name[: -len(SPECTRAL_SUFFIX)]
    xml = _sibling(loc, prefix, METADATA_SUFFIX)
    info = _read_metadata(xml, prefix)
    ds = _open_raster(loc, stack)
    count = len(info.bands.wavelengths)
    if info.channels is not None and info.channels != count:
        raise CubeError(
            f"{xml.text}: product/image/merge/channels says {info.channels} bands, "
            f"bandCharacterisation describes {count}"
        )
    if ds.count != count:
        raise CubeError(f"{loc.text}: {ds.count} raster bands, but {xml.text} describes {count} bands")
    dtype = np.result_type(*ds.dtypes)
    layout.check_numeric(dtype, loc.text)
    shape = (ds.count, ds.height, ds.width)

    nodata = ds.nodata if ds.nodata is not None else info.background
    gains, offsets = info.bands.gains.astype(np.float32), info.bands.offsets.astype(np.float32)

    def read(window: layout.Window, bands: list[int] | None) -> np.ndarray:
        r0, c0, h, w = window
        indexes = [b + 1 for b in bands] if bands is not None else None
        raw = ds.read(indexes=indexes, window=rasterio.windows.Window(c0, r0, w, h))
        sel = slice(None) if bands is None else bands
        values = raw.astype(np.float32) * gains[sel][:, None, None] + offsets[sel][:, None, None]
        if nodata is not None:
            values[raw == nodata] = nodata  # no-data stays unscaled (meta.nodata says it)
        return values

    crs = ds.crs.to_string() if ds.crs else _crs_from_projection(info.projection)
    georeferenced = ds.crs is not None or not ds.transform.is_identity
    extras: dict[str, Any] = {
        "product": info.product,
        "scale": [float(g) for g in info.bands.gains],  # per band: physical = DN * scale + offset
        "offset": [float(o) for o in info.bands.offsets],
        "source_dtype": dtype.name,
        "metadata_file": xml.text,
        "tiff_interleave": (ds.profile.get("interleave") or "").lower() or None,
    }
    if info.warnings:
        extras["warnings"] = list(info.warnings)
    read_missing = None
    if not opts.shape_only:
        read_missing, used = _missing_reader(loc, prefix, shape, stack)
        extras["quality_layers"] = used
    meta = CubeMeta(
        bands=count,
        wavelengths=list(info.bands.wavelengths),
        fwhm=list(info.bands.fwhm) if info.bands.fwhm is not None else None,
        crs=crs,
        transform=tuple(ds.transform)[:6] if georeferenced else None,
        nodata=float(nodata) if nodata is not None else None,
        dtype="float32",
        format="enmap",
        layout="chw",
        extras=extras,
    )
    return layout.Source(shape=shape, meta=meta, read=read, read_missing=read_missing)


# ------------------------------------------------------------------------------------------------
# Demo / test products


def _demo_prefix(index: int) -> tuple[str, dt.datetime]:
    """A product prefix unique per ``index`` (tile number and start time), and the tile's start time."""
    start = dt.datetime(2022, 6, 9, 8, 12, 27, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=4 * index)
    processed = dt.datetime(2022, 11, 8, 12, 23, 13, tzinfo=dt.timezone.utc)
    prefix = f"ENMAP01-____L2A-DT0000001280_{start:%Y%m%dT%H%M%SZ}_{index + 1:03d}_V010502_{processed:%Y%m%dT%H%M%SZ}"
    return prefix, start


def _sub(parent: ET.Element, tag: str, text: Any = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = str(text)
    return el


def _demo_xml(
    prefix: str,
    start: dt.datetime,
    wavelengths: np.ndarray,
    fwhm: np.ndarray,
    shape: tuple[int, int, int],
    files: list[tuple[str, int]],
    crs_epsg: int,
    pixel: float,
) -> bytes:
    """The METADATA.XML of a demo L2A product: the elements the reader uses plus the identifying ones."""
    c, h, w = shape
    stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
    root = ET.Element("level_X", {"xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance"})
    meta = _sub(root, "metadata")
    _sub(_sub(meta, "schema"), "processingLevel", "L2A")
    _sub(meta, "name", prefix + METADATA_SUFFIX)
    processing = _sub(root, "processing")
    _sub(processing, "productFormat", "GeoTIFF+Metadata")
    _sub(processing, "mapProjection", "UTM_Zone_of_Scene_Center")
    base = _sub(root, "base")
    _sub(base, "format", "ENMAP_L2A")
    _sub(base, "level", "L2A")
    coverage = _sub(base, "temporalCoverage")
    _sub(coverage, "startTime", start.strftime(stamp))
    _sub(coverage, "stopTime", (start + dt.timedelta(seconds=4)).strftime(stamp))
    specific = _sub(root, "specific")
    _sub(specific, "code", "L2A")
    _sub(specific, "datatakeID", "1280")
    _sub(specific, "tileID", prefix.split("_")[-3])
    _sub(specific, "backgroundValue", NODATA)
    _sub(specific, "widthOfOrthoScene", w)
    _sub(specific, "heightOfOrthoScene", h)
    _sub(specific, "pixelSizeOfOrthoScene", int(pixel))
    table = _sub(specific, "bandCharacterisation")
    for i in range(c):
        band = _sub(table, "bandID", number=str(i + 1))
        _sub(band, "wavelengthCenterOfBand", f"{wavelengths[i]:.3f}")
        _sub(band, "FWHMOfBand", f"{fwhm[i]:.3f}")
        _sub(band, "GainOfBand", repr(L2A_GAIN))
        _sub(band, "OffsetOfBand", "0")
    product = _sub(root, "product")
    merge = _sub(_sub(product, "image"), "merge")
    _sub(merge, "channels", c)
    _sub(merge, "name", prefix + SPECTRAL_SUFFIX)
    dims = _sub(merge, "dimension")
    _sub(dims, "columns", w)
    _sub(dims, "rows", h)
    info = _sub(product, "productFileInformation")
    for number, (name, size) in enumerate(files):
        entry = _sub(info, "file", number=str(number))
        _sub(entry, "name", name)
        _sub(entry, "size", max(1, size // 1024), unit="kbytes")
        _sub(entry, "format", "xml" if name.endswith(".XML") else "binary")
    ortho = _sub(product, "ortho")
    zone = crs_epsg % 100
    _sub(ortho, "projection", f"UTM_Zone{zone}_{'North' if crs_epsg < 32700 else 'South'}")
    _sub(ortho, "resolution", int(pixel))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_demo(
    folder: str | os.PathLike,
    cube: np.ndarray,
    wavelengths: Any,
    *,
    index: int = 0,
    missing: np.ndarray | None = None,
) -> pathlib.Path:
    """Write a small EnMAP L2A product in DLR's on-disk layout; returns its ``…-SPECTRAL_IMAGE.TIF``.

    Args:
        folder: local folder (created).
        cube: (C, H, W) reflectance in [0, 1], stored as int16 DN = round(reflectance / 1e-4) (gain 1e-4,
            offset 0, as DLR's L2A); NaN entries become the no-data DN -32768.
        wavelengths: (C,) band centres in nm; FWHM is taken as the band spacing.
        index: makes the product unique (tile number, start time 4 s later per index).
        missing: (H, W) bool pixels flagged in ``QL_QUALITY_CLOUD`` (the other quality layers are zero).

    Written (each atomically; the spectral image last): ``SPECTRAL_IMAGE.TIF`` (int16, band-interleaved,
    nodata -32768, EPSG:32633, 30 m pixels), ``METADATA.XML``, ``QL_QUALITY_{CLOUD,CIRRUS,HAZE,SNOW,
    CLOUDSHADOW}.TIF`` (uint8, 1 = flagged) and ``QL_PIXELMASK.TIF`` (uint8, one band per spectral band).

    Raises:
        CubeError: shapes that do not fit (``cube`` not 3-D, ``wavelengths`` not C long, ``missing`` not (H, W)).
    """
    arr = np.asarray(cube, dtype=np.float64)
    if arr.ndim != 3:
        raise CubeError(f"{folder}: demo cube must be (C, H, W), got shape {arr.shape}")
    c, h, w = arr.shape
    wl = np.asarray(wavelengths, dtype=np.float64).reshape(-1)
    if wl.size != c:
        raise CubeError(f"{folder}: {wl.size} wavelengths for a {c}-band cube")
    flags = np.zeros((h, w), bool) if missing is None else np.asarray(missing, bool)
    if flags.shape != (h, w):
        raise CubeError(f"{folder}: missing has shape {flags.shape}, expected {(h, w)}")
    fwhm = spacing_fwhm(wl)

    prefix, start = _demo_prefix(index)
    epsg, pixel = 32633, 30.0
    transform = Affine(pixel, 0.0, 380_000.0 + 10 * pixel * index, 0.0, -pixel, 5_830_000.0)
    dn = np.full(arr.shape, NODATA, np.int16)
    finite = np.isfinite(arr)
    dn[finite] = np.clip(np.rint(arr[finite] / L2A_GAIN), NODATA + 1, np.iinfo(np.int16).max).astype(np.int16)

    layers = {
        f"-QL_QUALITY_{name}.TIF": (flags if name == "CLOUD" else np.zeros((h, w), bool))[None]
        for name in (*MISSING_LAYERS, *DEGRADED_LAYERS)
    }
    layers["-QL_PIXELMASK.TIF"] = np.zeros((c, h, w), bool)  # per band: defective detector pixels (none)
    names = [*layers, METADATA_SUFFIX, SPECTRAL_SUFFIX]  # the spectral image is moved into place last
    root = pathlib.Path(folder)
    finals = [resolve_location(str(root / (prefix + suffix))) for suffix in names]
    geo = {"driver": "GTiff", "width": w, "height": h, "crs": CRS.from_epsg(epsg), "transform": transform}
    with staged(finals) as temps:
        paths = dict(zip(names, temps))
        for suffix, values in layers.items():
            with rasterio.open(paths[suffix], "w", count=values.shape[0], dtype="uint8", **geo) as out:
                out.write(values.astype(np.uint8))
        with rasterio.open(
            paths[SPECTRAL_SUFFIX], "w", count=c, dtype="int16", nodata=NODATA, interleave="band", **geo
        ) as out:
            out.write(dn)
        files = [(prefix + s, os.path.getsize(paths[s])) for s in names if s != METADATA_SUFFIX]
        files.append((prefix + METADATA_SUFFIX, 0))
        with open(paths[METADATA_SUFFIX], "wb") as f:
            f.write(_demo_xml(prefix, start, wl, fwhm, (c, h, w), files, epsg, pixel))
    return root / (prefix + SPECTRAL_SUFFIX)
