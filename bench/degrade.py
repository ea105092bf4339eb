"""Degradation synthesis throughput: cubes per second for every test case on a 256×256×31 cube.

Usage: ``python bench/degrade.py [--size 256] [--bands 31] [--min-time 0.4]``. Human-readable lines
first; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from hsivar import degrade as deg
from hsivar.synth import synthesize
from hsivar.tasks import TASKS


def _rate(fn, min_time: float, min_reps: int = 3) -> float:
    """Cubes per second of ``fn()`` (one warm-up call, then at least ``min_reps`` calls and ``min_time`` s)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_reps or time.perf_counter() - t0 < min_time:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--bands", type=int, default=31)
    ap.add_argument("--min-time", type=float, default=0.4, help="seconds measured per case")
    args = ap.parse_args()

    t0 = time.perf_counter()
    cube = synthesize(0, args.size, args.bands).cube
    synth_s = time.perf_counter() - t0
    shape = list(cube.shape)
    print(f"cube {shape} float32 (synthesised in {synth_s:.2f} s); torch threads {torch.get_num_threads()}")

    cases: dict[str, float] = {}
    protocol = deg.test_protocol(TASKS)  # every family of the table, MP-HSIR's six and the others
    for i, case in enumerate(protocol):
        rate = _rate(lambda c=case, i=i: deg.degrade_for_test(cube, c.task, c.level, index=i), args.min_time)
        cases[case.name] = rate
        print(f"{case.name:<16} {rate:8.1f} cubes/s  {1000 / rate:7.1f} ms/cube")

    families = {
        t: float(np.mean([v for c, v in zip(protocol, cases.values()) if c.task == t])) for t in TASKS
    }
    rng = np.random.default_rng(0)
    train = _rate(lambda: deg.sample_training_degradation(cube, rng), args.min_time * 2, min_reps=12)
    mix = _rate(lambda: deg.degrade_mixture(cube, [("gaussian", 30), ("blur", 9)], rng), args.min_time)
    tensor = torch.from_numpy(cube)
    torch_rate = _rate(lambda: deg.degrade(tensor, "gaussian", 50, rng), args.min_time)
    print("family means (cubes/s): " + ", ".join(f"{t} {v:.1f}" for t, v in families.items()))
    print(f"training sampler          {train:8.1f} cubes/s")
    print(f"mixture gaussian30+blur9  {mix:8.1f} cubes/s")
    print(f"gaussian 50, torch input  {torch_rate:8.1f} cubes/s")
    print(
        json.dumps(
            {
                "bench": "degrade",
                "cube_shape": shape,
                "unit": "cubes/s",
                "cases": {k: round(v, 2) for k, v in cases.items()},
                "families": {k: round(v, 2) for k, v in families.items()},
                "train_sampler": round(train, 2),
                "mixture_gaussian30_blur9": round(mix, 2),
                "gaussian50_torch_input": round(torch_rate, 2),
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
