"""Restoration quality metrics for hyperspectral cubes (DESIGN.md §4, MP-HSIR's ``utils/val_utils.py``).

Full-reference spectral metrics (numpy, vectorised over bands and images):

* :func:`psnr` — per-band PSNR in dB with data range 1, averaged over bands (then over images).
  Both inputs are clipped to [0, 1] first. A band reproduced exactly has infinite PSNR (as
  scikit-image's ``peak_signal_noise_ratio``), so the mean is then ``inf``.
* :func:`ssim` — per-band SSIM averaged over bands, identical to scikit-image's
  ``structural_similarity(data_range=1)`` defaults applied to each band: 7×7 uniform window, sample
  covariance (N/(N−1)), K1 = 0.01, K2 = 0.03, ``reflect`` borders, the 3-pixel border of the SSIM
  map excluded from the mean. Needs H, W ≥ 7. Computed in float64.
* :func:`sam` — mean spectral angle in degrees over pixels. Pixels whose spectrum is the zero
  vector in either input have no defined angle and are left out of the mean (0 if none is left).
* :func:`ergas` — ``100 · ratio · sqrt(mean_b (RMSE_b / μ_b)²)`` with μ_b the mean of the reference
  band b. ``ratio`` is h/l, the high-resolution pixel size over the low-resolution one (1 for
  same-resolution restoration, 1/s for ×s super-resolution — i.e. the common HSI-SR ``100/s``
  convention). Bands whose reference mean is 0 are left out.

All of them take ``(C, H, W)`` or ``(N, C, H, W)`` arrays (numpy or torch) and an optional
``band_mask`` (bool (C,) or band indices) so band completion is scored on the missing bands only;
:func:`evaluate_record` takes the mask from a :class:`~hsivar.data.degrade.DegradationRecord`.

Perceptual metrics (LPIPS, DISTS, CLIP-IQA, MUSIQ, MANIQA) go through pyiqa on a false-colour RGB
rendering (:func:`false_colour`). Their weight files are looked up locally *before* pyiqa is
touched; a missing file gives a :class:`PerceptualResult` with ``value=None`` and a reason naming
the file and where to put it — never a download or a hang. pyiqa's classical metrics (``psnr``,
``ssim``, ``ms_ssim``) need no weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.ndimage import uniform_filter

if TYPE_CHECKING:
    import torch

    from hsivar.data.degrade import DegradationRecord

    Array = np.ndarray | torch.Tensor
    BandMask = np.ndarray | Sequence[int] | None

__all__ = [
    "QualityMetrics",
    "psnr",
    "ssim",
    "sam",
    "ergas",
    "evaluate",
    "evaluate_record",
    "false_colour",
    "false_colour_indices",
    "PerceptualResult",
    "PERCEPTUAL_METRICS",
    "CLASSICAL_IQA_METRICS",
    "required_weight_files",
    "perceptual_metrics",
]

# --------------------------------------------------------------------------------------------- helpers


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _prepare(restored: Any, clean: Any, band_mask: Any, clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 (N, C', H, W), band-selected and clipped to [0, 1]."""
    x, y = _np(restored), _np(clean)
    if x.shape != y.shape:
        raise ValueError(f"restored and clean shapes differ: {x.shape} vs {y.shape}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (N, C, H, W) arrays, got shape {x.shape}")
    if x.ndim == 3:
        x, y = x[None], y[None]
    if band_mask is not None:
        idx = _band_index(band_mask, x.shape[1])
        x, y = x[:, idx], y[:, idx]
    x = x.astype(np.float64, copy=True)
    y = y.astype(np.float64, copy=True)
    if clip:
        np.clip(x, 0.0, 1.0, out=x)
        np.clip(y, 0.0, 1.0, out=y)
    return x, y


def _band_index(band_mask: Any, n_bands: int) -> np.ndarray:
    m = _np(band_mask)
    if m.dtype == bool:
        if m.shape != (n_bands,):
            raise ValueError(f"band_mask has shape {m.shape}, expected ({n_bands},)")
        idx = np.flatnonzero(m)
    else:
        idx = m.astype(np.int64).ravel()
        if idx.size and (idx.min() < -n_bands or idx.max() >= n_bands):
            raise ValueError(f"band indices {idx.tolist()} out of range for {n_bands} bands")
    if idx.size == 0:
        raise ValueError("band_mask selects no band")
    return idx


# --------------------------------------------------------------------------------------------- metrics


