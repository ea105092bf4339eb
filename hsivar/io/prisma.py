"""PRISMA hyperspectral products (``PRS_L1_*.he5``, ``PRS_L2B_*`` / ``PRS_L2C_*`` / ``PRS_L2D_*.he5``): the
reader (:mod:`hsivar.io.prisma_demo` writes small L2D products in this layout for tests and demos).

**Layout** (ASI's PRISMA Products Specification Document, issue 2.3, as the public readers prismaread,
EnMAP-Box, HyperCoast and satpy read it). One HDF-EOS5 file read with h5py:

* the coregistered hyperspectral cubes ``HDFEOS/SWATHS/PRS_<level>_HCO/Data Fields/VNIR_Cube`` and
  ``.../SWIR_Cube`` (``<level>`` = ``L1``, ``L2B``, ``L2C``, ``L2D``), uint16, band-interleaved-by-line:
  (rows, bands, cols), rows north to south on the L2D grid (as prismaread, EnMAP-Box and HyperCoast orient
  it);
* root attributes ``List_Cw_Vnir`` / ``List_Fwhm_Vnir`` / ``List_Cw_Vnir_Flags`` (66 slots) and the ``Swir``
  ones (173 slots): centre wavelength and FWHM in nm per band slot, each cube stored from the longest to the
  shortest wavelength; a slot with centre 0 (flag 0) is a band that is not delivered (VNIR's first three,
  SWIR's last two in real products) and is dropped;
* L2 values are reflectance: ``L2Scale<Vnir|Swir>Min + DN * (L2Scale<Vnir|Swir>Max - ...Min) / 65535``;
  DN 0 is the fill outside the imaged swath, kept as 0 and reported as ``meta.nodata = 0``. L1 values are
  top-of-atmosphere radiance: ``DN / ScaleFactor_<Vnir|Swir> - Offset_<Vnir|Swir>`` (no nodata);
* per-entry quality: ``<VNIR|SWIR>_PIXEL_L2_ERR_MATRIX`` (L2) / ``<VNIR|SWIR>_PIXEL_SAT_ERR_MATRIX`` (L1),
  uint8 shaped like the cube, nonzero = defective (1 invalid L1 pixel, 2 negative or 4 saturated after the
  atmospheric correction): those entries are :attr:`CubeMeta.missing`;
* L2D is on a map grid: ``Epsg_Code`` and ``Product_ULcorner_easting`` / ``_northing`` (``LR`` likewise) are
  the *centres* of the corner pixels of a 30 m grid, so the transform's origin is half a pixel up-left of
  the UL corner. L1 / L2B / L2C are in swath geometry with latitude / longitude fields only: no CRS and
  no transform then.

**One cube.** VNIR (~400-1010 nm) and SWIR (~920-2505 nm) overlap around 920-1010 nm. The delivered bands
of the selected cubes are merged and sorted by wavelength; :data:`OVERLAP_RULE` says which cube gives the
overlapping bands (default ``"swir"``: VNIR below the shortest SWIR wavelength, then all of SWIR, as
prismaread's default ``join_priority``). ``dataset=`` selects the cubes: ``"vnir"``, ``"swir"``, or
``"both"`` / ``None``. ``meta.band_names`` says where every band comes from, ``VNIR_<k>`` / ``SWIR_<k>``
with ``k`` its 1-based slot in the file (its position in ``List_Cw_Vnir`` / the cube's band axis).
``layout=`` is not consulted. Values come back as float32 physical values; the scale and offset applied
(``physical = DN * scale + offset``) are in ``extras["scale"]`` / ``extras["offset"]``, per cube.

Not supported: the panchromatic (``PRS_*_PCO``) and non-coregistered L1 (``PRS_L1_HRC``) cubes, L1 cloud /
sun-glint / land-cover masks, the L2 atmospheric fields, and georeferencing L1/L2B/L2C through their
latitude / longitude fields.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Literal

import h5py
import numpy as np

from hsivar.io import layout
from hsivar.io.location import Location
from hsivar.io.meta import CubeError, CubeMeta

__all__ = [
    "CUBES",
    "CUBE_SELECTIONS",
    "NAME_PATTERNS",
    "OVERLAP_RULE",
    "OVERLAP_RULES",
    "PIXEL_SIZE_M",
    "PRISMA_ERRORS",
    "OverlapRule",
    "L2_DN_MAX",
    "open_prisma",
]

NAME_PATTERNS: tuple[str, ...] = ("PRS_L1*.he5", "PRS_L2*.he5")
"""File names of PRISMA products, e.g. ``PRS_L2D_STD_20200524103704_20200524103708_0001.he5``."""

PRISMA_ERRORS: tuple[type[Exception], ...] = ()
"""Library errors meaning "not a valid PRISMA product" besides OSError, ValueError, KeyError, ... (h5py
reports truncated or corrupt files as OSError, missing objects as KeyError: nothing to add)."""

OverlapRule = Literal["swir", "vnir", "both"]
"""Which cube gives the bands where VNIR and SWIR overlap: ``"swir"`` keeps the VNIR bands below the
shortest SWIR wavelength and every SWIR band; ``"vnir"`` every VNIR band and the SWIR bands above the
longest VNIR wavelength; ``"both"`` keeps every band of both (interleaved by wavelength)."""

OVERLAP_RULES: tuple[str, ...] = ("swir", "vnir", "both")
"""The accepted values of :data:`OVERLAP_RULE`."""

OVERLAP_RULE: OverlapRule = "swir"
"""The rule the reader applies to the VNIR/SWIR overlap (module-wide; ``open_prisma(..., overlap=)``
overrides it for one call). Default ``"swir"``, as prismaread's ``join_priority``."""

