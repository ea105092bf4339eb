"""Inference cost of HSI-VAR: seconds and counted FLOPs per cube, and the design choices that set them.

For one S×S×C tile of a preset it reports
  * counted forward FLOPs (``torch.utils.flop_counter`` on the meta device, every preset) of:
    DAG + KV cache (the default), CFG (a second, unconditional pass), no KV cache (the whole
    sequence recomputed at every scale), and a diffusion-style baseline: the same transformer run
    for 100 steps over the full-resolution token grid (condition prefix + p_K² tokens per step);
  * measured seconds per cube and cubes/s for the same variants and several batch sizes, on presets
    that run on the chosen device in reasonable time (``--measure``; default: tiny everywhere,
    small/paper on CUDA only);
  * on CUDA, fp32 vs bf16 autocast and the achieved fraction of the device's dense bf16 peak;
  * with ``--compile``, DAG + KV through compiled decoding steps (one CUDA graph per scale on CUDA) beside the eager
    one, with the compilation time and whether the tokens and image equal the eager decoding's;
  * with ``--parts``, ms per cube of each part of DAG + KV (condition encoder, guidance, transformer loop,
    refiner, decoder + SSA, fusion) from ``torch.profiler``, per batch size (and precision on CUDA).
The last line printed is one JSON object with every figure.

    python bench/inference.py --preset tiny
    python bench/inference.py --preset paper --device cuda --compile --parts --batch-sizes 1,8,32,64
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext

import torch
from _common import bench_parser, device_sync, median_time
from torch.utils.flop_counter import FlopCounterMode

from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset

DIFFUSION_STEPS = 100
# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs this project is lent, by name fragment.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


def variants(model: HSIVAR, x: torch.Tensor) -> dict[str, callable]:
    """The inference variants to compare, each a closure restoring tiles x (B, C, S, S)."""
    var, cfg = model.var, model.cfg

    def diffusion_style() -> None:
        # one forward over prefix + the full-resolution token grid, DIFFUSION_STEPS times
        c = model.cond.encode(x * 2 - 1)
        prefix = model.cond.prefix(c)
        grid = torch.zeros(x.shape[0], cfg.vqvae.latent_size**2, cfg.transformer.width, device=x.device,
                           dtype=prefix.dtype)
        seq = torch.cat([prefix, grid], dim=1)
        n = seq.shape[1]
        for _ in range(DIFFUSION_STEPS):
            h = seq
            for b in var.blocks:
                h = b(h, var.rope_cos[:n], var.rope_sin[:n], None)
            var.head(var.head_nm(h[:, -cfg.vqvae.latent_size**2:]))
        model.vqvae.decode(torch.zeros_like(c))

    return {
        "dag_kv": lambda: model.restore(x, task="auto"),
        "cfg_kv": lambda: model.restore(x, task="auto", guidance="cfg"),
        "dag_no_kv": lambda: model.restore(x, task="auto", kv_cache=False),
        f"diffusion_{DIFFUSION_STEPS}_steps": diffusion_style,
    }


def counted_tflops(name: str, bands: int) -> dict[str, float]:
    """Forward TFLOPs per cube of every variant, counted on the meta device (batch 1)."""
    with torch.device("meta"):
        model = HSIVAR(preset(name, bands=bands)).eval()
        x = torch.zeros(1, *model.cfg.cube_shape)
    out = {}
    for key, fn in variants(model, x).items():
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn()
        out[key] = counter.get_total_flops() / 1e12
    return out


def measure(name: str, bands: int, device: torch.device, batch_sizes: list[int], repeats: int,
            bf16: bool, compiled: bool = False) -> dict[str, dict]:
    """Measured seconds per cube per variant and batch size (and cubes/s). With ``compiled``, also DAG + KV through
    compiled decoding steps (``dag_kv_compiled``: CUDA graphs per scale on CUDA, inductor on the CPU), with the
    first call's seconds (compilation included) and whether its tokens and image equal the eager decoding's."""
    torch.manual_seed(0)
    model = HSIVAR(preset(name, bands=bands)).to(device).eval()
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    results: dict[str, dict] = {}
    for bs in batch_sizes:
        x = torch.rand(bs, *model.cfg.cube_shape, device=device)
        for key, fn in variants(model, x).items():
            if key.startswith("diffusion") and bs != batch_sizes[0]:
                continue
            with ctx, torch.no_grad():
                sec = median_time(fn, repeats, device)
            results.setdefault(key, {})[f"batch_{bs}"] = {"seconds_per_cube": sec / bs, "cubes_per_s": bs / sec}
        if compiled:
            results.setdefault("dag_kv_compiled", {})[f"batch_{bs}"] = measure_compiled(model, x, repeats, device, ctx)
    return results


PARTS = ("condition", "guidance", "transformer", "refiner", "decoder", "fusion")
"""The parts :meth:`hsivar.models.hsivar.HSIVAR.restore` labels for a profiler (``hsivar.<part>``)."""


def measure_parts(name: str, bands: int, device: torch.device, batch_size: int, repeats: int,
                  bf16: bool) -> dict[str, float]:
    """Milliseconds per cube of each part of DAG + KV decoding (:data:`PARTS`), from ``torch.profiler`` over
    ``repeats`` calls after two warm-ups: CPU time of each labelled range on the CPU, device (kernel) time on
    CUDA; ``total`` is the wall time per cube measured alongside (the parts' sum falls short of it by the glue
    between them; on CUDA, kernels overlap the host)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = HSIVAR(preset(name, bands=bands)).to(device).eval()
    x = torch.rand(batch_size, *model.cfg.cube_shape, device=device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    sync = device_sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with ctx, torch.no_grad():
        for _ in range(2):
            model.restore(x, task="auto")
        sync()
        with profile(activities=activities) as prof:
            t = time.perf_counter()
            for _ in range(repeats):
                model.restore(x, task="auto")
            sync()
            wall = time.perf_counter() - t
    cubes = repeats * batch_size
    out = {}
    for event in prof.key_averages():
        if event.key.startswith("hsivar.") and event.key[len("hsivar."):] in PARTS:
            us = event.device_time_total if device.type == "cuda" else event.cpu_time_total  # µs over all calls
            out[event.key[len("hsivar."):]] = us / 1e3 / cubes
    out["total"] = wall * 1e3 / (repeats * batch_size)
    return out


def measure_compiled(model: HSIVAR, x: torch.Tensor, repeats: int, device: torch.device,
                     ctx: object) -> dict[str, float | bool]:
    """DAG + KV of tiles ``x`` through compiled decoding steps vs eagerly: seconds per cube, the first call's
    seconds (compilation), same tokens, largest image difference."""
    sync = device_sync(device)
    bs = x.shape[0]
    with ctx, torch.no_grad():  # type: ignore[attr-defined]
        ref = model.restore(x, task="auto")
        model.var.compile_steps()
        try:
            t = time.perf_counter()
            out = model.restore(x, task="auto")
            sync()
            first = time.perf_counter() - t
            sec = median_time(lambda: model.restore(x, task="auto"), repeats, device)
        finally:
            model.var.compile_steps(False)
    return {"seconds_per_cube": sec / bs, "cubes_per_s": bs / sec, "first_call_s": first,
            "same_tokens": all(torch.equal(a, b) for a, b in zip(ref.idx, out.idx)),
            "max_abs_diff": float((ref.cube.float() - out.cube.float()).abs().max())}


def main() -> None:
    """Parse arguments, print the figures, end with one JSON line."""
    ap = bench_parser(__doc__)
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--measure", choices=("auto", "yes", "no"), default="auto",
                    help="auto: measure tiny on any device, small/paper only on CUDA")
    ap.add_argument("--parts", action="store_true", help="also ms per cube of each part of the model (condition "
                    "encoder, guidance, transformer loop, refiner, decoder + SSA, fusion) at each batch size")
    ap.add_argument("--compile", action="store_true", help="also DAG + KV through compiled decoding steps (CUDA "
                    "graphs per scale on CUDA; on the CPU inductor takes about a minute per batch size)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    report: dict = {"preset": args.preset, "bands": args.bands, "device": args.device,
                    "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch_threads": torch.get_num_threads()}
    flops = counted_tflops(args.preset, args.bands)
    report["counted_tflops_per_cube"] = flops
    print(f"preset {args.preset}, {args.bands} bands, device {report['device_name']}")
    for key, tf in flops.items():
        print(f"  counted {key:<22} {tf:10.4f} TFLOPs/cube   ({tf / flops['dag_kv']:6.2f}× DAG+KV)")

    run = args.measure == "yes" or (args.measure == "auto" and (args.preset == "tiny" or device.type == "cuda"))
    if run:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        precisions = {"fp32": False, "bf16": True} if device.type == "cuda" else {"fp32": False}
        report["measured"] = {}
        for label, bf16 in precisions.items():
            m = measure(args.preset, args.bands, device, sizes, args.repeats, bf16, args.compile)
            report["measured"][label] = m
            for key, per_bs in m.items():
                for bs, r in per_bs.items():
                    line = f"  {label} {key:<22} {bs:<9} {r['seconds_per_cube'] * 1e3:10.2f} ms/cube " \
                           f"{r['cubes_per_s']:9.2f} cubes/s"
                    if "same_tokens" in r:
                        line += f" (first call {r['first_call_s']:.1f} s; same tokens {r['same_tokens']}, " \
                                f"max |Δ| {r['max_abs_diff']:.2e})"
                    if device.type == "cuda":
                        achieved = flops[key.removesuffix("_compiled")] / r["seconds_per_cube"]
                        peak = next((p for k, p in BF16_PEAK_TFLOPS.items() if k in report["device_name"]), None)
                        r["achieved_tflops"] = achieved
                        if peak:
                            r["fraction_of_bf16_peak"] = achieved / peak
                            line += f" {achieved:7.2f} TFLOP/s ({100 * achieved / peak:.1f}% of bf16 peak)"
                    print(line)
        if args.parts:
            report["parts_ms_per_cube"] = {}
            for label, bf16 in precisions.items():
                for bs in sizes:
                    parts = measure_parts(args.preset, args.bands, device, bs, args.repeats, bf16)
                    report["parts_ms_per_cube"].setdefault(label, {})[f"batch_{bs}"] = parts
                    print(f"  {label} parts, batch {bs} (ms/cube): " + ", ".join(
                        f"{k} {v:.2f}" for k, v in parts.items()))
        base = report["measured"]["fp32"]["dag_kv"][f"batch_{sizes[0]}"]["seconds_per_cube"]
        ratios = {k: v[f"batch_{sizes[0]}"]["seconds_per_cube"] / base
                  for k, v in report["measured"]["fp32"].items()}
        report["measured_time_ratio_vs_dag_kv_fp32"] = ratios
        shown = {k: round(v, 2) for k, v in ratios.items()}
        print(f"  time ratios vs DAG+KV (fp32, batch {sizes[0]}): {shown}")
    else:
        print("  (not measured on this device: counted FLOPs only; pass --measure yes to force)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
