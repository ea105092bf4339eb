"""Synthetic-but-realistic hyperspectral demo cubes built from real data shipped in installed packages.

No public HSI data set can be downloaded at run time, so the demo and the tests build cubes from:

**Measured reflectance spectra** (:func:`reflectance_library`, 343 spectra, all redistributed by
``colour-science`` under BSD-3-Clause; the underlying measurements keep their publishers' terms):

* ``rawtoaces`` — 190 reflectance patches of the Academy's RAW to ACES v1 camera-characterisation
  training set (AMPAS, Dyer et al. 2017; ``colour.characterisation.read_training_data_rawtoaces_v1``),
  380–780 nm at 5 nm.
* ``cie2017`` — the 99 colour evaluation samples of CIE 224:2017 (colour fidelity index), selected
  by the CIE from ~105 000 measured real materials: nature, skin, textiles, paints, plastics,
  printed material (``colour.quality.cfi2017.load_TCS_CIE2017``), 380–780 nm at 5 nm.
* ``colorchecker`` — the 24 ColorChecker patches measured by N. Ohta
  (``colour.SDS_COLOURCHECKERS["ColorChecker N Ohta"]``), 380–780 nm at 5 nm.
* ``cie_tcs`` — the 15 CIE test colour samples (CIE 13.3-1995 + the 2024 Japanese skin sample #15;
  ``colour.quality.datasets.SDS_TCS["CIE 2024"]``), 360–830 nm.
* ``nist_cqs`` — the 15 Munsell samples of NIST's Colour Quality Scale 9.0
  (``colour.quality.datasets.SDS_VS["NIST CQS 9.0"]``), 360–830 nm.

All are resampled linearly to a 1 nm grid, 380–950 nm. Three sets end at 780 nm, two at 830 nm:
beyond its last measured wavelength a spectrum is **extended as a constant**,
which is acceptable for the near-infrared just above the red edge (vegetation's NIR plateau, most
paints and soils are flat to first order) and is flagged (``SynthCube.extrapolated_bands``); bands
needing more than :data:`MAX_WAVELENGTH_NM` (SWIR) are refused.

**Illumination**: CIE daylight, ``S0 + M1·S1 + M2·S2`` with the CIE D-series basis functions
(``colour.colorimetry.SDS_BASIS_FUNCTIONS_CIE_ILLUMINANT_D_SERIES``, 300–830 nm, constant
beyond) and M1, M2 from the correlated colour temperature by the CIE formulas. The CCT varies
smoothly over the scene (sunlit vs. skylight-lit parts), so the illumination *spectrum* changes per
pixel, not only its intensity.

**Spatial structure**: real photographs bundled with scikit-image — ``astronaut`` (NASA, public
domain), ``chelsea`` (CC0, Stefan van der Walt), ``coffee`` (CC0, Rachel Michetti), ``rocket``
(SpaceX, public domain) — and the CC0 greyscale textures ``grass``, ``gravel``, ``brick``
(CC0Textures). All load offline from the package.

**Model** (per cube, every choice drawn from the seed): a random crop of a photograph is resized to
the cube size and flipped/rotated; a palette of ``n_endmembers`` library spectra is drawn, half
matched (CIELAB under D65) to colours sampled from the photograph and half at random. Every pixel's
abundances are a softmax over the palette of ``−ΔE²/(2τ²)`` (colour match) plus smooth random fields
per endmember and a texture term (so mixing varies within regions independently of the RGB colour —
metamers separate), shading rescales the pixel so its luminance under D65 matches the photograph,
and the pixel is lit by its own daylight spectrum. Radiance is integrated over each band's spectral
response — Gaussian with the given FWHM (10 nm for the default 31 bands at 400, 410, …, 700 nm), or
box-shaped for the sensor presets (:data:`SENSORS`), truncated to 380–950 nm — then the cube is
min-max normalised to [0, 1] (the min/max are kept in :class:`SynthCube`).

**Effective rank** (:func:`effective_rank`): the number of singular values of the uncentred
(C, H·W) matrix needed to hold a given fraction (default 99.9 %) of the energy Σσᵢ². Also
:func:`entropy_effective_rank` (Roy & Vetterli 2007): ``exp(−Σ pᵢ log pᵢ)``, ``pᵢ = σᵢ / Σσⱼ``.
Measured on 31-band cubes (seeds 0–39, 32×32): 5–7 components (mean 5.75) hold 99.9 % of the
energy, 2–4 hold 99 %, 7–10 hold 99.99 %; entropy effective rank 3.1–4.4; at 256×256, 5–6 hold
99.9 %. The 343 library spectra themselves need 8 components for 99.9 % (at 31 bands). A single
spectrum times an image would give 1; the 6-band Landsat-8-like cubes give 4–5 of 6.
"""

