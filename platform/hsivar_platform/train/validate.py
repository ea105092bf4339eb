"""Validation of a training stage on rank 0: the seeded test protocol with true autoregressive decoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hsivar.calibrate import CalibrationExample
from hsivar.degrade import observation_of_level
from hsivar.metrics import evaluate
from hsivar.models.base import RestorationModel, to_model_range
from hsivar.render import false_colour
from hsivar.restore import Restorer
from hsivar.tasks import TASKS


def val_examples(it: Any, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The validation shard's batches (rows of :func:`hsivar_platform.data.degrade_case`) as numpy dicts."""
    return [b for b in it.iter_batches(batch_size=batch_size, batch_format="numpy") if len(b.get("uri", []))]


def calibration_examples(examples: list[dict[str, np.ndarray]]) -> list[CalibrationExample]:
    """The validation rows (:func:`val_examples`) as :class:`~hsivar.calibrate.CalibrationExample` s, every row in
    order (the calibration's restorations then line up with the rows)."""
    return [CalibrationExample(np.asarray(b["degraded"][i], np.float32), np.asarray(b["clean"][i], np.float32),
                               str(b["task"][i]), float(b["level"][i]), np.asarray(b["band_mask"][i], bool))
            for b in examples for i in range(len(b["uri"]))]


def _panel(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], wavelengths: Any, scale: int = 4) -> np.ndarray:
    """(degraded, restored, clean) cubes per row → one (H·rows, 3·W, 3) false-colour image, ×scale."""
    lines = []
    for cubes in rows:
        tiles = [false_colour(c, wavelengths).transpose(1, 2, 0) for c in cubes]
        pad = np.ones((tiles[0].shape[0], 2, 3), np.float32)
        lines.append(np.concatenate([tiles[0], pad, tiles[1], pad, tiles[2]], axis=1))
        lines.append(np.ones((2, lines[-1].shape[1], 3), np.float32))
    img = np.concatenate(lines[:-1], axis=0)
    return img.repeat(scale, 0).repeat(scale, 1)


def _restore(restorer: Restorer, b: dict[str, np.ndarray], i: int, task_mode: str) -> np.ndarray:
    """Example ``i`` of a validation batch restored through the one restoration path (first estimate,
    consistency), in [0, 1]; ``task_mode`` "oracle" passes the true task and level
    (:func:`hsivar.degrade.observation_of_level`)."""
    degraded = np.asarray(b["degraded"][i], np.float32)
    if task_mode == "auto":
        return restorer.restore(degraded, "auto", value_range=(0.0, 1.0)).cube
    task, level = str(b["task"][i]), float(b["level"][i])
    obs = observation_of_level(task, level, degraded.shape)
    return restorer.restore(degraded, task, value_range=(0.0, 1.0), observation=obs).cube


@torch.no_grad()
def validate(model: RestorationModel, stage: str, examples: list[dict[str, np.ndarray]], *, task_mode: str,
             device: torch.device, bf16: bool,
             restored: Sequence[np.ndarray] | None = None) -> tuple[dict[str, float], np.ndarray | None]:
    """Validation on the seeded protocol examples (rank 0).

    Stage ``vqvae``: reconstruction of the clean crops' centre tiles (``val/recon/{psnr,ssim,sam}``). Later stages:
    true autoregressive restoration of the crops (one model tile each) through
    :meth:`hsivar.restore.Restorer.forward` (greedy, KV cache; ``task_mode`` "auto" = the task classifier,
    "oracle" = true weights; bf16 autocast on CUDA when ``bf16``) → ``val/<task>/{psnr,ssim,sam}``
    averaged over cubes and levels, the degraded input's ``val/<task>/psnr_degraded`` and the means over
    families ``val/mean/...``.
    ``restored``: the restorations of the later stages' examples, row by row in order, when the caller already
    has them in ``task_mode`` (the calibration's blind restorations, :attr:`hsivar.calibrate.CalibrationFit.restored`):
    they are scored instead of restoring again.
    Returns (metrics, a false-colour panel image (H, W, 3) degraded | restored | clean per family).
    Raises:
        ValueError: ``restored`` does not hold one cube per example row.
    """
    was = model.training
    restorer = Restorer(model, device, bf16=bf16)  # puts the model in eval mode
    per: dict[str, list[dict[str, float]]] = {}
    panel_rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    seen: set[str] = set()
    n_rows = sum(len(b["uri"]) for b in examples)
    if restored is not None and len(restored) != n_rows:
        raise ValueError(f"validate: {len(restored)} restorations given for {n_rows} example rows")
    given = None if restored is None else iter(restored)
    try:
        for b in examples:
            clean = torch.from_numpy(np.ascontiguousarray(b["clean"])).float().to(device)
            if stage == "vqvae":
                keep = []
                for i, u in enumerate(b["uri"]):  # one reconstruction per cube (rows repeat it per case)
                    if str(u) not in seen:
                        seen.add(str(u))
                        keep.append(i)
                if not keep:
                    continue
                S = model.cfg.vqvae.image_size  # the VQ-VAE sees one tile: the centre one of a larger crop
                r0, c0 = max(0, (clean.shape[-2] - S) // 2), max(0, (clean.shape[-1] - S) // 2)
                clean = clean[..., r0:r0 + S, c0:c0 + S]
                with restorer.autocast():
                    rec = model.vqvae(to_model_range(clean[keep])).reconstruction
                out = ((rec.float() + 1) / 2).clamp(0, 1).cpu().numpy()
                tiles = clean.cpu().numpy()
                for j, i in enumerate(keep):
                    m = evaluate(out[j], tiles[i]).as_dict()
                    per.setdefault("recon", []).append(m)
                    panel_rows.setdefault(f"recon{len(panel_rows)}", (tiles[i], out[j], tiles[i]))
                continue
            n = len(b["uri"])
            if given is None:
                out = np.stack([_restore(restorer, b, i, task_mode) for i in range(n)])
            else:
                out = np.stack([next(given) for _ in range(n)])
            for i in range(len(out)):
                t = str(b["task"][i])
                m = evaluate(out[i], b["clean"][i], b["band_mask"][i], ergas_ratio=float(b["ergas_ratio"][i]))
                d = evaluate(np.clip(b["degraded"][i], 0, 1), b["clean"][i], b["band_mask"][i],
                             ergas_ratio=float(b["ergas_ratio"][i]))
                per.setdefault(t, []).append({**m.as_dict(), "psnr_degraded": d.psnr, "ssim_degraded": d.ssim})
                panel_rows.setdefault(t, (b["degraded"][i], out[i], b["clean"][i]))
    finally:
        model.train(was)
    metrics: dict[str, float] = {}
    for t, rows in per.items():
        for k in rows[0]:
            metrics[f"val/{t}/{k}"] = float(np.mean([r[k] for r in rows]))
    fams = [t for t in per if t in TASKS]
    if fams:
        for k in ("psnr", "ssim", "sam", "psnr_degraded"):
            metrics[f"val/mean/{k}"] = float(np.mean([metrics[f"val/{t}/{k}"] for t in fams]))
    order = [t for t in TASKS if t in panel_rows] or list(panel_rows)[:4]
    panel = _panel([panel_rows[t] for t in order], model.cfg.wavelengths) if order else None
    return metrics, panel

