"""Training throughput: samples per second of each stage (vqvae, var, decoder) with 1 vs 2 Ray Train workers.

Runs the real training pipeline (:func:`hsivar_platform.train.train_pipeline`: Ray Data ingest with
on-the-fly degradation → ``TorchTrainer`` per stage → checkpoint → publish, MLflow tracking in a
temporary SQLite store) for a few steps per stage, one run name per worker count (a new one each
time: re-using a Ray Train run name would resume the old run). Stages are interleaved — vqvae with 1
worker, vqvae with 2, var with 1, … — so that drifting background load on a shared machine hits both
worker counts alike. The figure per stage is the training loop's own step timing
(``seconds_per_step``, logged by rank 0 to MLflow every step): samples/s = batch × workers ×
(steps − 1) / the time of steps 2…N (step 1 waits for the data pipeline to start and is left out).
Also reported: each stage's wall time (Ray Train start, steps, checkpoint, publish) and, against
1 worker, the speedup and scaling efficiency (speedup ÷ workers) of the other worker counts.

Resources per worker are fixed, so the efficiency is DDP's (plus the shared data pipeline's): on CPU
one torch thread per worker (``--torch-threads N``; ``split`` gives each worker cores ÷ workers
threads instead, i.e. the same cores split differently), on CUDA one GPU per worker.

    python bench/train.py                                    # tiny, CPU, 1 and 2 workers, 4 steps per stage
    python bench/train.py --preset paper --device cuda --workers 1,2 --steps 20
Human-readable lines first; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

from _common import bench_parser, check_device, init_ray, json_line, machine_info, temp_dir
from hsivar_platform.pipeline_config import PipelineConfig, load_config
from hsivar_platform.train import train_pipeline

from hsivar.config import FAMILY_STAGES, STAGES


def worker_threads(option: str | None, workers: int, device: str) -> int | None:
    """Torch threads per worker: ``option`` as a number, ``split`` = cores ÷ workers, default 1 on CPU and
    None (Ray's default) on CUDA."""
    if option == "split":
        return max(1, (os.cpu_count() or 1) // workers)
    if option:
        return int(option)
    return 1 if device == "cpu" else None


def bench_config(args: argparse.Namespace, workers: int, work_dir: str, tracking_uri: str) -> PipelineConfig:
    """The pipeline config of one run: ``--config`` (or the defaults) with the bench's overrides.

    Demo data sized so that one epoch holds every step of every worker (no epoch restarts inside the
    timed steps), no validation, one checkpoint at the end, a unique run name, MLflow in ``tracking_uri``.
    """
    base = load_config(args.config, [f"model.preset={args.preset}", f"model.bands={args.bands}"])
    tile = base.model_cfg().vqvae.image_size
    batch = args.batch_size or base.data.batch_size
    size = 2 * tile
    crops = math.ceil((args.steps + 2) * batch * workers / args.files)
    threads = worker_threads(args.torch_threads, workers, args.device)
    overrides = [
        f"model.preset={args.preset}", f"model.bands={args.bands}",
        "data.source=demo", f"data.demo.n_train={args.files}", "data.demo.n_val=0", "data.demo.n_test=0",
        f"data.demo.size={size}", f"data.window={size}", f"data.crops_per_window={crops}", f"data.batch_size={batch}",
        f"train.stages=[{','.join(args.stages)}]", "train.checkpoint_every=1000000", "train.log_every=1",
        "train.val_every=null", "val.max_cubes=0",
        f"scaling.num_workers={workers}", f"scaling.use_gpu={str(args.device == 'cuda').lower()}",
        f"scaling.torch_threads={threads if threads else 'null'}",
        f"run.name=bench-train-{uuid.uuid4().hex[:8]}-w{workers}", f"run.work_dir={work_dir}",
        "run.storage_path=null", "run.max_failures=0",
        f"tracking.tracking_uri={tracking_uri}", "tracking.experiment=hsivar-bench", "tracking.register_as=null",
        "ray.address=null",
    ]
    overrides += [f"train.{s}.steps={args.steps}" for s in args.stages]
    overrides += [f"train.{s}.batch_size=null" for s in args.stages]
    return load_config(args.config, overrides)


def stage_figures(tracking_uri: str, run_id: str, samples_per_step: int) -> dict[str, float]:
    """Figures of one stage from its nested MLflow run: samples/s from the ``seconds_per_step`` history
    (steps 2…N; step 1 left out) and the stage's wall time (the run's start to end: Ray Train start,
    steps, checkpoint, publish)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    hist = sorted(client.get_metric_history(run_id, "seconds_per_step"), key=lambda m: m.step)
    if len(hist) < 2:
        raise RuntimeError(f"run {run_id}: fewer than 2 logged steps; use --steps ≥ 2")
    timed = hist[1:]
    seconds = sum(m.value * (m.step - prev.step) for prev, m in zip(hist, timed))
    steps = hist[-1].step - hist[0].step
    per_step = sorted(m.value for m in timed)
    info = client.get_run(run_id).info
    return {"samples_per_s": samples_per_step * steps / seconds, "seconds_per_step": seconds / steps,
            "median_seconds_per_step": per_step[len(per_step) // 2], "timed_steps": steps,
            "stage_wall_s": (info.end_time - info.start_time) / 1000 if info.end_time else float("nan")}


def bench_stage(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """One stage of the run ``cfg`` (its previous stages already published); → the stage's figures."""
    lines: list[str] = []
    try:
        result = train_pipeline(cfg, stages=[stage], echo=lines.append)
    except BaseException:
        print("\n".join(lines[-20:]))
        raise
    res = result.stages[0]
    if not res.completed or not res.mlflow_run_id:
        raise RuntimeError(f"stage {stage} of run {cfg.run.name} did not complete: {res}")
    workers = cfg.scaling.num_workers
    fig = stage_figures(cfg.tracking_uri(), res.mlflow_run_id, cfg.data.batch_size * workers)
    print(f"  {stage:<8} {workers} worker(s): {fig['samples_per_s']:8.2f} samples/s  {fig['seconds_per_step']:6.3f} "
          f"s/step (median {fig['median_seconds_per_step']:.3f})  stage wall {fig['stage_wall_s']:5.1f} s")
    return fig


def main() -> None:
    """Parse arguments, run the benchmark, print the figures and one JSON line."""
    ap = bench_parser(__doc__)
    ap.add_argument("--config", help="pipeline YAML to start from (default: the built-in defaults)")
    ap.add_argument("--workers", default="1,2", help="comma list of Ray Train worker counts")
    ap.add_argument("--stages", default=",".join(FAMILY_STAGES["hsivar"]),
                    help="comma list of stages, in pipeline order")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per stage (the first is not timed)")
    ap.add_argument("--batch-size", type=int, default=None, help="examples per step and worker "
                    "(default: the config's data.batch_size)")
    ap.add_argument("--files", type=int, default=4, help="demo training cubes")
    ap.add_argument("--torch-threads", default=None, help="torch threads per worker: a number, or split "
                    "(cores / workers); default 1 on CPU, Ray's default on CUDA")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (checkpoints, MLflow store)")
    args = ap.parse_args()
    check_device(args.device)
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not worker_counts or min(worker_counts) < 1:
        ap.error("--workers takes positive integers, e.g. 1,2")
    if not args.stages or args.stages != sorted(set(args.stages), key=STAGES.index) or \
            any(s not in STAGES for s in args.stages):
        ap.error(f"--stages takes distinct stages in pipeline order from {','.join(STAGES)}")
    if args.stages[0] != "vqvae":
        ap.error("--stages must start with vqvae (later stages start from the previous stage's weights)")
    if args.torch_threads not in (None, "split") and not (args.torch_threads.isdigit() and int(args.torch_threads)):
        ap.error("--torch-threads takes a positive number or split")
    if args.steps < 2:
        ap.error("--steps must be ≥ 2 (the first step is not timed)")
    logging.basicConfig(level=logging.WARNING)

    with temp_dir("hsivar-bench-train-", args.keep) as tmp:
        tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        init_ray()
        import ray

        cfgs = {w: bench_config(args, w, tmp, tracking_uri) for w in worker_counts}
        for w, cfg in cfgs.items():
            print(f"{w} worker(s): {cfg.scaling.torch_threads or 'default'} torch thread(s) each, batch "
                  f"{cfg.data.batch_size} per worker, run {cfg.run.name}")
        results: dict[str, Any] = {str(w): {"torch_threads_per_worker": cfgs[w].scaling.torch_threads}
                                   for w in worker_counts}
        try:
            for stage in args.stages:
                for w in worker_counts:
                    results[str(w)][stage] = bench_stage(cfgs[w], stage)
        finally:
            ray.shutdown()
        cfg = cfgs[worker_counts[0]]  # what every run shares: tile, batch per worker
    report: dict[str, Any] = {
        "bench": "train", "preset": args.preset, "bands": args.bands, "device": args.device,
        "tile": cfg.model_cfg().vqvae.image_size, "batch_size_per_worker": cfg.data.batch_size,
        "steps": args.steps, "timed_steps": args.steps - 1, "unit": "samples/s", "workers": results,
    }
    if 1 in worker_counts and len(worker_counts) > 1:
        report["speedup"], report["scaling_efficiency"] = {}, {}
        for w in (w for w in worker_counts if w != 1):
            sp = {s: results[str(w)][s]["samples_per_s"] / results["1"][s]["samples_per_s"] for s in args.stages}
            report["speedup"][str(w)] = sp
            report["scaling_efficiency"][str(w)] = {s: v / w for s, v in sp.items()}
            print(f"{w} workers vs 1: " + ", ".join(f"{s} {v:.2f}× ({100 * v / w:.0f}% efficiency)"
                                                   for s, v in sp.items()))
    report["machine"] = machine_info(args.device)
    print(json_line(report))


if __name__ == "__main__":
    main()
