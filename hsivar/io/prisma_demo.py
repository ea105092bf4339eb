"""A writer of small PRISMA L2D products in the real on-disk layout (:mod:`hsivar.io.prisma` describes it), for
tests and demos (``hsivar data make-demo --format prisma``): the format table's ``write_demo`` of the prisma row."""

from __future__ import annotations

import os
import pathlib
from datetime import datetime, timedelta, timezone
from typing import Any

import h5py
import numpy as np

from hsivar.io.bands import spacing_fwhm
from hsivar.io.location import resolve_location, staged
from hsivar.io.prisma import L2_DN_MAX, PIXEL_SIZE_M

__all__ = ["write_demo"]

_DEMO_START = datetime(2020, 5, 24, 10, 37, 4, tzinfo=timezone.utc)
_DEMO_EPSG = 32632  # UTM zone 32N (northern Italy)
_DEMO_UL = (500_000.0, 5_000_000.0)  # outer corner of the UL pixel, metres
_DEMO_SPLIT_NM = 1000.0  # bands below go to the VNIR cube, the others to SWIR
_DEMO_OVERLAP = 2  # the longest VNIR bands also written to SWIR, as the real cubes overlap
_DEMO_PAD = {"VNIR": (3, 0), "SWIR": (0, 2)}  # undelivered slots (leading, trailing), as in real products
_DEMO_BAD = 1  # error-matrix code of a flagged entry ("invalid pixel from L1")


def _demo_cube(cube: np.ndarray, wavelengths: np.ndarray, fwhm: np.ndarray, members: list[int],
               pad: tuple[int, int], missing: np.ndarray | None) -> dict[str, Any]:
    """One cube as stored: (rows, slots, cols) uint16 DNs, longest wavelength first, padded with undelivered
    slots; its wavelength / FWHM / flag lists, L2 scale and error matrix."""
    members = sorted(members, key=lambda i: -wavelengths[i])  # stored from long to short wavelength
    _, h, w = cube.shape
    n = len(members)
    lead, trail = pad if n else (0, 0)
    slots = lead + n + trail
    values = cube[members].astype(np.float64)
    # a round scale holding the data with a margin below (so no value meets the fill DN 0), as the float32
    # attributes hold it (reading then decodes exactly what was encoded)
    low = float(np.float32(np.floor(100 * min(0.0, float(values.min()) if n else 0.0)) / 100 - 0.01))
    high = float(np.float32(np.ceil(100 * max(1.0, float(values.max()) if n else 1.0)) / 100))
    dn = np.zeros((h, slots, w), np.uint16)  # undelivered slots hold the fill
    scaled = np.clip(np.rint((values - low) / (high - low) * L2_DN_MAX), 1, L2_DN_MAX).astype(np.uint16)
    dn[:, lead:lead + n, :] = scaled.transpose(1, 0, 2)
    cw = np.zeros(slots, np.float32)
    cw[lead:lead + n] = wavelengths[members]
    width = np.zeros(slots, np.float32)
    width[lead:lead + n] = fwhm[members]
    errors = np.zeros((h, slots, w), np.uint8)
    if missing is not None:
        errors[np.broadcast_to(missing[:, None, :], errors.shape)] = _DEMO_BAD
    return {"dn": dn, "cw": cw, "fwhm": width, "flags": (cw > 0).astype(np.uint8), "min": low, "max": high,
            "errors": errors}


