"""Perceptual image-quality metrics (pyiqa) on false-colour renderings, with local weight files only.

LPIPS, DISTS, CLIP-IQA, MUSIQ and MANIQA run through pyiqa on the false-colour RGB rendering of
:func:`hsivar.render.false_colour` (bands nearest 640/550/460 nm). Their weight files are looked up
locally *before* pyiqa is imported; a missing file gives a :class:`PerceptualResult` with
``value=None`` and a reason naming the file and where to put it — never a download or a hang.
pyiqa's classical metrics (``psnr``, ``ssim``, ``ms_ssim``) need no weights.

pyiqa is an optional dependency (``pip install 'hsivar[iqa]'``); without it every metric comes back
with ``value=None`` and the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hsivar.metrics import as_numpy
from hsivar.render import false_colour

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor

__all__ = [
    "CLASSICAL_IQA_METRICS",
    "IQA_METRICS",
    "PERCEPTUAL_METRICS",
    "PerceptualResult",
    "lower_is_better",
    "perceptual_metrics",
    "required_weight_files",
]

PERCEPTUAL_METRICS: tuple[str, ...] = ("lpips", "dists", "clipiqa", "musiq", "maniqa")
"""pyiqa metric names computed by default by :func:`perceptual_metrics` (pyiqa's default variants)."""

CLASSICAL_IQA_METRICS: tuple[str, ...] = ("psnr", "ssim", "ms_ssim", "gmsd", "nlpd", "fsim")
"""pyiqa metrics that need no weight file (also accepted by :func:`perceptual_metrics`). Of them, three model
perception with fixed, published parameters: GMSD (gradient magnitude similarity deviation, Xue et al., IEEE TIP
2014), NLPD (normalised Laplacian pyramid distance, Laparra et al., 2016) and FSIM (feature similarity, Zhang et
al., IEEE TIP 2011) — the perceptual scores an offline machine can always give (``hsivar evaluate --perceptual``)."""

IQA_METRICS: tuple[str, ...] = (*PERCEPTUAL_METRICS, *CLASSICAL_IQA_METRICS)
"""Every metric name :func:`perceptual_metrics` accepts."""

_FULL_REFERENCE = {"lpips", "dists", "psnr", "ssim", "ms_ssim", "gmsd", "nlpd", "fsim"}

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
    "gmsd": (),
    "nlpd": (),
    "fsim": (),
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
    "gmsd": True,
    "nlpd": True,
    "fsim": False,
    "clipiqa": False,
    "musiq": False,
    "maniqa": False,
}


def lower_is_better(name: str) -> bool:
    """Whether a lower score of metric ``name`` (from :data:`IQA_METRICS`) means a better image."""
    return _LOWER_BETTER.get(name, False)


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


def _hub_paths(name: str, weights_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Absolute paths of the torch-hub files of metric ``name``; ValueError for a metric not supported here."""
    if name not in _HUB_FILES:
        raise ValueError(f"unsupported perceptual metric {name!r}; supported: {sorted(_HUB_FILES)}")
    root = _hub_root(weights_dir)
    return [root / rel for rel in _HUB_FILES[name]]


def required_weight_files(name: str, weights_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Local files pyiqa metric ``name`` needs, as human-readable locations.

    Args:
        name: a name from :data:`PERCEPTUAL_METRICS` or :data:`CLASSICAL_IQA_METRICS`.
        weights_dir: the torch-hub-like folder (see :func:`perceptual_metrics`); None for torch's hub dir.

    Returns:
        Absolute paths, and for MANIQA's timm backbone a Hugging Face cache entry; [] for the classical
        metrics. Looks nothing up. Raises ValueError for a metric not supported here.
    """
    out = [str(p) for p in _hub_paths(name, weights_dir)]
    if name in _HF_FILES:
        repo, files = _HF_FILES[name]
        out.append(f"Hugging Face cache: {repo}/{files[0]} (or {files[1]})")
    return out


def _missing_files(name: str, weights_dir: str | os.PathLike[str] | None) -> list[str]:
    missing = [str(p) for p in _hub_paths(name, weights_dir) if not p.is_file()]
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
            :func:`hsivar.render.false_colour` (bands nearest 640/550/460 nm). Full-reference metrics compare
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
    x, y = as_numpy(restored), as_numpy(clean)
    if x.shape != y.shape:
        raise ValueError(f"restored and clean shapes differ: {x.shape} vs {y.shape}")
    x4, y4 = (x[None], y[None]) if x.ndim == 3 else (x, y)
    root = _hub_root(weights_dir)
    results: dict[str, PerceptualResult] = {}
    todo = []
    for name in names:
        lower = lower_is_better(name)
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
            results[name] = PerceptualResult(name, None, lower_is_better(name), reason)
        return results
    if not todo:
        return results

    import torch

    rx = torch.from_numpy(np.stack([false_colour(c, wavelengths) for c in x4]))
    ry = torch.from_numpy(np.stack([false_colour(c, wavelengths) for c in y4]))
    for name in todo:
        lower = lower_is_better(name)
        try:
            metric = _get_metric(name, root, device)
            with torch.no_grad():
                score = metric(rx.to(device), ry.to(device)) if name in _FULL_REFERENCE else metric(rx.to(device))
            results[name] = PerceptualResult(name, float(torch.as_tensor(score).float().mean()), lower)
        except Exception as err:  # a metric failing must not sink the others
            results[name] = PerceptualResult(name, None, lower, f"{name} failed: {type(err).__name__}: {err}")
    return results
