"""Training step cost of each stage on one process: seconds per step, samples/s and peak device memory.

What a GPU buys per stage, with no Ray and no data pipeline in the way: each stage's loss
(:func:`hsivar.training.stage_loss`) + backward + AdamW step on one fixed batch of smooth random cubes
with Gaussian noise, for each batch size and precision (fp32; on CUDA also bf16 autocast, as
``hsivar_platform.train`` runs it). Stage 3 includes its autoregressive restoration of the batch
(true decoding, no teacher forcing), which is why it costs more than stage 2 at equal batch size.
A batch size that does not fit is reported as out of memory and the next is tried. bench/train.py
measures the same steps through the real Ray Train pipeline.

    python bench/step.py --preset tiny                                  # CPU, fp32
    python bench/step.py --preset paper --device cuda --batch-sizes 4,16,32
Human-readable lines first; the last line is one JSON object with every figure.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from _common import bench_parser, check_device, json_line, median_time

from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset
from hsivar.tasks import DEFAULT_TASKS
from hsivar.training import Batch, prepare_stage, stage_loss


def synthetic_batch(n: int, bands: int, size: int, device: torch.device) -> Batch:
    """Smooth random cubes (n, bands, size, size) in [0, 1] with Gaussian noise σ = 30/255 as the degraded input."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, bands, 4, 4, generator=g)
    hq = F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    lq = hq + torch.randn(hq.shape, generator=g) * 30 / 255
    w = torch.zeros(n, len(DEFAULT_TASKS))  # the default model's task list
    w[:, DEFAULT_TASKS.index("gaussian")] = 1
    return Batch(hq.to(device), lq.to(device), w.to(device))


def time_stage(model: HSIVAR, stage: str, batch: Batch, steps: int, bf16: bool,
               device: torch.device) -> dict[str, float]:
    """Median seconds per optimizer step of ``stage`` after 2 warm-up steps, and peak memory in GiB (CUDA)."""
    params = prepare_stage(model, stage)
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    last: dict[str, torch.Tensor] = {}

    def step() -> None:
        with ctx():
            loss = stage_loss(model, stage, batch, gen).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        last["loss"] = loss

    sec = median_time(step, steps, device)
    out = {"seconds_per_step": sec, "samples_per_s": batch.hq.shape[0] / sec, "loss": float(last["loss"].detach())}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    """Parse arguments, print the figures, end with one JSON line."""
    ap = bench_parser(__doc__)
    ap.add_argument("--batch-sizes", default="2,8")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per stage (after 2 warm-up steps)")
    args = ap.parse_args()
    check_device(args.device)
    device = torch.device(args.device)
    cfg = preset(args.preset, bands=args.bands)
    S = cfg.vqvae.image_size
    precisions = {"fp32": False, "bf16": True} if device.type == "cuda" else {"fp32": False}
    report: dict[str, Any] = {
        "preset": args.preset, "bands": args.bands, "tile": S, "device": args.device,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "results": {},
    }
    print(f"{args.preset}: {S}×{S}×{args.bands} tiles on {report['device_name']}")
    for label, bf16 in precisions.items():
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            torch.manual_seed(0)
            model = HSIVAR(cfg).to(device)
            batch = synthetic_batch(bs, args.bands, S, device)
            for stage in cfg.stages:
                key = f"{label}/batch_{bs}/{stage}"
                try:
                    r = time_stage(model, stage, batch, args.steps, bf16, device)
                except torch.OutOfMemoryError:
                    report["results"][key] = {"out_of_memory": True}
                    print(f"  {label:4s} batch {bs:3d} {stage:7s}  out of memory")
                    break
                report["results"][key] = r
                mem = f"  peak {r['peak_memory_gib']:6.2f} GiB" if "peak_memory_gib" in r else ""
                print(f"  {label:4s} batch {bs:3d} {stage:7s} {r['seconds_per_step'] * 1e3:9.1f} ms/step "
                      f"{r['samples_per_s']:9.1f} samples/s{mem}")
            del model, batch
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(json_line(report))


if __name__ == "__main__":
    main()
