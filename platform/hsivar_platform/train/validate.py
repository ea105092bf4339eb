"""Validation of a training stage on rank 0: the seeded test protocol, read and degraded in the worker.

Stage ``vqvae`` checks the reconstruction of the clean tiles; the family's last stage (``decoder``) restores the
examples through the one restoration path (true autoregressive decoding, first estimate, consistency), as users
restore. The stages between check their own progress, cheaply and on what they changed: their held-out loss (token
cross-entropy and accuracy; the latent refiner's L1) and what the token path alone reconstructs — the whole path's
output is the first estimate until stage decoder trains the fusion head, so restoring through it there says nothing.
"""

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
from hsivar.tasks import TASKS, weights_in
from hsivar.training import Batch, example_estimate, held_out_logs, token_path_image
from hsivar_platform.data import degrade_cases

_PSNR, _TOKEN_PSNR = ("psnr", "PSNR (dB)", 2), ("token_path_psnr", "token path PSNR (dB)", 2)
HEADLINE: dict[str, tuple[tuple[str, str, int], ...]] = {
    "vqvae": (_PSNR,), "var": (("acc", "token accuracy", 4), _TOKEN_PSNR),
    "refiner": (("l1", "latent L1", 4), _TOKEN_PSNR), "decoder": (_PSNR,)}
"""Per stage, the validation figures per family its progress lines show: (metric, how the line names it, decimals)."""


def val_examples(rows: Sequence[dict[str, Any]], *, bands: int, crop: int | None, norm_window: int | None,
                 batch_size: int) -> list[dict[str, np.ndarray]]:
    """The protocol rows (:func:`hsivar_platform.data.protocol_rows`) read and degraded here, ``batch_size`` rows a
    batch (:func:`hsivar_platform.data.degrade_cases`: cubes that cannot be read are left out with a warning).

    A few hundred small examples at most (``val.max_cubes`` cubes): reading them in the rank-0 worker costs under a
    second where a Ray Data pipeline started per stage cost 2–13 s of start-up (docs/experiments.md).
    Returns:
        Batches of ``clean`` / ``degraded`` (n, C, H, W) float32 in [0, 1], ``task``, ``level``, ``band_mask``,
        ``ergas_ratio`` … as numpy arrays.
    """
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        b = degrade_cases({k: np.array([r[k] for r in chunk]) for k in chunk[0]}, bands=bands, crop=crop,
                          norm_window=norm_window)
        if b and len(b.get("uri", [])):
            out.append(b)
    return out


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


def _centre_tiles(model: RestorationModel, b: dict[str, np.ndarray], device: torch.device) -> Batch:
    """A validation batch's centre tiles (one model tile each) as a training :class:`~hsivar.training.Batch`, with
    the first estimate and kept entries as training computes them (what the cube shows plus what its true level
    says: :func:`hsivar.training.example_estimate`)."""
    S = model.cfg.vqvae.image_size
    H, W = b["clean"].shape[-2:]
    r0, c0 = max(0, (H - S) // 2), max(0, (W - S) // 2)
    hq = np.ascontiguousarray(b["clean"][..., r0:r0 + S, c0:c0 + S], np.float32)
    lq = np.ascontiguousarray(b["degraded"][..., r0:r0 + S, c0:c0 + S], np.float32)
    x0 = kept = None
    if model.cfg.first_estimate:
        # a tile cut from inside a blurred cube has the scene beyond its frame, not the blur's zero padding
        border = "zero" if H <= S and W <= S else "free"
        pairs = [example_estimate(lq[i], observation_of_level(str(b["task"][i]), float(b["level"][i]), lq[i].shape)
                                  .replaced(blur_border=border))
                 for i in range(len(lq))]
        x0 = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
        kept = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(device)

    weights = np.stack([weights_in(w, model.dag.tasks) for w in b["task_weights"]])  # TASKS → the model's order
    return Batch(t(hq), t(lq), t(weights), x0, kept)


def _stage_check(restorer: Restorer, stage: str, examples: list[dict[str, np.ndarray]],
                 ) -> tuple[dict[str, list[dict[str, float]]], dict[str, tuple[np.ndarray, ...]]]:
    """The check of a stage between ``vqvae`` and ``decoder`` on the examples' centre tiles, per family: the stage's
    held-out loss and logs (:func:`hsivar.training.held_out_logs`) and what the token path alone reconstructs
    (:func:`hsivar.training.token_path_image`: ``token_path_{psnr,ssim,sam}``). → (per family, one dict per batch;
    per family one panel row (degraded, token path, clean) tiles)."""
    model = restorer.model
    per: dict[str, list[dict[str, float]]] = {}
    rows: dict[str, tuple[np.ndarray, ...]] = {}
    for b in examples:
        tasks = np.array([str(t) for t in b["task"]])
        for t in dict.fromkeys(tasks):  # one batch per family: the logs are batch means
            sel = np.flatnonzero(tasks == t)
            batch = _centre_tiles(model, {k: v[sel] for k, v in b.items()}, restorer.device)
            with restorer.autocast():
                logs = held_out_logs(model, stage, batch)  # type: ignore[arg-type]
                img = token_path_image(model, batch).float().cpu().numpy()
            hq, lq = batch.hq.cpu().numpy(), batch.lq.cpu().numpy()
            scores = [evaluate(img[j], hq[j], b["band_mask"][i]) for j, i in enumerate(sel)]
            for name in ("psnr", "ssim", "sam"):
                logs[f"token_path_{name}"] = float(np.mean([getattr(m, name) for m in scores]))
            per.setdefault(t, []).append(logs)
            rows.setdefault(t, (lq[0], img[0], hq[0]))
    return per, rows


@torch.no_grad()
def validate(model: RestorationModel, stage: str, examples: list[dict[str, np.ndarray]], *, task_mode: str,
             device: torch.device, bf16: bool,
             restored: Sequence[np.ndarray] | None = None) -> tuple[dict[str, float], np.ndarray | None]:
    """Validation on the seeded protocol examples (rank 0).

    Stage ``vqvae``: reconstruction of the clean crops' centre tiles (``val/recon/{psnr,ssim,sam}``). The stages
    between ``vqvae`` and ``decoder``: on the crops' centre tiles, per family, the stage's held-out loss and logs
    (``val/<task>/{loss,ce,acc,...}``) and the token path's reconstruction (``val/<task>/token_path_{psnr,ssim,sam}``;
    :func:`_stage_check`), and the means over families ``val/mean/...``. Stage ``decoder``:
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
        between = stage not in ("vqvae", "decoder")
        if between:
            per, panel_rows = _stage_check(restorer, stage, examples)
        for b in () if between else examples:
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
    for k in per[fams[0]][0] if fams else ():
        if all(f"val/{t}/{k}" in metrics for t in fams):
            metrics[f"val/mean/{k}"] = float(np.mean([metrics[f"val/{t}/{k}"] for t in fams]))
    order = [t for t in TASKS if t in panel_rows] or list(panel_rows)[:4]
    panel = _panel([panel_rows[t] for t in order], model.cfg.wavelengths) if order else None
    return metrics, panel