from __future__ import annotations

import functools
import json
import math
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

__all__ = [
    "Sensor",
    "SENSORS",
    "SpectralLibrary",
    "SynthCube",
    "MAX_WAVELENGTH_NM",
    "reflectance_library",
    "band_wavelengths",
    "synthesize",
    "make_cube",
    "effective_rank",
    "entropy_effective_rank",
    "make_demo_dataset",
]

_GRID = np.arange(380.0, 1001.0, 1.0)  # nm, integration grid
MEASURED_MAX_NM = 780.0
"""All library spectra are measured up to at least this wavelength (nm)."""
MAX_WAVELENGTH_NM = 950.0
"""Longest wavelength (nm) a band response may reach: NIR by constant extension; SWIR is refused."""

IMAGES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket")
"""scikit-image photographs used for the spatial layout (all public domain / CC0, bundled)."""
TEXTURES: tuple[str, ...] = ("grass", "gravel", "brick")
"""scikit-image CC0 textures used to modulate mixing."""

@dataclass(frozen=True)
class Sensor:
    """A multispectral sensor: band names, centre wavelengths and FWHM in nm, response shape.

    ``response`` is ``"box"`` (flat over centre ± FWHM/2, close to the near-rectangular responses of
    OLI and MSI) or ``"gaussian"``.
    """

    name: str
    band_names: tuple[str, ...]
    centres_nm: tuple[float, ...]
    fwhm_nm: tuple[float, ...]
    note: str = ""
    response: str = "box"


SENSORS: dict[str, Sensor] = {
    # Centre wavelengths / FWHM from the OLI pre-launch spectral characterisation (Barsi et al. 2014,
    # Remote Sens. 6:10232). SWIR B6/B7 (1.6/2.2 µm) are beyond every available spectrum, so the 6
    # bands are the reachable OLI bands: coastal, blue, green, pan, red, NIR, in wavelength order.
    "landsat8": Sensor(
        "landsat8",
        ("B1_coastal", "B2_blue", "B3_green", "B8_pan", "B4_red", "B5_nir"),
        (442.96, 482.04, 561.41, 589.50, 654.59, 864.67),
        (15.98, 60.04, 57.33, 172.40, 37.47, 28.25),
        "Landsat-8 OLI-like; B5 (NIR) uses spectra extended as constants beyond their last measured "
        "wavelength (780 nm); SWIR bands B6/B7 are not modelled.",
    ),
    # Sentinel-2A MSI bands B1-B6 (ESA spectral response v3 centres / bandwidths): all measured.
    "sentinel2": Sensor(
        "sentinel2",
        ("B1_coastal", "B2_blue", "B3_green", "B4_red", "B5_rededge1", "B6_rededge2"),
        (442.7, 492.4, 559.8, 664.6, 704.1, 740.5),
        (21.0, 66.0, 36.0, 31.0, 15.0, 15.0),
        "Sentinel-2A MSI-like bands B1-B6, all within the measured 380-780 nm range.",
    ),
    # A colour camera's channels: broad responses near the peaks of typical RGB sensors, stored red first as
    # images are, for three-band models (the RGB all-in-one use of RestoreVAR and VarFormer).
    "rgb": Sensor(
        "rgb",
        ("red", "green", "blue"),
        (600.0, 540.0, 460.0),
        (80.0, 80.0, 60.0),
        "An RGB camera-like sensor: Gaussian responses, red, green, blue in image order.",
        response="gaussian",
    ),
}
"""Sensor presets for :func:`synthesize` (``sensor=...``)."""


# --------------------------------------------------------------------------------------------- library