def psnr(restored: Array, clean: Array, band_mask: BandMask = None, *, per_band: bool = False) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, data range 1, per band then averaged.

    Args:
        restored, clean: (C, H, W) or (N, C, H, W), values nominally in [0, 1] (clipped).
        band_mask: bool (C,) or band indices to score; None for all bands.
        per_band: return the (N, C') array of per-band values instead of the mean.

    Returns:
        Mean over bands, then over images (dB); ``inf`` when a band is reproduced exactly.
    """
    x, y = _prepare(restored, clean, band_mask)
    mse = np.mean((x - y) ** 2, axis=(-2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(1.0 / mse)
    return out if per_band else float(out.mean(axis=1).mean())


def ssim(restored: Array, clean: Array, band_mask: BandMask = None, *, per_band: bool = False) -> float | np.ndarray:
    """Structural similarity per band (scikit-image defaults, data range 1), averaged over bands.

    Args:
        restored, clean: (C, H, W) or (N, C, H, W) with H, W ≥ 7, values clipped to [0, 1].
        band_mask: bool (C,) or band indices to score; None for all bands.
        per_band: return the (N, C') array of per-band values instead of the mean.

    Returns:
        Mean SSIM over bands, then images (dimensionless, ≤ 1).
    """
    x, y = _prepare(restored, clean, band_mask)
    win = 7
    if min(x.shape[-2:]) < win:
        raise ValueError(f"SSIM needs H, W >= {win}, got {x.shape[-2:]}")
    size = (1, 1, win, win)  # filter within each band only
    cov_norm = win * win / (win * win - 1.0)
    ux, uy = uniform_filter(x, size), uniform_filter(y, size)
    vx = cov_norm * (uniform_filter(x * x, size) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, size) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, size) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    out = s[..., p : s.shape[-2] - p, p : s.shape[-1] - p].mean(axis=(-2, -1))
    return out if per_band else float(out.mean(axis=1).mean())


def sam(restored: Array, clean: Array, band_mask: BandMask = None, *, clip: bool = True) -> float:
    """Spectral angle mapper: mean angle in degrees between restored and clean spectra.

    Args:
        restored, clean: (C, H, W) or (N, C, H, W); the spectrum of a pixel is its C values.
        band_mask: bands forming the spectrum (bool (C,) or indices); None for all.
        clip: clip both inputs to [0, 1] first (as for PSNR/SSIM).

    Returns:
        Mean over valid pixels of ``arccos(<x, y> / (|x| |y|))`` in degrees, averaged over images.
        Pixels whose clean spectrum is all zeros are skipped (no angle to recover); an image with no
        valid pixel counts 0. An all-zero *restored* spectrum against a non-zero clean one counts
        90° (the largest angle between non-negative spectra): it carries no spectral information,
        and skipping it would give a band-completion input with its missing bands zeroed 0°.
    """
    x, y = _prepare(restored, clean, band_mask, clip=clip)
    nx = np.sqrt(np.einsum("nchw,nchw->nhw", x, x))[:, None]
    ny = np.sqrt(np.einsum("nchw,nchw->nhw", y, y))[:, None]
    valid = ny[:, 0] > 0
    ux, uy = x / np.where(nx > 0, nx, 1.0), y / np.where(ny > 0, ny, 1.0)
    # Kahan's 2·atan2(|u−v|, |u+v|) is accurate near 0° (arccos of a dot product is not: ~1e-6° noise).
    ang = np.degrees(
        2.0
        * np.arctan2(
            np.sqrt(np.einsum("nchw,nchw->nhw", ux - uy, ux - uy)),
            np.sqrt(np.einsum("nchw,nchw->nhw", ux + uy, ux + uy)),
        )
    )
    ang = np.where(nx[:, 0] > 0, ang, 90.0)
    counts = valid.sum(axis=(1, 2))
    per_img = np.where(counts > 0, (ang * valid).sum(axis=(1, 2)) / np.maximum(counts, 1), 0.0)
    return float(per_img.mean())


def ergas(restored: Array, clean: Array, band_mask: BandMask = None, *, ratio: float = 1.0, clip: bool = True) -> float:
    """Erreur relative globale adimensionnelle de synthèse (lower is better, 0 for identical).

    Args:
        restored, clean: (C, H, W) or (N, C, H, W).
        band_mask: bands to score (bool (C,) or indices); None for all.
        ratio: h/l, high-resolution over low-resolution pixel size (1 for same-resolution
            restoration, 1/s for ×s super-resolution).
        clip: clip both inputs to [0, 1] first.

    Returns:
        ``100 · ratio · sqrt(mean_b (RMSE_b / μ_b)²)`` averaged over images; bands with reference mean
        μ_b = 0 are skipped (0 if no band is left).
    """
    x, y = _prepare(restored, clean, band_mask, clip=clip)
    rmse = np.sqrt(np.mean((x - y) ** 2, axis=(-2, -1)))
    mu = np.mean(y, axis=(-2, -1))
    ok = mu > 0
    rel = np.where(ok, rmse / np.where(ok, mu, 1.0), 0.0) ** 2
    n_ok = ok.sum(axis=1)
    per_img = 100.0 * ratio * np.sqrt(np.where(n_ok > 0, rel.sum(axis=1) / np.maximum(n_ok, 1), 0.0))
    return float(per_img.mean())


@dataclass(frozen=True)
class QualityMetrics:
    """PSNR (dB), SSIM, SAM (degrees) and ERGAS of one evaluation, and the number of bands scored."""

    psnr: float
    ssim: float
    sam: float
    ergas: float
    n_bands: int

    def as_dict(self) -> dict[str, float]:
        """The four metrics as a plain dict (e.g. for MLflow)."""
        return {"psnr": self.psnr, "ssim": self.ssim, "sam": self.sam, "ergas": self.ergas}


def evaluate(restored: Array, clean: Array, band_mask: BandMask = None, *, ergas_ratio: float = 1.0) -> QualityMetrics:
    """PSNR, SSIM, SAM and ERGAS of ``restored`` against ``clean`` ((C, H, W) or (N, C, H, W)).

    ``band_mask`` restricts every metric to the selected bands (SAM: the spectrum is made of those
    bands); ``ergas_ratio`` is ERGAS's h/l.
    """
    n_bands = _np(clean).shape[-3] if band_mask is None else _band_index(band_mask, _np(clean).shape[-3]).size
    return QualityMetrics(
        psnr=psnr(restored, clean, band_mask),
        ssim=ssim(restored, clean, band_mask),
        sam=sam(restored, clean, band_mask),
        ergas=ergas(restored, clean, band_mask, ratio=ergas_ratio),
        n_bands=int(n_bands),
    )


def evaluate_record(restored: Array, clean: Array, record: DegradationRecord) -> QualityMetrics:
    """:func:`evaluate` with the scoring rules of a degradation record.

    Band completion (``record.band_mask``) is scored on the missing bands only, as MP-HSIR's
    ``compute_psnr_ssim2``; super-resolution uses ERGAS ratio 1/s (product over the sr components
    of a mixture); everything else uses all bands and ratio 1.
    """
    comps = record.components or (record,)
    ratio = math.prod(1.0 / c.scale for c in comps if c.task == "sr" and c.scale)
    return evaluate(restored, clean, record.band_mask, ergas_ratio=ratio)


# --------------------------------------------------------------------------------------------- rendering


def false_colour_indices(
    n_bands: int,
    wavelengths: Sequence[float] | np.ndarray | None = None,
    targets_nm: tuple[float, float, float] = (640.0, 550.0, 460.0),
) -> tuple[int, int, int]:
    """Band indices used as (R, G, B) by :func:`false_colour`.

    With ``wavelengths`` (nm, length C): the bands nearest to ``targets_nm`` (640/550/460 nm).
    Without: the bands at fractions 0.8, 0.5, 0.2 of the band axis, ``round(f·(C−1))`` — for a
    31-band 400–700 nm cube exactly 640/550/460 nm (indices 24, 15, 6); for C = 1 all three are
    band 0 (grey).
    """
    if n_bands < 1:
        raise ValueError("false colour needs at least one band")
    if wavelengths is not None:
        wl = np.asarray(wavelengths, dtype=np.float64)
        if wl.shape != (n_bands,):
            raise ValueError(f"got {wl.size} wavelengths for {n_bands} bands")
        return tuple(int(np.argmin(np.abs(wl - t))) for t in targets_nm)  # type: ignore[return-value]
    fr = [(t - 400.0) / 300.0 for t in targets_nm]
    return tuple(int(math.floor(f * (n_bands - 1) + 0.5)) for f in fr)  # type: ignore[return-value]


def false_colour(cube: Array, wavelengths: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """False-colour RGB rendering of a cube: (C, H, W) → (3, H, W) float32 in [0, 1].

    The three bands of :func:`false_colour_indices` (nearest 640/550/460 nm), no stretch or gamma,
    clipped to [0, 1].
    """
    x = _np(cube)
    if x.ndim != 3:
        raise ValueError(f"expected a cube (C, H, W), got shape {x.shape}")
    idx = list(false_colour_indices(x.shape[0], wavelengths))
    return np.clip(x[idx].astype(np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------------------------- perceptual

PERCEPTUAL_METRICS: tuple[str, ...] = ("lpips", "dists", "clipiqa", "musiq", "maniqa")
"""pyiqa metric names computed by default by :func:`perceptual_metrics` (pyiqa's default variants)."""

CLASSICAL_IQA_METRICS: tuple[str, ...] = ("psnr", "ssim", "ms_ssim")
"""pyiqa metrics that need no weight file (also accepted by :func:`perceptual_metrics`)."""

_FULL_REFERENCE = {"lpips", "dists", "psnr", "ssim", "ms_ssim"}

# Files each pyiqa metric loads, relative to the torch hub directory (pyiqa's own cache is
# <hub>/pyiqa, torchvision's is <hub>/checkpoints, CLIP's is <hub>/clip), read from pyiqa 0.1.16's
# archs (lpips_arch, dists_arch, clipiqa_arch/clip_model, musiq_arch, maniqa_arch) and torchvision.
_HUB_FILES: dict[str, tuple[str, ...]] = {
    "lpips": ("pyiqa/LPIPS_v0.1_alex-df73285e.pth", "checkpoints/alexnet-owt-7be5be79.pth"),
    "dists": ("pyiqa/DISTS_weights-f5e65c96.pth", "checkpoints/vgg16-397923af.pth"),
    "clipiqa": ("clip/RN50.pt",),
    "musiq": ("pyiqa/musiq_koniq_ckpt-e95806b9.pth",),
    "maniqa": ("pyiqa/ckpt_koniq10k.pt",),
    "psnr": (),
    "ssim": (),
    "ms_ssim": (),
}
# MANIQA also builds timm's ViT-B/8 with pretrained=True, which timm loads from the Hugging Face cache.
_HF_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "maniqa": ("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k", ("model.safetensors", "pytorch_model.bin")),
}
_LOWER_BETTER = {
    "lpips": True,
    "dists": True,
    "psnr": False,
    "ssim": False,
    "ms_ssim": False,
    "clipiqa": False,
    "musiq": False,
    "maniqa": False,
}


@dataclass(frozen=True)
class PerceptualResult:
    """One perceptual metric: ``value`` (None when unavailable) and, if so, ``reason`` saying why.

    Attributes:
        name: pyiqa metric name.
        value: the score on the false-colour rendering (mean over images), or None.
        lower_better: the metric's direction.
        reason: why ``value`` is None (e.g. which weight file to put where), else None.
    """

    name: str
    value: float | None
    lower_better: bool
    reason: str | None = None

    @property
    def available(self) -> bool:
        """True when a value was computed."""
        return self.value is not None


def _hub_root(weights_dir: str | os.PathLike[str] | None) -> Path:
    if weights_dir is not None:
        return Path(weights_dir).expanduser()
    import torch.hub  # torch is a hard dependency; get_dir() honours TORCH_HOME and set_dir()

    return Path(torch.hub.get_dir())


def required_weight_files(name: str, weights_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Local files metric ``name`` needs, as human-readable locations (absolute paths, and for MANIQA's
    timm backbone a Hugging Face cache entry). Raises ValueError for a metric not supported here."""
    if name not in _HUB_FILES:
        raise ValueError(f"unsupported perceptual metric {name!r}; supported: {sorted(_HUB_FILES)}")
    root = _hub_root(weights_dir)
    out = [str(root / rel) for rel in _HUB_FILES[name]]
    if name in _HF_FILES:
        repo, files = _HF_FILES[name]
        out.append(f"Hugging Face cache: {repo}/{files[0]} (or {files[1]})")
    return out


def _missing_files(name: str, weights_dir: str | os.PathLike[str] | None) -> list[str]:
    if name not in _HUB_FILES:
        raise ValueError(f"unsupported perceptual metric {name!r}; supported: {sorted(_HUB_FILES)}")
    root = _hub_root(weights_dir)
    missing = [str(root / rel) for rel in _HUB_FILES[name] if not (root / rel).is_file()]
    if name in _HF_FILES:
        repo, files = _HF_FILES[name]
        from huggingface_hub import try_to_load_from_cache  # local lookup only, no request

        if not any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
            missing.append(
                f"{repo}/{files[0]} in the Hugging Face cache (HF_HUB_CACHE, default "
                "~/.cache/huggingface/hub; e.g. `huggingface-cli download "
                f"{repo} {files[0]}` on a machine with network, then copy the cache)"
            )
    return missing


_METRIC_CACHE: dict[tuple[str, str, str], Any] = {}
_CREATE_LOCK = threading.Lock()


@contextlib.contextmanager
def _local_weight_dirs(root: Path) -> Iterator[None]:
    """Point torch hub, pyiqa's cache and the Hugging Face hub at local files only, while a metric is
    built: all files were checked to exist, so nothing may go to the network (an HTTP HEAD of the hub
    would stall on an offline machine)."""
    import huggingface_hub.constants as hf_constants
    import pyiqa.utils.download_util as pyiqa_download
    import torch

    old = (torch.hub.get_dir(), pyiqa_download.DEFAULT_CACHE_DIR, hf_constants.HF_HUB_OFFLINE)
    torch.hub.set_dir(str(root))
    pyiqa_download.DEFAULT_CACHE_DIR = str(root / "pyiqa")  # read by pyiqa at call time
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        torch.hub.set_dir(old[0])
        pyiqa_download.DEFAULT_CACHE_DIR = old[1]
        hf_constants.HF_HUB_OFFLINE = old[2]


def _get_metric(name: str, root: Path, device: str) -> Any:
    key = (name, str(root), device)
    with _CREATE_LOCK:
        if key not in _METRIC_CACHE:
            import pyiqa

            with _local_weight_dirs(root):
                _METRIC_CACHE[key] = pyiqa.create_metric(name, device=device, as_loss=False)
        return _METRIC_CACHE[key]


def perceptual_metrics(
    restored: Array,
    clean: Array,
    wavelengths: Sequence[float] | np.ndarray | None = None,
    names: Sequence[str] = PERCEPTUAL_METRICS,
    weights_dir: str | os.PathLike[str] | None = None,
    *,
    device: str = "cpu",
) -> dict[str, PerceptualResult]:
    """Perceptual (and pyiqa classical) metrics on false-colour renderings of two cubes.

    Args:
        restored, clean: cubes (C, H, W) (or (N, C, H, W)), values in [0, 1]; rendered with
            :func:`false_colour` (bands nearest 640/550/460 nm). Full-reference metrics compare
            the two renderings; no-reference ones (CLIP-IQA, MUSIQ, MANIQA) score ``restored`` only.
        wavelengths: band centres in nm (length C), or None for the index rule.
        names: pyiqa metric names, from :data:`PERCEPTUAL_METRICS` and :data:`CLASSICAL_IQA_METRICS`.
        weights_dir: a torch-hub-like folder holding the weight files as ``<dir>/pyiqa/<file>``,
            ``<dir>/checkpoints/<file>`` (torchvision backbones) and ``<dir>/clip/RN50.pt``; default
            ``$TORCH_HOME/hub`` (``~/.cache/torch/hub``).
        device: torch device for pyiqa.

    Returns:
        ``{name: PerceptualResult}``. A metric whose files are missing is returned at once with
        ``value=None`` and a reason naming each missing file — pyiqa is not even imported for it, so
        nothing is downloaded. A metric that fails to run (e.g. image too small) also gets
        ``value=None`` with the error as the reason.
    """
    x, y = _np(restored), _np(clean)
    if x.shape != y.shape:
        raise ValueError(f"restored and clean shapes differ: {x.shape} vs {y.shape}")
    x4, y4 = (x[None], y[None]) if x.ndim == 3 else (x, y)
    root = _hub_root(weights_dir)
    results: dict[str, PerceptualResult] = {}
    todo = []
    for name in names:
        lower = _LOWER_BETTER.get(name, False)
        missing = _missing_files(name, weights_dir)  # also validates the name
        if missing:
            results[name] = PerceptualResult(
                name,
                None,
                lower,
                f"{name} unavailable: weight file(s) not found locally: {'; '.join(missing)}. Put them "
                f"there (weights_dir={str(root)!r} layout: pyiqa/, checkpoints/, clip/) — hsivar never "
                "downloads weights.",
            )
        else:
            todo.append(name)
    if todo and importlib.util.find_spec("pyiqa") is None:
        for name in todo:
            reason = f"{name} unavailable: pyiqa is not installed (pip install 'hsivar[iqa]')"
            results[name] = PerceptualResult(name, None, _LOWER_BETTER.get(name, False), reason)
        return results
    if not todo:
        return results

    import torch

    rx = torch.from_numpy(np.stack([false_colour(c, wavelengths) for c in x4]))
    ry = torch.from_numpy(np.stack([false_colour(c, wavelengths) for c in y4]))
    for name in todo:
        lower = _LOWER_BETTER.get(name, False)
        try:
            metric = _get_metric(name, root, device)
            with torch.no_grad():
                score = metric(rx.to(device), ry.to(device)) if name in _FULL_REFERENCE else metric(rx.to(device))
            results[name] = PerceptualResult(name, float(torch.as_tensor(score).float().mean()), lower)
        except Exception as err:  # a metric failing must not sink the others
            results[name] = PerceptualResult(name, None, lower, f"{name} failed: {type(err).__name__}: {err}")
    return results
