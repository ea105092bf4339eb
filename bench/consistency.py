"""Cost of observation-consistent restoration: the steps around the model, per family, per tile and as a share.

For every degradation family at its middle test level, one synthetic S'×S'×C cube (``--size``) is restored
through the one restoration path with its true observation (oracle), and each step is timed separately:

* ``prepare`` — validation, normalisation, the observation read from the cube (:meth:`Observation.detect`)
  and the classical first estimate (:func:`hsivar.estimate.first_estimate`);
* ``blur_width`` — blind deblurring's width estimate and the first estimate recomputed with it
  (:meth:`Restorer.observe`; run with ``task="blur"`` and no known width, so it is timed on every family);
* ``model`` — the model over every tile, blended (:meth:`Restorer.restore_prepared` without consistency);
* ``consistency`` — the projection onto the observation (:meth:`PreparedCube.consistent`: sr back-projection,
  blur Richardson–Lucy steps) plus :func:`hsivar.prepared.finish` (exact entries put back bit for bit).

Figures: milliseconds per cube and per tile for each step, and each step's share of the total. Weights do not
change the cost, so a fresh model serves unless ``--model`` names a published one.

    python bench/consistency.py                       # tiny preset, 31 bands, 128×128 cubes, CPU
    python bench/consistency.py --size 256 --device cuda

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from _common import bench_parser, check_device, cpu_model, publish_fresh_model, temp_dir

from hsivar.degrade import degrade_for_test, observation_of_level
from hsivar.degrade.families import family
from hsivar.prepared import finish
from hsivar.restore import Restorer
from hsivar.synth import make_cube

STEPS = ("prepare", "blur_width", "model", "consistency")


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one warm-up) and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], out


def family_cost(restorer: Restorer, clean, task: str, level, repeats: int) -> dict:
    """Seconds of each step (:data:`STEPS`) restoring ``clean`` (C, H, W) degraded by ``task`` at ``level``, with
    its tiles, per-tile milliseconds and each step's share of the total."""
    overlap = restorer.tile // 4
    degraded, _ = degrade_for_test(clean, task, level)
    obs = observation_of_level(task, level, degraded.shape)
    t_prep, prep = _timed(lambda: restorer.prepare(degraded, overlap, value_range=(0.0, 1.0), observation=obs),
                          repeats)
    blind = restorer.prepare(degraded, overlap, value_range=(0.0, 1.0),
                             observation=obs.replaced(blur_sigma=None, blur_border=None))
    t_blur, _ = _timed(lambda: restorer.observe(blind, "blur"), repeats)
    t_model, samples = _timed(lambda: restorer.restore_prepared(prep, task).samples01, repeats)
    t_cons, _ = _timed(lambda: finish(prep, torch.stack([prep.consistent(s) for s in samples])), repeats)
    seconds = {"prepare": t_prep, "blur_width": t_blur, "model": t_model, "consistency": t_cons}
    total, tiles = sum(seconds.values()), len(prep.coords)
    return {"tiles": tiles, "ms_per_cube": {k: 1e3 * v for k, v in seconds.items()},
            "ms_per_tile": {k: 1e3 * v / tiles for k, v in seconds.items()},
            "share": {k: v / total for k, v in seconds.items()}}


def family_costs(restorer: Restorer, size: int, repeats: int) -> dict[str, dict]:
    """:func:`family_cost` of every family of the model at its middle test level on one synthetic ``size``² cube."""
    clean = make_cube(seed=0, size=size, bands=restorer.bands)[0]
    return {t: family_cost(restorer, clean, t, family(t).middle_level, repeats) for t in restorer.tasks}


def main() -> None:
    """Parse arguments, print the figures, end with one JSON line."""
    ap = bench_parser(__doc__, model_option=True)
    ap.add_argument("--size", type=int, default=128, help="H = W of the test cube, pixels")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    check_device(args.device)
    with temp_dir("hsivar-bench-consistency-", keep=False) as d:
        model = args.model or publish_fresh_model(args.preset, args.bands, Path(d))
        restorer = Restorer.from_published(model, device=args.device)
        costs = family_costs(restorer, args.size, args.repeats)
    report = {"preset": args.preset, "bands": restorer.bands, "size": args.size, "tile": restorer.tile,
              "device": args.device, "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
              "families": costs}
    print(f"preset {args.preset}, {restorer.bands} bands, {args.size}×{args.size} cube, tile {restorer.tile}, "
          f"{args.device} ({report['cpu']}, {report['torch_threads']} threads)")
    print(f"  {'family':<9} {'tiles':>5} " + " ".join(f"{s + ' ms/tile':>22}" for s in STEPS) + "  consistency share")
    for name, c in costs.items():
        cells = " ".join(f"{c['ms_per_tile'][s]:>13.2f} ({100 * c['share'][s]:4.1f}%)" for s in STEPS)
        print(f"  {name:<9} {c['tiles']:>5} {cells}  {100 * c['share']['consistency']:.1f}%")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
