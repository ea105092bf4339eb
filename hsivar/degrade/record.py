"""What one degradation did to a cube: :class:`DegradationRecord`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DegradationRecord"]


@dataclass
class DegradationRecord:
    """What one degradation did to a cube of shape ``shape = (C, H, W)``.

    Only the fields of the family concerned are set (each family's row in
    :data:`hsivar.degrade.families.FAMILIES` lists them); noise levels are in [0, 1] data units
    (σ/255). Masks are boolean numpy arrays, True where the voxel / column was hit.

    Attributes:
        task: family name from :data:`~hsivar.tasks.TASKS`, or ``"mixture"``.
        level: the level argument as given (σ in 0–255, case, k, s or r); None for mixtures.
        shape: (C, H, W) of the cube.
        weights: (N,) float32 task weights in :data:`~hsivar.tasks.TASKS` order (one-hot, or uniform
            over a mixture's components).
        sigma: gaussian σ in data units.
        band_sigmas: complex, (C,) per-band σ in data units.
        case: complex case 1–4.
        extra: complex extra, ``"stripe"``, ``"deadline"``, ``"impulse"`` or None (case 1).
        affected_bands: complex, sorted band indices that got the extra.
        column_mask: complex stripe/deadline, (C, W) bool, the hit columns of each band.
        stripe_offsets: complex stripe, (C, W) float32 value added to each column (0 elsewhere).
        impulse_amount: complex impulse, the salt & pepper rate of this image.
        impulse_mask: complex impulse, (C, H, W) bool, voxels set to 0 or 1.
        kernel: blur, (k,) float32 separable kernel (sums to 1); the 2-D kernel is its outer product.
        kernel_size: blur k.
        blur_sigma: blur σ in pixels.
        scale: sr factor s.
        lr_shape: sr low-resolution (h, w).
        removed_mask: inpaint, (C, H, W) bool, True where the voxel was removed (set to 0).
        removed_fraction: inpaint r (target fraction removed).
        missing_bands: bandmiss, sorted int64 indices of the zeroed bands (mixtures: the union).
        haze_beta: haze, the optical depth β at 550 nm.
        airlight: haze, (C,) float32 airlight A per band.
        transmission: haze, (C, H, W) float32 transmission t of each band.
        exposure: lowlight, the exposure e (a fraction of a normal one).
        gamma: lowlight, the tone curve exponent γ.
        components: mixture, the component records in the order applied.
    """

    task: str
    level: float | int | str | None
    shape: tuple[int, int, int]
    weights: np.ndarray
    sigma: float | None = None
    band_sigmas: np.ndarray | None = None
    case: int | None = None
    extra: str | None = None
    affected_bands: np.ndarray | None = None
    column_mask: np.ndarray | None = None
    stripe_offsets: np.ndarray | None = None
    impulse_amount: float | None = None
    impulse_mask: np.ndarray | None = None
    kernel: np.ndarray | None = None
    kernel_size: int | None = None
    blur_sigma: float | None = None
    scale: int | None = None
    lr_shape: tuple[int, int] | None = None
    removed_mask: np.ndarray | None = None
    removed_fraction: float | None = None
    missing_bands: np.ndarray | None = None
    haze_beta: float | None = None
    airlight: np.ndarray | None = None
    transmission: np.ndarray | None = None
    exposure: float | None = None
    gamma: float | None = None
    components: tuple[DegradationRecord, ...] = field(default_factory=tuple)

    @property
    def band_mask(self) -> np.ndarray | None:
        """(C,) bool mask of the bands a metric should score, or None for all bands.

        Band completion scores the missing bands only (MP-HSIR's ``compute_psnr_ssim2``). A mixture
        that also degrades the observed bands (any non-bandmiss component) is scored on all bands.
        """
        if self.task == "bandmiss" or (
            self.task == "mixture" and self.components and all(c.task == "bandmiss" for c in self.components)
        ):
            if self.missing_bands is None or self.missing_bands.size == 0:
                return None
            mask = np.zeros(self.shape[0], dtype=bool)
            mask[self.missing_bands] = True
            return mask
        return None

    @property
    def kernel2d(self) -> np.ndarray | None:
        """Blur only: the (k, k) float32 kernel (outer product of :attr:`kernel`), else None."""
        return None if self.kernel is None else np.outer(self.kernel, self.kernel).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly dict: scalars and small lists; masks are reduced to hit fractions."""
        out: dict[str, Any] = {"task": self.task, "level": self.level, "shape": list(self.shape)}
        out["weights"] = [round(float(v), 6) for v in self.weights]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in out or v is None or f.name == "components":
                continue
            if f.name.endswith("_mask"):
                out[f"{f.name}_fraction"] = float(np.mean(v))
            elif isinstance(v, np.ndarray):
                if v.size <= 64:
                    out[f.name] = v.tolist()
            elif isinstance(v, tuple):
                out[f.name] = list(v)
            else:
                out[f.name] = v
        if self.components:
            out["components"] = [c.summary() for c in self.components]
        return out
