"""The embedded demo on one machine, without Ray: demo cubes → three stages → publish → restore.

This is the model library's own end-to-end run (``hsivar demo``; ``make demo`` calls it). It
trains the tiny preset on synthetic 31-band cubes built from real reflectance spectra, degraded on
the fly with the all-in-one training sampler, publishes safetensors + JSON, then restores a held-out
cube (larger than one tile, so tiling and blending are used) for every task family at its middle
test level and prints PSNR / SSIM / SAM of the degraded input and of the restoration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hsivar.config import preset
from hsivar.data.degrade import degrade_for_test, sample_training_degradation
from hsivar.data.synth import make_cube
from hsivar.metrics import evaluate_record
from hsivar.models.hsivar import HSIVAR
from hsivar.publish import save_published
from hsivar.restore import Restorer
from hsivar.tasks import TASKS
from hsivar.training import Batch, fit

MIDDLE_LEVELS = {"gaussian": 50, "complex": 2, "blur": 15, "sr": 4, "inpaint": 0.8, "bandmiss": 0.2}


def make_batches(n_batches: int, batch_size: int, tile: int, bands: int, seed: int) -> list[Batch]:
    """Training batches of random ``tile``² crops of demo cubes, each degraded by the training sampler."""
    rng = np.random.default_rng(seed)
    cubes = [make_cube(seed=seed + i, size=2 * tile, bands=bands)[0] for i in range(8)]
    batches = []
    for _ in range(n_batches):
        hq, lq, w = [], [], []
        for _ in range(batch_size):
            cube = cubes[int(rng.integers(len(cubes)))]
            r, c = rng.integers(0, cube.shape[1] - tile + 1, size=2)
            crop = np.ascontiguousarray(cube[:, r:r + tile, c:c + tile])
            degraded, record = sample_training_degradation(crop, rng)
            hq.append(crop)
            lq.append(np.asarray(degraded, dtype=np.float32))
            w.append(record.weights)
        batches.append(Batch(torch.from_numpy(np.stack(hq)), torch.from_numpy(np.stack(lq)),
                             torch.from_numpy(np.stack(w)).float()))
    return batches


def run_demo(out: Path, quick: bool = False, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """Run the demo into ``out``; → the results table (also written to ``out/results.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = preset("tiny", bands=31)
    steps = (30, 40, 4) if quick else (400, 400, 40)
    t0 = time.perf_counter()
    echo(f"[demo] building {16 if quick else 64} training batches of degraded 31-band crops …")
    batches = make_batches(16 if quick else 64, 8, cfg.vqvae.image_size, cfg.bands, seed)
    model = HSIVAR(cfg)
    for stage, n, lr in zip(("vqvae", "var", "decoder"), steps, (2e-3, 1e-3, 2e-4)):
        t = time.perf_counter()
        for i, res in enumerate(fit(model, stage, batches, steps=n, lr=lr, seed=seed)):
            if i == 0 or (i + 1) % max(n // 5, 1) == 0:
                shown = {k: round(v, 4) for k, v in res.logs.items() if k in ("loss", "psnr", "ce", "acc")}
                echo(f"[demo] stage {stage} step {i + 1}/{n} {shown}")
        echo(f"[demo] stage {stage} done in {time.perf_counter() - t:.1f} s")
    model_dir = save_published(model, out / "model", stage="decoder", metadata={"demo": True, "steps": steps})

    restorer = Restorer.from_published(model_dir)
    clean, _ = make_cube(seed=10_000 + seed, size=48, bands=cfg.bands)
    rows = []
    for task in TASKS:
        level = MIDDLE_LEVELS[task]
        degraded, record = degrade_for_test(clean, task, level)
        restored = restorer.restore(np.asarray(degraded), task="auto", value_range=(0.0, 1.0))
        before = evaluate_record(np.asarray(degraded), clean, record).as_dict()
        after = evaluate_record(restored.cube, clean, record).as_dict()
        guess = max(restored.task_weights, key=restored.task_weights.get)
        rows.append({"task": task, "level": level, "psnr_degraded": before["psnr"], "psnr_restored": after["psnr"],
                     "ssim_degraded": before["ssim"], "ssim_restored": after["ssim"],
                     "sam_degraded": before["sam"], "sam_restored": after["sam"], "auto_task": guess,
                     "seconds": restored.seconds})
        echo(f"[demo] {task:<9} {level!s:<5} PSNR {before['psnr']:6.2f} → {after['psnr']:6.2f} dB  "
             f"SSIM {before['ssim']:.3f} → {after['ssim']:.3f}  (auto task: {guess}, {restored.tiles} tiles)")
    result = {"rows": rows, "model": str(model_dir), "seconds": time.perf_counter() - t0, "quick": quick}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    echo(f"[demo] finished in {result['seconds']:.0f} s; model in {model_dir}, table in {out / 'results.json'}")
    return result
