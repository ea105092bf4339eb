"""Training ingest: how the size of a data pass slows the steps of a real Ray Train stage on this machine.

Runs stage 1 (``vqvae``) of the tiny preset through :func:`hsivar_platform.train.train_pipeline` — the
code ``jobs/train_var.py`` runs: Ray Data reading, cropping and degrading the demo cubes on CPU tasks,
streamed into a ``TorchTrainer`` worker with 2 torch threads — once per ``data.crops_per_window``
value (``--crops``), everything else equal (64 demo cubes of 64×64 read as one window each, batch 8,
a shuffle buffer of 256). One pass of the data is files × crops_per_window examples, and every pass
starts a new streaming execution. The training loop logs ``seconds_per_step`` for every step to
MLflow; from that history:

* ``first_step_s``: step 1 (Ray Data starting, worker processes importing torch);
* ``mean_s_per_step``: steps 2…N; ``median_s_per_step``: a step with nothing else going on;
* ``excess_s``: Σ over steps 2…N of (step − median): what the data pipeline cost the loop;
* ``worst50_s_per_step``: the slowest 50-step window (at a pass start, while a pass is produced);
* ``stage_wall_s``: the stage's MLflow run, start to end (Ray Train start, steps, checkpoint, publish).

    python bench/ingest.py                       # crops 32,16,8; 300 steps each
    python bench/ingest.py --crops 32,16 --steps 200
Human-readable lines first; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import logging
import statistics
import uuid
from pathlib import Path
from typing import Any

from _common import bench_parser, init_ray, json_line, machine_info, temp_dir
from hsivar_platform.pipeline_config import PipelineConfig, load_config
from hsivar_platform.train import train_pipeline

WINDOW = 50


def variant_config(crops: int, args: Any, work_dir: str, tracking_uri: str) -> PipelineConfig:
    """The tiny stage-1 run with ``crops`` crops per window, per-step logging, no validation, one checkpoint."""
    return load_config(None, [
        "model.preset=tiny", f"model.bands={args.bands}", "data.source=demo",
        f"data.demo.n_train={args.files}", "data.demo.n_val=0", "data.demo.n_test=0", "data.demo.size=64",
        "data.window=64", f"data.crops_per_window={crops}", "data.batch_size=8", "data.shuffle_buffer=256",
        "train.stages=[vqvae]", f"train.vqvae.steps={args.steps}", "train.checkpoint_every=1000000",
        "train.log_every=1", "train.val_every=null", "val.max_cubes=0",
        "scaling.num_workers=1", "scaling.torch_threads=2", "scaling.use_gpu=false",
        f"run.name=bench-ingest-{uuid.uuid4().hex[:8]}-c{crops}", f"run.work_dir={work_dir}", "run.max_failures=0",
        f"tracking.tracking_uri={tracking_uri}", "tracking.experiment=hsivar-bench", "tracking.register_as=null",
        "ray.address=null",
    ])


def figures(tracking_uri: str, run_id: str, steps_per_pass: float) -> dict[str, Any]:
    """Per-step figures of one stage run from its ``seconds_per_step`` history (see the module docstring)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    hist = [m.value for m in sorted(client.get_metric_history(run_id, "seconds_per_step"), key=lambda m: m.step)]
    rest = hist[1:]
    median = statistics.median(rest)
    windows = [statistics.mean(rest[i:i + WINDOW]) for i in range(0, max(len(rest) - WINDOW, 0) + 1)]
    info = client.get_run(run_id).info
    return {"steps_per_pass": steps_per_pass, "first_step_s": hist[0], "mean_s_per_step": statistics.mean(rest),
            "median_s_per_step": median, "excess_s": sum(t - median for t in rest),
            "worst50_s_per_step": max(windows), "steps_s": sum(hist),
            "stage_wall_s": (info.end_time - info.start_time) / 1000}


def main() -> None:
    """Parse arguments, run one stage per variant, print the figures and one JSON line."""
    ap = bench_parser(__doc__)
    ap.add_argument("--crops", default="32,16,8", help="comma list of data.crops_per_window values")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--files", type=int, default=64, help="demo training cubes (64×64)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report: dict[str, Any] = {"bench": "ingest", "steps": args.steps, "files": args.files, "batch": 8}
    with temp_dir("hsivar-bench-ingest-", args.keep) as tmp:
        tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        init_ray()
        import ray

        try:
            for crops in (int(c) for c in args.crops.split(",")):
                cfg = variant_config(crops, args, tmp, tracking_uri)
                res = train_pipeline(cfg, echo=lambda _line: None).stages[0]
                fig = figures(tracking_uri, res.mlflow_run_id, args.files * crops / 8)
                report[f"crops{crops}"] = fig
                print(f"crops_per_window {crops:3d} ({fig['steps_per_pass']:.0f} steps per pass): first step "
                      f"{fig['first_step_s']:.1f} s, mean {fig['mean_s_per_step']:.3f} s/step, median "
                      f"{fig['median_s_per_step']:.3f}, excess {fig['excess_s']:.1f} s, worst 50 steps "
                      f"{fig['worst50_s_per_step']:.3f} s/step, stage wall {fig['stage_wall_s']:.1f} s")
        finally:
            ray.shutdown()
    report["machine"] = machine_info(args.device)
    print(json_line(report))


if __name__ == "__main__":
    main()