CUBE_SELECTIONS: tuple[str, ...] = ("both", "vnir", "swir")
"""Accepted ``dataset=`` values (case-insensitive; ``None`` = ``"both"``): the cubes merged into the cube read."""

PIXEL_SIZE_M = 30.0
"""Ground sampling distance of the hyperspectral cubes, in metres (the L2D grid's pixel size)."""

CUBES: tuple[str, ...] = ("VNIR", "SWIR")
"""The hyperspectral cubes of a product, in the order they are merged (VNIR first on equal wavelengths)."""

_SWATH = re.compile(r"^PRS_(L1|L2[BCD])_HCO$")
_VERSION = re.compile(r"_(\d{4})\.he5$")
L2_DN_MAX = 65535.0  # L2 reflectance: Min + DN * (Max - Min) / 65535
_L2_FILL = 0.0  # L2 DN of the fill outside the imaged swath (EnMAP-Box's reading)
_SENSOR = "PRISMA HSI"
_UNITS = {"L1": "W m-2 sr-1 um-1", "L2": "1"}


# --- attributes -----------------------------------------------------------------------------------------


def _vector(src: str, attrs: Any, name: str) -> np.ndarray | None:
    """A root attribute as a flat float64 vector (numbers, or a text of numbers); ``None`` when absent."""
    if name not in attrs:
        return None
    value = attrs[name]
    if isinstance(value, (bytes, str)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        value = text.replace(",", " ").split()
    try:
        arr = np.asarray(value).reshape(-1)
        if arr.dtype == np.float32:  # the shortest decimals that give these float32 (972.65137, not 972.651367...);
            # format_float_positional ignores numpy's print options, which str() would follow
            return np.array([float(np.format_float_positional(v, unique=True)) for v in arr], dtype=np.float64)
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise CubeError(f"{src}: attribute {name} is not a list of numbers: {value!r}") from None


def _number(src: str, attrs: Any, name: str) -> float | None:
    """A numeric root attribute (scalar or one-element array, or its text); ``None`` when absent."""
    vec = _vector(src, attrs, name)
    if vec is None:
        return None
    if vec.size != 1:
        raise CubeError(f"{src}: attribute {name} holds {vec.size} values; expected one number")
    return float(vec[0])


# --- the cubes of a product -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Cube:
    """One hyperspectral cube of the product (VNIR or SWIR), as stored.

    Attributes:
        name: ``"VNIR"`` or ``"SWIR"``.
        data: the (rows, slots, cols) dataset.
        errors: the error matrix dataset of the same shape, or ``None`` when the product has none.
        wavelengths: centre wavelength (nm) of every slot (0 = not delivered).
        fwhm: FWHM (nm) of every slot, or ``None`` when the product lists none.
        delivered: (slots,) bool, the slots holding a delivered band.
        scale, offset: physical = DN * scale + offset.
    """

    name: str
    data: h5py.Dataset
    errors: h5py.Dataset | None
    wavelengths: np.ndarray
    fwhm: np.ndarray | None
    delivered: np.ndarray
    scale: float
    offset: float

    def physical(self, raw: np.ndarray, nodata: float | None) -> np.ndarray:
        """DNs -> float32 physical values; DNs equal to ``nodata`` keep that value."""
        values = raw.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        if nodata is not None:
            values[raw == nodata] = nodata
        return values


def _field(src: str, swath: h5py.Group, name: str) -> h5py.Dataset | None:
    """The dataset ``Data Fields/<name>`` of the swath, ``None`` when absent."""
    obj = swath.get(f"Data Fields/{name}")
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        raise CubeError(f"{src}: {obj.name} is not a dataset")
    return obj


def _per_slot(src: str, attrs: Any, attr: str, count: int, field: str) -> np.ndarray | None:
    """The attribute ``attr`` as one number per band slot of ``field``; ``None`` when absent."""
    values = _vector(src, attrs, attr)
    if values is not None and values.size != count:
        raise CubeError(f"{src}: attribute {attr} has {values.size} values for the {count} bands of {field}")
    return values


def _scaling(src: str, attrs: Any, level: str, tag: str) -> tuple[float, float]:
    """(scale, offset) turning DNs of the ``tag`` (``Vnir``/``Swir``) cube into physical values."""

    def need(name: str) -> float:
        value = _number(src, attrs, name)
        if value is None or not np.isfinite(value):
            raise CubeError(f"{src}: missing or invalid attribute {name} (needed to scale the {tag.upper()} cube)")
        return value

    if level == "L1":
        factor = need(f"ScaleFactor_{tag}")
        if factor == 0:
            raise CubeError(f"{src}: attribute ScaleFactor_{tag} is 0")
        offset = _number(src, attrs, f"Offset_{tag}") or 0.0
        return 1.0 / factor, -offset  # radiance = DN / ScaleFactor - Offset
    low, high = need(f"L2Scale{tag}Min"), need(f"L2Scale{tag}Max")
    return (high - low) / L2_DN_MAX, low


def _open_cube(src: str, h5: h5py.File, swath: h5py.Group, level: str, name: str) -> _Cube | None:
    """The ``name`` (VNIR/SWIR) cube of the swath; ``None`` when the product has neither the dataset nor a
    delivered band for it.

    Raises:
        CubeError: the dataset is missing while the attributes list delivered bands; not a 3-D numeric
            dataset; wavelength / FWHM / flag attributes or the error matrix not matching it.
    """
    tag = name.title()
    field = f"{name}_Cube"
    data = _field(src, swath, field)
    listed = _vector(src, h5.attrs, f"List_Cw_{tag}")
    if data is None:
        if listed is None or not (listed > 0).any():
            return None
        raise CubeError(f"{src}: missing dataset {swath.name}/Data Fields/{field} "
                        f"(List_Cw_{tag} lists {int((listed > 0).sum())} delivered bands)")
    if data.ndim != 3:
        raise CubeError(f"{src}: {data.name} has shape {data.shape}; expected 3-D (rows, bands, cols)")
    layout.check_numeric(np.dtype(data.dtype), src)
    slots = int(data.shape[1])
    if listed is None:
        raise CubeError(f"{src}: missing attribute List_Cw_{tag} (the wavelengths of {field})")
    wavelengths = _per_slot(src, h5.attrs, f"List_Cw_{tag}", slots, field)
    fwhm = _per_slot(src, h5.attrs, f"List_Fwhm_{tag}", slots, field)
    flags = _per_slot(src, h5.attrs, f"List_Cw_{tag}_Flags", slots, field)
    delivered = wavelengths > 0
    if flags is not None:
        delivered &= flags != 0
    errors = _field(src, swath, f"{name}_PIXEL_{'SAT' if level == 'L1' else 'L2'}_ERR_MATRIX")
    if errors is not None and errors.shape != data.shape:
        raise CubeError(f"{src}: {errors.name} has shape {errors.shape}; expected the shape {data.shape} of {field}")
    scale, offset = _scaling(src, h5.attrs, level, tag) if delivered.any() else (1.0, 0.0)
    return _Cube(name, data, errors, wavelengths, fwhm, delivered, scale, offset)


def _swath(src: str, h5: h5py.File) -> tuple[h5py.Group, str]:
    """The product's ``PRS_<level>_HCO`` swath group and its level (``L1``, ``L2B``, ``L2C``, ``L2D``)."""
    swaths = h5.get("HDFEOS/SWATHS")
    if not isinstance(swaths, h5py.Group):
        raise CubeError(f"{src}: not a PRISMA product: no HDFEOS/SWATHS group")
    for key in swaths:
        match = _SWATH.match(key)
        if match and isinstance(swaths[key], h5py.Group):
            return swaths[key], match[1]
    found = ", ".join(swaths) or "none"
    raise CubeError(f"{src}: no hyperspectral swath PRS_<L1|L2B|L2C|L2D>_HCO under HDFEOS/SWATHS (found: {found})")


def _selection(src: str, dataset: str | None) -> tuple[str, ...]:
    """The cubes ``dataset=`` selects."""
    choice = "both" if dataset is None else str(dataset).strip().lower()
    if choice not in CUBE_SELECTIONS:
        raise CubeError(f"{src}: dataset={dataset!r} is not a PRISMA cube selection; expected one of "
                        f"{', '.join(CUBE_SELECTIONS)}")
    return CUBES if choice == "both" else (choice.upper(),)


@dataclass(frozen=True, eq=False)
class _Band:
    """One band of the merged cube: its cube, its slot there and its wavelength."""

    cube: _Cube
    slot: int
    wavelength: float


def _merge(cubes: list[_Cube], rule: str) -> list[_Band]:
    """The delivered bands of ``cubes`` after the overlap ``rule``, sorted by wavelength (VNIR first on ties)."""
    kept = {c.name: [_Band(c, int(s), float(c.wavelengths[s])) for s in np.flatnonzero(c.delivered)] for c in cubes}
    vnir, swir = kept.get("VNIR", []), kept.get("SWIR", [])
    if vnir and swir and rule == "swir":
        shortest = min(b.wavelength for b in swir)
        kept["VNIR"] = [b for b in vnir if b.wavelength < shortest]
    elif vnir and swir and rule == "vnir":
        longest = max(b.wavelength for b in vnir)
        kept["SWIR"] = [b for b in swir if b.wavelength > longest]
    merged = [b for name in CUBES for b in kept.get(name, [])]
    return sorted(merged, key=lambda b: b.wavelength)  # stable: VNIR before SWIR on equal wavelengths


def _georeference(src: str, attrs: Any, shape: tuple[int, int],
                  warnings: list[str]) -> tuple[str | None, tuple[float, ...] | None]:
    """CRS and transform of an L2D product from ``Epsg_Code`` and the corner-pixel centres."""
    epsg = _number(src, attrs, "Epsg_Code")
    east, north = _number(src, attrs, "Product_ULcorner_easting"), _number(src, attrs, "Product_ULcorner_northing")
    lr_east = _number(src, attrs, "Product_LRcorner_easting")
    lr_north = _number(src, attrs, "Product_LRcorner_northing")
    if epsg is None or east is None or north is None:
        warnings.append("no georeferencing: Epsg_Code or Product_ULcorner_easting/northing missing")
        return None, None
    half = PIXEL_SIZE_M / 2
    rows, cols = shape
    if lr_east is not None and lr_north is not None:
        # the corners are pixel centres: LR = UL + (size - 1) pixels
        off_east = abs(lr_east - east - (cols - 1) * PIXEL_SIZE_M)
        off_north = abs(north - lr_north - (rows - 1) * PIXEL_SIZE_M)
        if off_east > half or off_north > half:
            warnings.append(f"the product's LR corner ({lr_east}, {lr_north}) does not match a {rows} x {cols} grid "
                            f"of {PIXEL_SIZE_M:g} m pixels from its UL corner ({east}, {north})")
    transform = (PIXEL_SIZE_M, 0.0, east - half, 0.0, -PIXEL_SIZE_M, north + half)
    return f"EPSG:{int(epsg)}", transform


def _product_facts(loc: Location, h5: h5py.File, level: str, rule: str, bands: list[_Band],
                   cubes: list[_Cube]) -> dict[str, Any]:
    """The JSON-able ``extras["product"]``: level, sensor, times, where the bands come from."""
    facts: dict[str, Any] = {
        "platform": "PRISMA",
        "sensor": _SENSOR,
        "level": level,
        "quantity": "top-of-atmosphere radiance" if level == "L1" else "surface reflectance",
        "units": _UNITS[level[:2]],
    }
    processing = layout.as_str(h5.attrs.get("Processing_Level"))
    if processing:
        facts["processing_level"] = processing.strip()
    start = layout.iso_utc(layout.as_str(h5.attrs.get("Product_StartTime")))
    stop = layout.iso_utc(layout.as_str(h5.attrs.get("Product_StopTime")))
    if start:
        facts["datetime"] = start
    if stop:
        facts["end_datetime"] = stop
    version = _VERSION.search(posixpath.basename(loc.path))
    if version:
        facts["version"] = version[1]  # the four-digit counter ending the product's file name
    facts["cubes"] = [c.name for c in cubes]
    facts["overlap_rule"] = rule
    facts["bands"] = {c.name: [b.slot + 1 for b in bands if b.cube is c] for c in cubes}
    return facts


def open_prisma(loc: Location, stack: contextlib.ExitStack, opts: layout.OpenOptions, *,
                overlap: OverlapRule | None = None) -> layout.Source:
    """Open a PRISMA L1 / L2B / L2C / L2D product as one (C, H, W) cube of physical float32 values.

    Args:
        loc: the ``.he5`` file (remote files are read lazily through fsspec).
        stack: closes the file.
        opts: ``opts.dataset`` selects the cubes: ``"vnir"``, ``"swir"``, ``"both"`` / ``None``;
            ``opts.layout`` is not consulted.
        overlap: the VNIR/SWIR overlap rule (:data:`OverlapRule`); default :data:`OVERLAP_RULE`.

    Returns:
        A source whose ``read(window, bands)`` reads only the window's rows / cols and the bands' slots of
        each cube, and ``read_missing`` the same block of the error matrices (``None`` when the product has
        none). ``meta``: wavelengths and FWHM (nm), band names ``VNIR_<k>`` / ``SWIR_<k>``, ``dtype``
        float32, ``nodata`` 0 for L2, CRS and transform for L2D, ``extras["product"]``, ``extras["scale"]``
        and ``extras["offset"]`` (per cube).

    Raises:
        CubeError: not a PRISMA product (no ``PRS_<level>_HCO`` swath), a missing cube dataset or scaling
            attribute, wavelength / FWHM / flag lists not matching the cube's band count, cubes or error
            matrices of different shapes, no delivered band in the selection, an unknown ``dataset`` or rule.
    """
    src = loc.text
    rule = OVERLAP_RULE if overlap is None else overlap
    if rule not in OVERLAP_RULES:
        raise CubeError(f"{src}: unknown PRISMA overlap rule {rule!r}; expected one of {', '.join(OVERLAP_RULES)}")
    selected = _selection(src, opts.dataset)
    handle = loc.path if loc.local else stack.enter_context(loc.open())
    h5 = stack.enter_context(h5py.File(handle, "r"))
    swath, level = _swath(src, h5)
    found = {name: _open_cube(src, h5, swath, level, name) for name in CUBES}
    if all(cube is None for cube in found.values()):
        raise CubeError(f"{src}: no VNIR_Cube or SWIR_Cube dataset in {swath.name}/Data Fields")
    planes = {(c.data.shape[0], c.data.shape[2]) for c in found.values() if c is not None}
    if len(planes) > 1:
        raise CubeError(f"{src}: the VNIR and SWIR cubes cover different rasters (rows, cols): {sorted(planes)}")
    rows, cols = planes.pop()
    cubes = [c for name in selected if (c := found[name]) is not None and c.delivered.any()]
    if not cubes:
        raise CubeError(f"{src}: no delivered band in the {' and '.join(selected)} cube(s)")
    bands = _merge(cubes, rule)
    nodata = None if level == "L1" else _L2_FILL

    def read(window: layout.Window, indices: list[int] | None) -> np.ndarray:
        chosen = bands if indices is None else [bands[i] for i in indices]
        out = np.empty((len(chosen), window[2], window[3]), np.float32)
        for cube in cubes:
            where = [i for i, b in enumerate(chosen) if b.cube is cube]
            if where:  # one h5py read per cube: the window's rows / cols of these slots only
                raw = layout.read_block(cube.data, "hcw", window, [chosen[i].slot for i in where])
                out[where] = cube.physical(raw, nodata)
        return out

    def read_missing(window: layout.Window, indices: list[int] | None) -> np.ndarray:
        chosen = bands if indices is None else [bands[i] for i in indices]
        out = np.zeros((len(chosen), window[2], window[3]), bool)
        for cube in cubes:
            where = [i for i, b in enumerate(chosen) if b.cube is cube]
            if where and cube.errors is not None:
                out[where] = layout.read_block(cube.errors, "hcw", window, [chosen[i].slot for i in where]) != 0
        return out

    warnings: list[str] = []
    crs, transform = _georeference(src, h5.attrs, (rows, cols), warnings) if level == "L2D" else (None, None)
    fwhm = [float(b.cube.fwhm[b.slot]) for b in bands] if all(c.fwhm is not None for c in cubes) else None
    extras: dict[str, Any] = {
        "product": _product_facts(loc, h5, level, rule, bands, cubes),
        "swath": swath.name,
        "scale": {c.name: c.scale for c in cubes},
        "offset": {c.name: c.offset for c in cubes},
    }
    if warnings:
        extras["warnings"] = warnings
    meta = CubeMeta(
        bands=len(bands),
        wavelengths=[b.wavelength for b in bands],
        band_names=[f"{b.cube.name}_{b.slot + 1}" for b in bands],
        fwhm=fwhm,
        crs=crs,
        transform=transform,
        nodata=nodata,
        dtype="float32",
        format="prisma",
        layout="chw",
        extras=extras,
    )
    has_errors = any(c.errors is not None for c in cubes)
    return layout.Source(shape=(len(bands), rows, cols), meta=meta, read=read,
                         read_missing=read_missing if has_errors else None)
