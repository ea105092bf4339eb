"""Batch-restoration throughput: the Ray Data job vs a plain Python loop, on a local folder and on S3.

The same input files and the same published model both ways:
  * ``ray``: :func:`hsivar_platform.batch.run_batch` (what ``jobs/restore_batch.py`` runs): list,
    read + prepare on CPU tasks, an actor pool holding the model, finish + write on CPU tasks, manifest;
  * ``loop``: one process, one :class:`hsivar.restore.Restorer`, and for each file
    ``read_cube`` → ``Restorer.restore`` → ``write_cube`` (:mod:`hsivar.io`), in turn.
Figures are cubes/s over the whole job (model loading and Ray's actor start included; Ray itself is
started once, before, and both ways are first warmed up on one-tile cubes, untimed) and in steady state
(cubes after the first over the time from the first to the last output), and the **efficiency ratio**
ray ÷ loop of each, measured in the same run (> 1: the Ray job is faster). The S3
backend is a local S3-compatible server (moto) on 127.0.0.1, in the bench's own process.

The model is a freshly initialised preset published to a temporary folder (throughput does not depend
on training) unless ``--model URI`` names a published one (a folder, s3:// or models:/).

    python bench/pipeline.py                                   # tiny, CPU, local folder + S3
    python bench/pipeline.py --preset paper --device cuda --files 16 --size 512
Human-readable lines first; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from _common import (
    bench_parser,
    check_device,
    init_ray,
    json_line,
    local_s3,
    machine_info,
    publish_fresh_model,
    temp_dir,
)
from hsivar_platform import storage
from hsivar_platform.batch import BatchOptions, run_batch
from hsivar_platform.batch.keys import list_inputs
from hsivar_platform.batch.options import steady_rate
from hsivar_platform.model_uri import load_restorer, resolve_model

from hsivar.io import read_cube, write_cube
from hsivar.publish import read_config
from hsivar.synth import make_demo_dataset


def make_inputs(prefix: str, files: int, size: int, bands: int, fmt: str) -> str:
    """Write ``files`` demo cubes (bands × size × size) under ``prefix``; → the prefix holding them."""
    make_demo_dataset(prefix, n_train=0, n_val=0, n_test=files, size=size, bands=bands, format=fmt, seed=0)
    return storage.join(prefix, "test")


def run_loop(model: str, src: str, dst: str, device: str, batch_size: int) -> dict[str, Any]:
    """Restore every cube under ``src`` into ``dst`` in one Python loop; → seconds, cubes, cubes/s and the
    steady-state cubes/s (cubes after the first over the time from the first to the last output written).

    Same listing and output keys as the Ray job (:func:`hsivar_platform.batch.keys.list_inputs`), same
    default restoration (task auto, overlap S/4, greedy), output in the input's format and dtype.
    """
    t0 = time.perf_counter()
    restorer = load_restorer(model, device=device)
    n, t_first, t_last = 0, 0.0, 0.0
    for item in list_inputs(src, dst):
        if item.out is None:  # not a cube (the demo dataset's manifest.json): the job skips it too
            continue
        cube, meta = read_cube(item.uri, storage_options=storage.storage_options(item.uri))
        restored = restorer.restore(cube, batch_size=batch_size).cube
        write_cube(item.out, restored, meta, dtype=meta.dtype, storage_options=storage.storage_options(item.out))
        n += 1
        t_last = time.perf_counter()
        if n == 1:
            t_first = t_last
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cubes": n, "cubes_per_s": n / seconds,
            "steady_cubes_per_s": steady_rate(n, t_first, t_last)}


def run_ray(model: str, src: str, dst: str, actors: int, gpus_per_actor: float, batch_size: int) -> dict[str, Any]:
    """Restore every cube under ``src`` into ``dst`` with the Ray Data batch job; → seconds, cubes, cubes/s.

    ``cubes_per_s`` is over the whole :func:`run_batch` call (listing, actor start, pipeline, manifest);
    ``pipeline_cubes_per_s`` is the job's own figure (from the pipeline's start); ``steady_cubes_per_s`` the job's
    rate once outputs flow (:attr:`~hsivar_platform.batch.BatchReport.steady_cubes_per_s`).
    """
    options = BatchOptions(input=src, output=dst, model=model, actors=actors, gpus_per_actor=gpus_per_actor,
                           batch_size=batch_size, force=True, progress_interval_s=3600)
    t0 = time.perf_counter()
    report = run_batch(options)
    seconds = time.perf_counter() - t0
    if report.failed or report.ok != report.processed:
        raise RuntimeError(f"batch job failed on some inputs: {report.failures}")
    return {"seconds": seconds, "cubes": report.processed, "cubes_per_s": report.processed / seconds,
            "pipeline_cubes_per_s": report.cubes_per_s, "steady_cubes_per_s": report.steady_cubes_per_s}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median seconds (all runs' seconds kept under ``all_seconds``)."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "all_seconds": [round(r["seconds"], 3) for r in runs]}


def bench_backend(name: str, root: str, model: str, args: argparse.Namespace, actors: int,
                  gpus_per_actor: float) -> dict[str, Any]:
    """Both ways on one storage backend (``root``: a local folder or an s3:// bucket)."""
    src = make_inputs(storage.join(root, "inputs"), args.files, args.size, args.bands, args.format)
    ray_runs, loop_runs = [], []
    for r in range(args.repeats):
        ray_runs.append(run_ray(model, src, storage.join(root, f"out-ray-{r}"), actors, gpus_per_actor,
                                args.batch_size))
        loop_runs.append(run_loop(model, src, storage.join(root, f"out-loop-{r}"), args.device, args.batch_size))
    ray_res, loop_res = _median_run(ray_runs), _median_run(loop_runs)
    ratio = ray_res["cubes_per_s"] / loop_res["cubes_per_s"]
    steady = ray_res["steady_cubes_per_s"] / loop_res["steady_cubes_per_s"] if loop_res["steady_cubes_per_s"] else 0.0
    print(f"{name:<6} ray  {ray_res['cubes_per_s']:8.3f} cubes/s ({ray_res['seconds']:.1f} s for "
          f"{ray_res['cubes']} cubes; pipeline alone {ray_res['pipeline_cubes_per_s']:.3f} cubes/s; steady state "
          f"{ray_res['steady_cubes_per_s']:.3f} cubes/s)")
    print(f"{name:<6} loop {loop_res['cubes_per_s']:8.3f} cubes/s ({loop_res['seconds']:.1f} s for "
          f"{loop_res['cubes']} cubes; steady state {loop_res['steady_cubes_per_s']:.3f} cubes/s)")
    print(f"{name:<6} efficiency ratio ray/loop {ratio:.2f} over the whole job, {steady:.2f} in steady state")
    return {"ray": ray_res, "loop": loop_res, "efficiency_ratio": ratio, "steady_ratio": steady}


def main() -> None:
    """Parse arguments, run the benchmark, print the figures and one JSON line."""
    ap = bench_parser(__doc__, model_option=True)
    ap.add_argument("--files", type=int, default=8, help="input cubes")
    ap.add_argument("--size", type=int, default=None, help="H = W of each cube (default 1.5 × the model's tile)")
    ap.add_argument("--format", default="tif", choices=("npy", "npz", "h5", "mat", "tif", "envi"))
    ap.add_argument("--storage", default="local,s3", help="comma list of backends: local, s3")
    ap.add_argument("--actors", type=int, default=None,
                    help="model actors of the Ray job (default: one per GPU on cuda, one per core on cpu)")
    ap.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass (both ways)")
    ap.add_argument("--loop-threads", type=int, default=None,
                    help="torch threads of the loop (default: torch's, one per core; the Ray model actors get one "
                    "thread per CPU they reserve)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each way (the median run is reported)")
    ap.add_argument("--keep", action="store_true", help="keep the local work folder")
    args = ap.parse_args()
    check_device(args.device)
    backends = list(dict.fromkeys(b.strip() for b in args.storage.split(",") if b.strip()))
    if not backends or any(b not in ("local", "s3") for b in backends):
        ap.error("--storage takes local, s3 or local,s3")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.loop_threads:
        torch.set_num_threads(args.loop_threads)

    with temp_dir("hsivar-bench-pipeline-", args.keep) as tmp:
        model = args.model or publish_fresh_model(args.preset, args.bands, Path(tmp) / "model")
        cfg, _ = read_config(resolve_model(model))
        args.bands, tile = cfg.vqvae.bands, cfg.vqvae.image_size
        args.size = args.size or tile * 3 // 2
        gpus = torch.cuda.device_count() if args.device == "cuda" else 0
        actors = args.actors or (gpus if gpus else (os.cpu_count() or 1))
        print(f"model {model} ({cfg.name}, {args.bands} bands, {tile}×{tile} tiles); {args.files} {args.format} "
              f"cubes of {args.bands}×{args.size}×{args.size}; device {args.device}; Ray: {actors} model actor(s); "
              f"loop: {torch.get_num_threads()} torch threads")
        report: dict[str, Any] = {
            "bench": "pipeline", "preset": cfg.name, "model": args.model or "fresh", "bands": args.bands,
            "tile": tile, "files": args.files, "cube_shape": [args.bands, args.size, args.size],
            "format": args.format, "device": args.device, "actors": actors, "batch_size": args.batch_size,
            "repeats": args.repeats, "loop_threads": torch.get_num_threads(), "unit": "cubes/s",
        }
        with local_s3() if "s3" in backends else nullcontext():
            init_ray()
            import ray

            try:
                # Untimed warm-up, as many one-tile cubes as measured cubes, each way: imports, Ray's task
                # worker processes (spawned on first use) and first-call allocations would otherwise all be
                # charged to whichever backend runs first.
                warm = make_inputs(str(Path(tmp) / "warmup" / "inputs"), args.files, tile, args.bands, args.format)
                run_ray(model, warm, str(Path(tmp) / "warmup" / "out-ray"), actors, 1.0 if gpus else 0.0,
                        args.batch_size)
                run_loop(model, warm, str(Path(tmp) / "warmup" / "out-loop"), args.device, args.batch_size)
                results: dict[str, Any] = {}
                for backend in backends:
                    if backend == "local":
                        root = str(Path(tmp) / "local")
                    else:
                        root = "s3://hsivar-bench"
                        storage.filesystem(root)[0].mkdir("hsivar-bench")
                    results[backend] = bench_backend(backend, root, model, args, actors, 1.0 if gpus else 0.0)
            finally:
                ray.shutdown()
        report["storage"] = results
        report["efficiency_ratio"] = {b: round(r["efficiency_ratio"], 3) for b, r in results.items()}
        report["steady_ratio"] = {b: round(r["steady_ratio"], 3) for b, r in results.items()}
        report["machine"] = machine_info(args.device)
    print(json_line(report))


if __name__ == "__main__":
    main()