def write_demo(folder: str | os.PathLike, cube: np.ndarray, wavelengths: Any, *, index: int = 0,
               missing: np.ndarray | None = None) -> pathlib.Path:
    """Write ``cube`` as a small PRISMA L2D product (HDF-EOS5 ``.he5``) in the product's real layout.

    Bands below 1000 nm go to ``VNIR_Cube``, the others to ``SWIR_Cube`` (either may get none: it is then
    written with zero bands and empty lists); when both get bands and VNIR has two or more, its two longest
    bands are also written to SWIR, as the real cubes overlap. Each cube is stored (rows, bands, cols) uint16
    from the longest to the shortest wavelength, with undelivered zero slots (VNIR three leading, SWIR two
    trailing) and round ``L2Scale<Vnir|Swir>Min/Max`` spanning [min(0, data) - 0.01, max(1, data)], so that
    no value meets the fill DN 0. The grid is EPSG:32632 with 30 m pixels, UL pixel corner at (500000, 5000000).

    Args:
        folder: local folder (created).
        cube: (C, H, W) reflectance-like values, typically in [0, 1].
        wavelengths: (C,) band centres in nm; FWHM are derived from their spacing.
        index: makes the product unique: acquisition time = 2020-05-24T10:37:04Z + ``index`` days.
        missing: (H, W) bool, pixels flagged in every band of the error matrices (code 1).

    Returns:
        The path of the ``PRS_L2D_STD_<start>_<stop>_0001.he5`` file.

    Raises:
        ValueError: ``cube`` not 3-D and finite, ``wavelengths`` not one positive value per band, ``missing``
            not (H, W).
    """
    arr = np.asarray(cube, dtype=np.float32)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"cube must be a non-empty 3-D (C, H, W) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("cube holds non-finite values")
    wl = np.asarray(wavelengths, dtype=np.float64).reshape(-1)
    c, h, w = arr.shape
    if wl.size != c or not (wl > 0).all():
        raise ValueError(f"wavelengths must be {c} positive values (nm), got {wl.size}")
    mask = None if missing is None else np.asarray(missing, dtype=bool)
    if mask is not None and mask.shape != (h, w):
        raise ValueError(f"missing must have shape {(h, w)}, got {mask.shape}")

    vnir = [i for i in range(c) if wl[i] < _DEMO_SPLIT_NM]
    swir = [i for i in range(c) if wl[i] >= _DEMO_SPLIT_NM]
    if swir and len(vnir) >= _DEMO_OVERLAP:
        swir += sorted(vnir, key=lambda i: wl[i])[-_DEMO_OVERLAP:]
    fwhm = spacing_fwhm(wl)
    parts = {name: _demo_cube(arr, wl, fwhm, members, _DEMO_PAD[name], mask)
             for name, members in (("VNIR", vnir), ("SWIR", swir))}

    start = _DEMO_START + timedelta(days=int(index))
    stop = start + timedelta(seconds=4)
    stamp = "%Y%m%d%H%M%S"
    path = pathlib.Path(folder) / f"PRS_L2D_STD_{start.strftime(stamp)}_{stop.strftime(stamp)}_0001.he5"
    with staged([resolve_location(os.fspath(path))]) as (tmp,), h5py.File(tmp, "w") as h5:
        _write_attributes(h5, parts, start, stop, (h, w))
        swath = h5.create_group("HDFEOS/SWATHS/PRS_L2D_HCO")
        for name, part in parts.items():
            swath.create_dataset(f"Data Fields/{name}_Cube", data=part["dn"])
            swath.create_dataset(f"Data Fields/{name}_PIXEL_L2_ERR_MATRIX", data=part["errors"])
        lat, lon = _demo_latlon(h, w)
        swath.create_dataset("Geolocation Fields/Latitude", data=lat)
        swath.create_dataset("Geolocation Fields/Longitude", data=lon)
        h5.create_group("HDFEOS INFORMATION").attrs["HDFEOSVersion"] = np.bytes_("HDFEOS_5.1.15")
    return path


def _write_attributes(h5: h5py.File, parts: dict[str, dict[str, Any]], start: datetime, stop: datetime,
                      shape: tuple[int, int]) -> None:
    """The root attributes of an L2D product: level, times, band lists, L2 scales, projection and corners."""
    attrs = h5.attrs
    attrs["Processing_Level"] = np.bytes_("2D")
    attrs["Product_StartTime"] = np.bytes_(start.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    attrs["Product_StopTime"] = np.bytes_(stop.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    attrs["Sun_zenith_angle"] = np.float32(35.0)
    attrs["Sun_azimuth_angle"] = np.float32(150.0)
    for name, part in parts.items():
        tag = name.title()
        attrs[f"List_Cw_{tag}"] = part["cw"]
        attrs[f"List_Cw_{tag}_Flags"] = part["flags"]
        attrs[f"List_Fwhm_{tag}"] = part["fwhm"]
        attrs[f"L2Scale{tag}Min"] = np.float32(part["min"])
        attrs[f"L2Scale{tag}Max"] = np.float32(part["max"])
    rows, cols = shape
    half = PIXEL_SIZE_M / 2
    west, east = _DEMO_UL[0] + half, _DEMO_UL[0] + half + (cols - 1) * PIXEL_SIZE_M  # pixel centres
    north, south = _DEMO_UL[1] - half, _DEMO_UL[1] - half - (rows - 1) * PIXEL_SIZE_M
    attrs["Epsg_Code"] = np.int32(_DEMO_EPSG)
    attrs["Projection_Id"] = np.bytes_(str(_DEMO_EPSG % 100))
    attrs["Projection_Name"] = np.bytes_("UTM")
    for corner, (x, y) in {"UL": (west, north), "UR": (east, north), "LL": (west, south), "LR": (east, south)}.items():
        attrs[f"Product_{corner}corner_easting"] = np.float64(x)
        attrs[f"Product_{corner}corner_northing"] = np.float64(y)
    attrs["Product_center_easting"] = np.float64((west + east) / 2)
    attrs["Product_center_northing"] = np.float64((north + south) / 2)


def _demo_latlon(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) float32 latitude and longitude of the demo grid's pixel centres."""
    from rasterio.warp import transform as reproject_points  # only the demo writer needs PROJ

    half = PIXEL_SIZE_M / 2
    x = _DEMO_UL[0] + half + PIXEL_SIZE_M * np.arange(cols)
    y = _DEMO_UL[1] - half - PIXEL_SIZE_M * np.arange(rows)
    xx, yy = np.meshgrid(x, y)
    lon, lat = reproject_points(f"EPSG:{_DEMO_EPSG}", "EPSG:4326", xx.ravel().tolist(), yy.ravel().tolist())
    return (np.asarray(lat, np.float32).reshape(rows, cols), np.asarray(lon, np.float32).reshape(rows, cols))