@dataclass(frozen=True)
class SpectralLibrary:
    """Measured reflectances on a 1 nm grid.

    Attributes:
        wavelengths: (L,) nm, 380–1000 nm at 1 nm.
        reflectance: (N, L) float64 reflectance factors (≥ 0; a few fluorescent patches exceed 1),
            constant past ``measured_max_nm[i]``.
        names: (N,) sample names, ``"<set>:<label>"``.
        sources: (N,) set names (``rawtoaces``, ``cie2017``, ``colorchecker``, ``cie_tcs``, ``nist_cqs``).
        measured_max_nm: (N,) last measured wavelength of each spectrum.
    """

    wavelengths: np.ndarray
    reflectance: np.ndarray
    names: tuple[str, ...]
    sources: tuple[str, ...]
    measured_max_nm: np.ndarray


def _resample(wl: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(N, l) samples at wl → (N, L) on _GRID, linear inside, constant outside."""
    return np.stack([np.interp(_GRID, wl, v) for v in np.atleast_2d(values)])


@functools.cache
def reflectance_library() -> SpectralLibrary:
    """The 343 measured reflectance spectra listed in the module docstring (cached; ~1 s first call)."""
    import colour
    from colour.characterisation import read_training_data_rawtoaces_v1
    from colour.quality.cfi2017 import load_TCS_CIE2017
    from colour.quality.datasets import SDS_TCS, SDS_VS

    rows, names, sources, maxes = [], [], [], []

    def add_msds(tag: str, msds: Any) -> None:
        wl = np.asarray(msds.wavelengths, float)
        vals = np.asarray(msds.values, float).T  # (N, l)
        rows.append(_resample(wl, vals))
        names.extend(f"{tag}:{lab}" for lab in msds.labels)
        sources.extend([tag] * vals.shape[0])
        maxes.extend([wl.max()] * vals.shape[0])

    def add_sds(tag: str, sds: Any) -> None:
        for lab, sd in sds.items():
            wl = np.asarray(sd.wavelengths, float)
            rows.append(_resample(wl, np.asarray(sd.values, float)))
            names.append(f"{tag}:{lab}")
            sources.append(tag)
            maxes.append(wl.max())

    add_msds("rawtoaces", read_training_data_rawtoaces_v1())
    add_msds("cie2017", load_TCS_CIE2017(colour.SpectralShape(380, 780, 5)))
    add_sds("colorchecker", colour.SDS_COLOURCHECKERS["ColorChecker N Ohta"])
    add_sds("cie_tcs", SDS_TCS["CIE 2024"])
    add_sds("nist_cqs", SDS_VS["NIST CQS 9.0"])
    refl = np.clip(np.concatenate(rows), 0.0, None)
    return SpectralLibrary(_GRID.copy(), refl, tuple(names), tuple(sources), np.asarray(maxes))


@functools.cache
def _daylight_basis() -> np.ndarray:
    """(3, L) CIE D-series S0, S1, S2 on _GRID (constant beyond 830 nm), S0(560 nm) = 100."""
    from colour.colorimetry import SDS_BASIS_FUNCTIONS_CIE_ILLUMINANT_D_SERIES as basis

    return np.stack([np.interp(_GRID, basis[k].wavelengths, basis[k].values) for k in ("S0", "S1", "S2")])


@functools.cache
def _xyz_weights() -> np.ndarray:
    """(L, 3) weights so reflectance @ W = CIE 1931 XYZ under D65 with Y(perfect white) = 1."""
    import colour

    cmf = colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"]
    d65 = colour.SDS_ILLUMINANTS["D65"]
    cmf_g = np.stack([np.interp(_GRID, cmf.wavelengths, cmf.values[:, i], 0, 0) for i in range(3)], 1)
    d65_g = np.interp(_GRID, d65.wavelengths, d65.values)
    w = cmf_g * d65_g[:, None]
    return w / w[:, 1].sum()


def _daylight_m1m2(cct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIE D-series coefficients M1, M2 for CCT (K, 4000–25000), any shape."""
    t = np.asarray(cct, float)
    x = np.where(
        t <= 7000,
        -4.6070e9 / t**3 + 2.9678e6 / t**2 + 0.09911e3 / t + 0.244063,
        -2.0064e9 / t**3 + 1.9018e6 / t**2 + 0.24748e3 / t + 0.237040,
    )
    y = -3.0 * x**2 + 2.870 * x - 0.275
    m = 0.0241 + 0.2562 * x - 0.7341 * y
    return (-1.3515 - 1.7703 * x + 5.9114 * y) / m, (0.0300 - 31.4424 * x + 30.0717 * y) / m


# --------------------------------------------------------------------------------------------- bands


def band_wavelengths(bands: int = 31, lo_nm: float = 400.0, hi_nm: float = 700.0) -> np.ndarray:
    """(bands,) band centres in nm, evenly spaced from ``lo_nm`` to ``hi_nm`` (31 → 400, 410, …, 700)."""
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    return np.linspace(lo_nm, hi_nm, bands) if bands > 1 else np.array([(lo_nm + hi_nm) / 2])


def _responses(centres: np.ndarray, fwhm: np.ndarray, shape: str = "gaussian") -> np.ndarray:
    """(C, L) spectral responses on the grid (380–950 nm), each row summing to 1.

    ``"gaussian"``: truncated at ±3σ and at the grid ends; ``"box"``: 1 on centre ± FWHM/2.
    """
    d = _GRID[None, :] - centres[:, None]
    if shape == "box":
        r = (np.abs(d) <= fwhm[:, None] / 2).astype(float)
    elif shape == "gaussian":
        sig = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        r = np.exp(-0.5 * (d / sig[:, None]) ** 2) * (np.abs(d) <= 3 * sig[:, None])
    else:
        raise ValueError(f"response must be 'gaussian' or 'box', got {shape!r}")
    r *= _GRID[None, :] <= MAX_WAVELENGTH_NM
    if np.any(r.sum(axis=1) == 0):
        raise ValueError(f"a band response is empty on the 1 nm grid: centres {centres}, FWHM {fwhm}")
    return r / r.sum(axis=1, keepdims=True)


def _resolve_bands(
    bands: int | None,
    wavelengths: Sequence[float] | np.ndarray | None,
    fwhm: float | Sequence[float] | None,
    sensor: str | Sensor | None,
    response: str | None,
) -> tuple[np.ndarray, np.ndarray, str, tuple[str, ...] | None, str | None]:
    if sum(v is not None for v in (bands, wavelengths, sensor)) > 1:
        raise ValueError("give at most one of bands, wavelengths, sensor")
    names = None
    sensor_name = None
    if sensor is not None:
        s = sensor if isinstance(sensor, Sensor) else SENSORS.get(str(sensor).lower())
        if s is None:
            raise ValueError(f"unknown sensor {sensor!r}; known: {', '.join(SENSORS)}")
        centres, widths, names, sensor_name = np.array(s.centres_nm), np.array(s.fwhm_nm), s.band_names, s.name
        shape = response or s.response
    else:
        centres = band_wavelengths(31 if bands is None else int(bands)) if wavelengths is None else None
        if centres is None:
            centres = np.asarray(wavelengths, float).ravel()
            if centres.size < 1:
                raise ValueError("wavelengths is empty")
        if fwhm is not None:
            widths = np.broadcast_to(np.asarray(fwhm, float), centres.shape).copy()
        elif centres.size > 1:
            widths = np.full(centres.shape, float(np.median(np.abs(np.diff(np.sort(centres))))))
        else:
            widths = np.array([300.0])  # a single band: panchromatic 400–700 nm
        shape = response or ("box" if wavelengths is None and centres.size == 1 else "gaussian")
    if np.any(widths <= 0):
        raise ValueError(f"FWHM must be positive, got {widths.tolist()}")
    for c, w in zip(centres, widths):
        if not _GRID[0] <= c <= MAX_WAVELENGTH_NM:
            raise ValueError(
                f"band at {c:g} nm (FWHM {w:g} nm) is outside the modelled range "
                f"{_GRID[0]:g}-{MAX_WAVELENGTH_NM:g} nm (measured spectra end at {MEASURED_MAX_NM:g} nm)"
            )
    return centres, widths, shape, names, sensor_name


# --------------------------------------------------------------------------------------------- cubes


@dataclass
class SynthCube:
    """A synthesised cube and how it was made.

    Attributes:
        cube: (C, H, W) float32 in [0, 1] (min-max normalised).
        wavelengths: (C,) band centres, nm.
        fwhm: (C,) band full widths at half maximum, nm.
        response: band response shape, ``"gaussian"`` or ``"box"``.
        value_min, value_max: radiance range before normalisation (arbitrary units: reflectance ×
            relative daylight with S0(560 nm) = 1); ``cube·(max−min)+min`` gives radiance back.
        seed: the seed given.
        image: the scikit-image photograph used; texture: the texture used.
        endmembers: names of the palette spectra.
        cct_range: (min, max) correlated colour temperature of the illumination, K.
        band_names: sensor band names, if a sensor was used.
        sensor: sensor preset name, if any.
        extrapolated_bands: indices of bands whose response reaches past 780 nm (constant extension).
    """

    cube: np.ndarray
    wavelengths: np.ndarray
    fwhm: np.ndarray
    response: str
    value_min: float
    value_max: float
    seed: Any
    image: str
    texture: str
    endmembers: tuple[str, ...]
    cct_range: tuple[float, float]
    band_names: tuple[str, ...] | None = None
    sensor: str | None = None
    extrapolated_bands: tuple[int, ...] = field(default_factory=tuple)

    def info(self) -> dict[str, Any]:
        """JSON-friendly description (no pixel data)."""
        return {
            "shape": list(self.cube.shape),
            "wavelengths": [round(float(w), 3) for w in self.wavelengths],
            "fwhm": [round(float(w), 3) for w in self.fwhm],
            "response": self.response,
            "value_range": [self.value_min, self.value_max],
            "seed": self.seed if isinstance(self.seed, int) else list(np.ravel(self.seed).tolist()),
            "image": self.image,
            "texture": self.texture,
            "endmembers": list(self.endmembers),
            "cct_range": list(self.cct_range),
            "band_names": list(self.band_names) if self.band_names else None,
            "sensor": self.sensor,
            "extrapolated_bands": list(self.extrapolated_bands),
        }


def _smooth_fields(rng: np.random.Generator, n: int, h: int, w: int, sigma: float) -> np.ndarray:
    """(n, h, w) smooth random fields (correlation length ~``sigma`` px), standardised to mean 0, std 1."""
    # Filter white noise on a grid 4x coarser than sigma, then interpolate: same look, ~16x cheaper.
    step = max(1, int(sigma // 4))
    gh, gw = -(-h // step) + 1, -(-w // step) + 1
    f = gaussian_filter(rng.standard_normal((n, gh, gw)), sigma=(0, sigma / step, sigma / step), mode="wrap")
    if step > 1:
        f = zoom(f, (1, step, step), order=1)
    f = f[:, :h, :w]
    f -= f.mean(axis=(1, 2), keepdims=True)
    return f / np.maximum(f.std(axis=(1, 2), keepdims=True), 1e-12)


def _crop_resize(img: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop (35–100 % of the short side, aspect h:w) resized to (h, w), random dihedral turn."""
    from skimage.transform import resize

    ih, iw = img.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    ch = max(2, int(min(ih, iw * h / w) * scale))
    cw = max(2, int(ch * w / h))
    top, left = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
    out = resize(img[top : top + ch, left : left + cw], (h, w), anti_aliasing=True, preserve_range=True)
    if h == w:
        out = np.rot90(out, int(rng.integers(4)), axes=(0, 1))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def synthesize(
    seed: int | Sequence[int] = 0,
    size: int | tuple[int, int] = 64,
    bands: int | None = None,
    *,
    wavelengths: Sequence[float] | np.ndarray | None = None,
    fwhm: float | Sequence[float] | None = None,
    sensor: str | Sensor | None = None,
    response: str | None = None,
    n_endmembers: int = 32,
    image: str | None = None,
) -> SynthCube:
    """Synthesise one cube (see the module docstring for the model).

    Args:
        seed: int or sequence of ints for ``numpy.random.default_rng``; same seed → identical cube.
        size: H = W, or (H, W), in pixels (≥ 8 recommended).
        bands: number of bands evenly spaced over 400–700 nm (default 31: 400, 410, …, 700 nm).
        wavelengths: explicit band centres in nm (instead of ``bands``), 380–950 nm.
        fwhm: band FWHM in nm, scalar or per band (default: the band spacing; 300 nm for one band).
        sensor: a :data:`SENSORS` preset name (``"landsat8"``, ``"sentinel2"``) or a :class:`Sensor`.
        response: band response shape, ``"gaussian"`` or ``"box"`` (default: the sensor's; Gaussian
            for ``bands`` / ``wavelengths``, box 400–700 nm for a single default band).
        n_endmembers: palette size (library spectra mixed in this cube).
        image: force one of :data:`IMAGES` (default: drawn from the seed).

    Returns:
        :class:`SynthCube` with the (C, H, W) float32 cube in [0, 1].
    """
    import skimage.color
    import skimage.data

    centres, widths, shape, band_names, sensor_name = _resolve_bands(bands, wavelengths, fwhm, sensor, response)
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h < 2 or w < 2:
        raise ValueError(f"size must be at least 2x2 pixels, got {(h, w)}")
    rng = np.random.default_rng(seed)
    lib = reflectance_library()
    xyz_w = _xyz_weights()

    # Spatial layout from a real photograph.
    image = image or IMAGES[int(rng.integers(len(IMAGES)))]
    if image not in IMAGES:
        raise ValueError(f"unknown image {image!r}; expected one of {', '.join(IMAGES)}")
    rgb = _crop_resize(getattr(skimage.data, image)().astype(np.float64) / 255.0, h, w, rng)
    rgb = np.clip(rgb, 0.0, 1.0)
    lab = skimage.color.rgb2lab(rgb).reshape(-1, 3)
    lum = skimage.color.rgb2xyz(rgb)[..., 1].reshape(-1)  # linear luminance, white = 1

    # Palette: half matched to colours of the photograph, half drawn at random.
    lib_xyz = lib.reflectance @ xyz_w
    lib_lab = skimage.color.xyz2lab(lib_xyz[None])[0]
    k = int(min(max(n_endmembers, 2), len(lib.names)))
    probes = lab[rng.choice(lab.shape[0], size=k // 2, replace=k // 2 > lab.shape[0])]
    d_probe = ((probes[:, None, :] - lib_lab[None]) ** 2).sum(-1)
    matched = []
    for row in d_probe:  # k/2 probes: nearest library spectrum not already taken
        for j in np.argsort(row):
            if j not in matched:
                matched.append(int(j))
                break
    rest = rng.permutation(np.setdiff1d(np.arange(len(lib.names)), matched))[: k - len(matched)]
    pal = np.concatenate([np.asarray(matched, int), rest])
    refl = lib.reflectance[pal]  # (K, L)

    # Abundances: colour match + smooth per-endmember fields + texture, softmax over the palette.
    tau = 20.0
    d2 = ((lab[:, None, :] - lib_lab[pal][None]) ** 2).sum(-1)  # (HW, K)
    fields = _smooth_fields(rng, k, h, w, sigma=max(h, w) / 10).reshape(k, -1).T
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    tex = _crop_resize(getattr(skimage.data, texture)().astype(np.float64) / 255.0, h, w, rng).reshape(-1)
    tex = (tex - tex.mean()) / max(tex.std(), 1e-12)
    tex_gain = rng.normal(0.0, 1.0, size=k) * (rng.random(k) < 0.5)
    logits = -d2 / (2 * tau**2) + 3.0 * fields + 1.5 * tex[:, None] * tex_gain[None]
    logits -= logits.max(axis=1, keepdims=True)
    ab = np.exp(logits)
    ab /= ab.sum(axis=1, keepdims=True)

    # Shading: match the photograph's luminance under D65.
    y_mix = ab @ lib_xyz[pal, 1]
    shade = np.clip(lum / np.maximum(y_mix, 1e-3), 0.0, 5.0)

    # Daylight with a smoothly varying correlated colour temperature.
    base = rng.uniform(5000.0, 7500.0)
    cct_field = _smooth_fields(rng, 1, h, w, sigma=max(h, w) / 4)[0].reshape(-1)
    cct = np.clip(base * np.exp(0.25 * cct_field), 4000.0, 20000.0)
    m1, m2 = _daylight_m1m2(cct)
    coef = np.stack([np.ones_like(m1), m1, m2], axis=1) / 100.0  # S0(560) = 100 → 1

    # Integrate over the band responses: T[c, k, j] = Σ_λ r_c(λ) R_k(λ) S_j(λ).
    resp = _responses(centres, widths, shape)
    tens = np.einsum("cl,kl,jl->kcj", resp, refl, _daylight_basis())  # (K, C, 3)
    n_bands = centres.size
    rad = (ab @ tens.reshape(k, -1)).reshape(-1, n_bands, 3)
    cube = np.einsum("pcj,pj->cp", rad, coef) * shade[None]
    vmin, vmax = float(cube.min()), float(cube.max())
    cube = ((cube - vmin) / max(vmax - vmin, 1e-12)).reshape(n_bands, h, w).astype(np.float32)
    extrapolated = tuple(int(i) for i in np.flatnonzero((resp[:, _GRID > MEASURED_MAX_NM] > 0).any(axis=1)))
    return SynthCube(
        cube=cube,
        wavelengths=centres.astype(np.float64),
        fwhm=widths.astype(np.float64),
        response=shape,
        value_min=vmin,
        value_max=vmax,
        seed=seed if isinstance(seed, int) else tuple(int(s) for s in seed),
        image=image,
        texture=texture,
        endmembers=tuple(lib.names[i] for i in pal),
        cct_range=(float(cct.min()), float(cct.max())),
        band_names=band_names,
        sensor=sensor_name,
        extrapolated_bands=extrapolated,
    )


def make_cube(seed: int | Sequence[int] = 0, size: int | tuple[int, int] = 64, bands: int | None = None,
              **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """One demo cube: ``(cube (C, H, W) float32 in [0, 1], wavelengths (C,) nm)``.

    Arguments as :func:`synthesize` (``options``: its keyword arguments, e.g. ``wavelengths``, ``fwhm``,
    ``sensor``; default 31 bands, 400–700 nm, 64×64); use :func:`synthesize` to also get the
    normalisation range and provenance.
    """
    s = synthesize(seed, size, bands, **options)
    return s.cube, s.wavelengths


# --------------------------------------------------------------------------------------------- rank


def _singular_values(cube: np.ndarray) -> np.ndarray:
    x = np.asarray(cube, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected a cube (C, H, W), got shape {x.shape}")
    m = x.reshape(x.shape[0], -1)
    # σᵢ² are the eigenvalues of the small C×C Gram matrix (cheaper than an SVD of C×HW).
    s2 = np.clip(np.linalg.eigvalsh(m @ m.T)[::-1], 0.0, None)
    return np.sqrt(s2)


def effective_rank(cube: np.ndarray, energy: float = 0.999) -> int:
    """Smallest k such that the top-k singular values of the uncentred (C, H·W) matrix hold at least
    ``energy`` of Σσᵢ² (1 ≤ k ≤ C; 0 for an all-zero cube)."""
    s2 = _singular_values(cube) ** 2
    total = s2.sum()
    if total == 0:
        return 0
    return int(min(np.searchsorted(np.cumsum(s2) / total, energy - 1e-12) + 1, s2.size))


def entropy_effective_rank(cube: np.ndarray) -> float:
    """Roy & Vetterli's effective rank ``exp(H(p))``, ``pᵢ = σᵢ / Σσⱼ`` of the (C, H·W) matrix (1 … C)."""
    s = _singular_values(cube)
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


# --------------------------------------------------------------------------------------------- dataset


def _join(base: str, *parts: str) -> str:
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def _write_product(write_demo: Any, folder_uri: str, cube: np.ndarray, wavelengths: Any, index: int) -> str:
    """Write one sensor product with its format's ``write_demo`` into ``folder_uri`` (local, or any fsspec URI
    through a local temporary folder whose files are then put one by one); → the name of the file naming it."""
    import tempfile

    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, root = fsspec.core.url_to_fs(folder_uri)
    local = isinstance(fs, LocalFileSystem)
    with tempfile.TemporaryDirectory(prefix="hsivar-demo-") as tmp:
        folder = Path(root) if local else Path(tmp)
        named = write_demo(folder, np.clip(cube, 0.0, 1.0).astype(np.float32), np.asarray(wavelengths, float),
                           index=index)
        if not local:
            for path in sorted(folder.iterdir()):
                fs.put_file(str(path), f"{root.rstrip('/')}/{path.name}")
    return Path(named).name


def make_demo_dataset(
    out_uri: str,
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 2,
    size: int = 64,
    bands: int | None = None,
    sensor: str | None = None,
    format: str = "npy",  # noqa: A002  (the CLI's option name)
    seed: int = 0,
) -> list[str]:
    """Write a demo dataset ``out_uri/{train,val,test}/cube_XXXX.<ext>`` plus ``out_uri/manifest.json``.

    Args:
        out_uri: local folder, ``file://`` or fsspec URI (written through :func:`hsivar.io.write_cube`).
        n_train, n_val, n_test: cubes per split (≥ 0).
        size: H = W in pixels.
        bands: bands over 400–700 nm (default 31); or ``sensor``: a :data:`SENSORS` preset.
        format: a cube format name or alias of :func:`hsivar.io.format_aliases` (npy, npz, h5, mat, tif / cog,
            envi, ...); files get the format's ``write_suffix``. A sensor product (enmap, prisma, emit) is written
            in its real on-disk layout, each cube as ``<split>/cube_XXXX/<product file names>`` (its row's
            ``write_demo``; the manifest's ``file`` names the file that names the product), the cube (in [0, 1]
            already) clipped to [0, 1] as reflectance.
        seed: dataset seed; cube i of split s (train 0, val 1, test 2) uses seed ``(seed, s, i)``, so
            splits never share a cube and adding cubes does not change existing ones.

    Returns:
        The URIs written (cubes, then the manifest), in order.

    The manifest lists each cube's file, split, seed, source photograph, palette, CCT range and
    value range before normalisation, plus the wavelengths.
    """
    from hsivar.io import FORMAT_TABLE, CubeMeta, format_named, write_cube  # rasterio, h5py: import on use

    fmt = format.lower()
    row = FORMAT_TABLE[format_named(fmt)]  # CubeError (a ValueError) for an unknown name
    ext = row.write_suffix
    if bands is not None and sensor is not None:
        raise ValueError("give either bands or sensor, not both")
    written: list[str] = []
    entries: list[dict[str, Any]] = []
    for s_idx, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        if n < 0:
            raise ValueError(f"n_{split} must be >= 0, got {n}")
        for i in range(n):
            syn = synthesize((seed, s_idx, i), size, bands, sensor=sensor)
            if row.write is None:  # a sensor product, in its own folder
                name = _write_product(row.write_demo, _join(out_uri, split, f"cube_{i:04d}"), syn.cube,
                                      syn.wavelengths, index=100 * s_idx + i)
                uri, rel = _join(out_uri, split, f"cube_{i:04d}", name), f"{split}/cube_{i:04d}/{name}"
            else:
                uri, rel = _join(out_uri, split, f"cube_{i:04d}{ext}"), f"{split}/cube_{i:04d}{ext}"
                meta = CubeMeta(
                    bands=syn.cube.shape[0],
                    wavelengths=[float(v) for v in syn.wavelengths],
                    band_names=list(syn.band_names) if syn.band_names else None,
                )
                if row.dtypes is not None and "float32" not in row.dtypes:  # an image: its widest integer range
                    dtype = "uint16" if "uint16" in row.dtypes else "uint8"
                    write_cube(uri, np.clip(syn.cube, 0.0, 1.0) * np.iinfo(dtype).max, meta, dtype=dtype)
                else:
                    write_cube(uri, syn.cube, meta)
            written.append(uri)
            entries.append({"split": split, "file": rel, **syn.info()})
    manifest = {
        "generator": "hsivar.synth",
        "format": fmt,
        "size": size,
        "bands": entries[0]["shape"][0] if entries else None,
        "sensor": sensor,
        "seed": seed,
        "counts": {"train": n_train, "val": n_val, "test": n_test},
        "cubes": entries,
    }
    import fsspec

    man_uri = _join(out_uri, "manifest.json")
    with fsspec.open(man_uri, "w", auto_mkdir=True) as fh:
        json.dump(manifest, fh, indent=1)
    written.append(man_uri)
    return written
