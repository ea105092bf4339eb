"""What bf16 autocast costs in quality: a published model's restorations in fp32 and in bf16 on one device.

Runs the seeded test protocol (:func:`hsivar.degrade.degrade_for_test`, all 19 cases) over the clean
cubes of ``--data`` (each min–max normalised to [0, 1], as ``jobs/evaluate.py`` does), restores every
case with :class:`hsivar.restore.Restorer` twice — bf16 off and on — and prints, per task family, the
mean PSNR (dB; band completion counts the missing bands only) of the degraded input, of each precision
and their difference, the mean |bf16 − fp32| of the restored cubes (in [0, 1] units) and the seconds per
cube. On the CPU bf16 is ignored (Restorer runs fp32), so use ``--device cuda``.

    python bench/precision.py --model work/runs/RUN/decoder/latest --data work/data/demo-…/test --device cuda
Human-readable lines first; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import check_device, json_line

from hsivar.degrade import degrade_for_test, test_protocol
from hsivar.io import cube_suffixes, read_cube, split_listing
from hsivar.metrics import psnr
from hsivar.restore import Restorer


def main() -> None:
    """Parse arguments, print the figures, end with one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="published model folder (config.json + model.safetensors)")
    ap.add_argument("--data", required=True, help="folder of clean cubes")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--task", default="auto", help="auto (the classifier) or oracle (the true task)")
    ap.add_argument("--max-cubes", type=int, default=4)
    args = ap.parse_args()
    check_device(args.device)
    files = sorted(split_listing(str(p) for p in Path(args.data).iterdir())[0])[: args.max_cubes]
    if not files:
        ap.error(f"{args.data}: no cube files ({', '.join(cube_suffixes())})")
    base = Restorer.from_published(args.model, device=args.device)
    restorers = {label: Restorer(base.model, args.device, bf16=label == "bf16") for label in ("fp32", "bf16")}
    psnrs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    diffs: dict[str, list[float]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    for index, f in enumerate(files):
        cube, _ = read_cube(f)
        clean = (cube - cube.min()) / (cube.max() - cube.min())
        for case in test_protocol(base.tasks):
            degraded, record = degrade_for_test(clean, case.task, case.level, index=index)
            degraded = np.asarray(degraded, np.float32)
            mask = record.band_mask
            psnrs[case.task]["degraded"].append(psnr(degraded, clean, mask))
            outs = {}
            for label, r in restorers.items():
                task = case.task if args.task == "oracle" else "auto"
                t = time.perf_counter()
                outs[label] = r.restore(degraded, task=task, value_range=(0.0, 1.0)).cube
                seconds[label].append(time.perf_counter() - t)
                psnrs[case.task][label].append(psnr(outs[label], clean, mask))
            diffs[case.task].append(float(np.abs(outs["bf16"] - outs["fp32"]).mean()))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report: dict[str, Any] = {"model": args.model, "device": args.device, "device_name": name, "task": args.task,
                              "cubes": len(files), "torch": torch.__version__, "families": {}}
    print(f"{len(files)} cubes × {len(test_protocol(base.tasks))} cases on {name}, task={args.task}; mean PSNR in dB")
    print(f"{'family':10s} {'degraded':>9s} {'fp32':>8s} {'bf16':>8s} {'Δ bf16':>8s} {'mean |Δ|':>9s}")
    for task in base.tasks:
        p = {k: float(np.mean(v)) for k, v in psnrs[task].items()}
        d = float(np.mean(diffs[task]))
        report["families"][task] = {**p, "bf16_minus_fp32_db": p["bf16"] - p["fp32"], "mean_abs_diff": d}
        print(f"{task:10s} {p['degraded']:9.2f} {p['fp32']:8.2f} {p['bf16']:8.2f} "
              f"{p['bf16'] - p['fp32']:+8.3f} {d:9.5f}")
    for label, v in seconds.items():
        report[f"seconds_per_cube_{label}"] = float(np.median(v))
        print(f"median seconds per cube, {label}: {np.median(v):.4f}")
    print(json_line(report))


if __name__ == "__main__":
    main()
