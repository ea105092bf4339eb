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
  * with ``--compile``, DAG + KV through compiled decoding steps (``torch.compile``, inductor) beside the eager
    one, with the compilation time and whether the tokens and image equal the eager decoding's;
  * with ``--graphs`` (CUDA), DAG + KV and CFG + KV replayed from CUDA graphs of the whole restoration
    (:class:`hsivar.models.graphs.GraphedRestore`, what ``Restorer(compiled=True)`` runs on a GPU) and the
    diffusion-style baseline replayed from a graph too, with the recording time, token equality and max |Δ| against
    the eager restoration, and the time ratios of the baseline against DAG + KV both ways; ``--channels-last`` adds
    the graphed DAG + KV with the model and tiles in channels-last memory format;
  * with ``--parts``, ms per cube of each part of DAG + KV (condition encoder, guidance, transformer loop,
    refiner, decoder + SSA, fusion) from ``torch.profiler``, per batch size (and precision on CUDA); with
    ``--kernels N`` also the N costliest kernels (aten operators on the CPU), busy time and launches per cube.
The last line printed is one JSON object with every figure.

    python bench/inference.py --preset tiny
    python bench/inference.py --preset paper --device cuda --graphs --parts --batch-sizes 1,8,32,64
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from _common import bench_parser, device_sync, median_time, token_agreement
from torch import nn
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

from hsivar.models.graphs import GraphedRestore, record
from hsivar.models.hsivar import HSIVAR
from hsivar.models.norm import autocast_policy_norms
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


def build(name: str, bands: int, device: torch.device) -> HSIVAR:
    """A freshly initialised (seed 0) ``name`` preset, built on ``device`` (initialising the paper preset's 370 M
    parameters on the CPU first takes seconds), in eval mode."""
    torch.manual_seed(0)
    with torch.device(device):
        return HSIVAR(preset(name, bands=bands)).eval()


def measure(name: str, bands: int, device: torch.device, batch_sizes: list[int], repeats: int,
            bf16: bool, compiled: bool = False, graphs: bool = False, channels_last: bool = False,
            ablations: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
            on_result: Callable[[str, str, dict], None] = lambda key, bs, r: None) -> dict[str, dict]:
    """Measured seconds per cube per variant and batch size (and cubes/s). With ``compiled``, also DAG + KV through
    compiled decoding steps (``dag_kv_compiled``, inductor), with the first call's seconds (compilation included) and
    whether its tokens and image equal the eager decoding's. With ``graphs`` (CUDA), also DAG + KV and CFG + KV
    replayed from CUDA graphs of the whole restoration (``*_graphs``, :class:`GraphedRestore`) with the same checks
    and the recording time, and the diffusion-style baseline from a graph at the first batch size; with
    ``channels_last``, also the graphed DAG + KV in channels-last memory format; ``ablations``: the graphed DAG + KV
    also without these of the graphs' options (:data:`GRAPH_ABLATIONS`) and with the model held these other ways
    (:data:`MODEL_ABLATIONS`, under bf16 only: they change what autocast does).
    ``only``: the variants of :func:`variants` to measure (default all; the graphed ones follow: CFG's with
    ``cfg_kv``, the baseline's with the diffusion one).
    ``on_result(variant, "batch_<n>", figures)`` is called as each figure is measured."""
    model = build(name, bands, device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    results: dict[str, dict] = {}

    def keep(key: str, bs: int, r: dict) -> None:
        results.setdefault(key, {})[f"batch_{bs}"] = r
        on_result(key, f"batch_{bs}", r)

    for bs in batch_sizes:
        x = torch.rand(bs, *model.cfg.cube_shape, device=device)
        for key, fn in variants(model, x).items():
            if (key.startswith("diffusion") and bs != batch_sizes[0]) or (only is not None and key not in only):
                continue
            with ctx, torch.no_grad():
                sec = median_time(fn, repeats, device)
            keep(key, bs, {"seconds_per_cube": sec / bs, "cubes_per_s": bs / sec})
        if compiled:
            keep("dag_kv_compiled", bs, measure_compiled(model, x, repeats, device, ctx))
        if graphs:
            for guidance in ("dag", "cfg") if only is None or "cfg_kv" in only else ("dag",):
                keep(f"{guidance}_kv_graphs", bs, measure_graphed(model, x, guidance, repeats, device, ctx))
            for suffix in ablations:
                if suffix in GRAPH_ABLATIONS:
                    keep(f"dag_kv_graphs_{suffix}", bs, measure_graphed(model, x, "dag", repeats, device, ctx,
                                                                         **GRAPH_ABLATIONS[suffix]))
                elif bf16:
                    with MODEL_ABLATIONS[suffix](model):
                        keep(f"dag_kv_graphs_{suffix}", bs, measure_graphed(model, x, "dag", repeats, device, ctx))
            if bs == batch_sizes[0] and (only is None or f"diffusion_{DIFFUSION_STEPS}_steps" in only):
                diffusion = variants(model, x)[f"diffusion_{DIFFUSION_STEPS}_steps"]
                keep(f"diffusion_{DIFFUSION_STEPS}_steps_graphs", bs,
                     measure_captured(diffusion, bs, repeats, device, bf16))
            if channels_last:
                model.to(memory_format=torch.channels_last)
                try:
                    keep("dag_kv_graphs_channels_last", bs, measure_graphed(
                        model, x.contiguous(memory_format=torch.channels_last), "dag", repeats, device, ctx))
                finally:
                    model.to(memory_format=torch.contiguous_format)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next batch size's graphs and activations start from a clean pool
    return results


def measure_graphed(model: HSIVAR, x: torch.Tensor, guidance: str, repeats: int, device: torch.device,
                    ctx: object, **options: bool) -> dict[str, float | bool]:
    """Restoration of tiles ``x`` replayed from a CUDA graph (:class:`GraphedRestore` with ``options``) vs eagerly:
    seconds per cube, the first call's seconds (warm-up and recording), whether the tokens are the same and the share
    that is (an untrained model's logits are near ties, which another GEMM or convolution algorithm flips), the
    largest image difference; and the same share between two eager restorations (the eager path's own repeatability)."""
    sync = device_sync(device)
    bs = x.shape[0]
    graphed = GraphedRestore(model, **options)
    with ctx, torch.no_grad():  # type: ignore[attr-defined]
        ref = model.restore(x, task="auto", guidance=guidance)
        again = model.restore(x, task="auto", guidance=guidance)
        sync()
        t = time.perf_counter()
        out = graphed(x, "auto", guidance=guidance)
        sync()
        first = time.perf_counter() - t
        sec = median_time(lambda: graphed(x, "auto", guidance=guidance), repeats, device)
    return {"seconds_per_cube": sec / bs, "cubes_per_s": bs / sec, "first_call_s": first,
            "same_tokens": all(torch.equal(a, b) for a, b in zip(ref.idx, out.idx)),
            "token_agreement": token_agreement(ref.idx, out.idx),
            "eager_repeat_token_agreement": token_agreement(ref.idx, again.idx),
            "max_abs_diff": float((ref.cube.float() - out.cube.float()).abs().max())}


GRAPH_ABLATIONS = {"no_weight_copies": {"low_precision_weights": False}}
"""``--graph-ablations``: the graphed DAG + KV without each of GraphedRestore's options (variant suffix → options)."""

MODEL_ABLATIONS: dict[str, Callable[[nn.Module], AbstractContextManager]] = {"autocast_norms": autocast_policy_norms}
"""``--graph-ablations``, too: the graphed DAG + KV (and its eager reference) with the model held otherwise (variant
suffix → context): ``autocast_norms``, the VQ-VAE's group norms under autocast's fp32 policy instead of in bf16."""


def measure_captured(fn: Callable[[], object], bs: int, repeats: int, device: torch.device,
                     bf16: bool) -> dict[str, float]:
    """``fn`` (static inputs) recorded into a CUDA graph (:func:`hsivar.models.graphs.record`), then replayed: seconds
    per cube over ``bs`` tiles, and the first call's seconds (warm-up and recording)."""
    sync = device_sync(device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if bf16 else nullcontext()
    sync()
    t = time.perf_counter()
    with ctx, torch.no_grad():
        graph, _ = record(fn, device)
    graph.replay()
    sync()
    first = time.perf_counter() - t
    sec = median_time(graph.replay, repeats, device)
    return {"seconds_per_cube": sec / bs, "cubes_per_s": bs / sec, "first_call_s": first}


PARTS = ("condition", "guidance", "transformer", "refiner", "decoder", "fusion")
"""The parts :meth:`hsivar.models.hsivar.HSIVAR.restore` labels for a profiler (``hsivar.<part>``)."""


def measure_parts(name: str, bands: int, device: torch.device, batch_size: int, repeats: int,
                  bf16: bool, top: int = 0) -> tuple[dict[str, float], dict | None]:
    """Milliseconds per cube of each part of DAG + KV decoding (:data:`PARTS`), from ``torch.profiler`` over
    ``repeats`` calls after two warm-ups: CPU time of each labelled range on the CPU, its span on the device's
    timeline on CUDA (idle gaps included); ``total`` is the wall time per cube measured alongside (the parts' sum
    falls short of it by the glue between them; on CUDA, kernels overlap the host). With ``top`` > 0 also the
    ``top`` costliest kernels of the same calls (:func:`costliest_ops`), else None."""
    from torch.profiler import ProfilerActivity, profile

    model = build(name, bands, device)
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
    events = prof.key_averages()
    for event in events:
        part = event.key[len("hsivar."):]
        if not event.key.startswith("hsivar.") or part not in PARTS:
            continue
        if device.type != "cuda":
            out[part] = event.cpu_time_total / 1e3 / cubes  # µs over all calls → ms per cube
        # on CUDA a range has two rows: the host's (its kernels' summed time) and the device timeline's (its span,
        # idle gaps included); the span is kept where both are there
        elif event.device_type == DeviceType.CUDA or part not in out:
            out[part] = event.device_time_total / 1e3 / cubes
    out["total"] = wall * 1e3 / (repeats * batch_size)
    return out, costliest_ops(events, cubes, device, top) if top > 0 else None


def costliest_ops(events: list, cubes: int, device: torch.device, top: int) -> dict:
    """What a profile's calls spent (``events``: its ``key_averages()``), per cube of ``cubes``: on CUDA the kernels
    (and copies) by their device time, on the CPU the aten operators by their own CPU time. → ``busy_ms_per_cube``
    (their sum: on CUDA the device's busy time, against the wall time of the parts), ``calls_per_cube`` (kernels,
    copies, sets on CUDA) and ``top``: the ``top`` costliest as {name (cut at 120 characters), ms_per_cube, share of
    busy, calls_per_cube}."""
    rows = []
    for e in events:
        if e.key.startswith("hsivar."):  # the parts' own ranges (also on the device's timeline)
            continue
        if device.type == "cuda" and e.device_type == DeviceType.CUDA:
            rows.append((e.key, e.self_device_time_total, e.count))
        elif device.type != "cuda" and e.key.startswith("aten::"):
            rows.append((e.key, e.self_cpu_time_total, e.count))
    busy = sum(us for _, us, _ in rows)
    rows.sort(key=lambda r: -r[1])
    return {"busy_ms_per_cube": busy / 1e3 / cubes, "calls_per_cube": sum(c for _, _, c in rows) / cubes,
            "top": [{"name": k[:120], "ms_per_cube": us / 1e3 / cubes, "share": us / busy if busy else 0.0,
                     "calls_per_cube": c / cubes} for k, us, c in rows[:top]]}


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
            "token_agreement": token_agreement(ref.idx, out.idx),
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
    ap.add_argument("--kernels", type=int, default=0, metavar="N", help="also (with the parts) the N costliest "
                    "kernels per cube on CUDA (aten operators on the CPU), the device's busy time, launches per cube")
    ap.add_argument("--compile", action="store_true", help="also DAG + KV through compiled decoding steps (inductor; "
                    "on the CPU about a minute per batch size)")
    ap.add_argument("--graphs", action="store_true", help="CUDA: also DAG + KV and CFG + KV replayed from CUDA graphs "
                    "of the whole restoration, and the diffusion-style baseline from a graph")
    ap.add_argument("--channels-last", action="store_true", help="with --graphs: also the graphed DAG + KV in "
                    "channels-last memory format")
    ap.add_argument("--graph-ablations", nargs="?", const="all", default=None, metavar="LIST",
                    help="with --graphs: also the graphed DAG + KV without bf16 weight copies (no_weight_copies: "
                    "autocast's casts recorded in the graph) and with the VQ-VAE's group norms under autocast's fp32 "
                    "policy (autocast_norms, bf16 only); comma-separated, or all (the default with no value)")
    ap.add_argument("--variants", default=None, help="comma-separated of dag_kv, cfg_kv, dag_no_kv, "
                    f"diffusion_{DIFFUSION_STEPS}_steps: measure only these (default all; DAG + KV always)")
    ap.add_argument("--precisions", default=None, help="comma-separated of fp32, bf16 (default: both on CUDA, fp32 "
                    "on the CPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    if args.graphs and device.type != "cuda":
        ap.error("--graphs needs --device cuda (CUDA graphs)")
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    report: dict = {"preset": args.preset, "bands": args.bands, "device": args.device,
                    "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    flops = counted_tflops(args.preset, args.bands)
    report["counted_tflops_per_cube"] = flops
    print(f"preset {args.preset}, {args.bands} bands, device {report['device_name']}", flush=True)
    for key, tf in flops.items():
        print(f"  counted {key:<22} {tf:10.4f} TFLOPs/cube   ({tf / flops['dag_kv']:6.2f}× DAG+KV)")
    peak = next((p for k, p in BF16_PEAK_TFLOPS.items() if k in report["device_name"]), None)

    def show(label: str, key: str, bs: str, r: dict) -> None:
        """Print one measured figure as it comes (a long GPU run leaves what it measured); on CUDA add the achieved
        TFLOP/s against the counted FLOPs and their share of the bf16 peak to ``r``."""
        ms = r["seconds_per_cube"] * 1e3
        line = f"  {label} {key:<30} {bs:<9} {ms:10.2f} ms/cube {r['cubes_per_s']:9.2f} cubes/s"
        if "same_tokens" in r:
            repeat = r.get("eager_repeat_token_agreement", float("nan"))
            line += f" (first call {r['first_call_s']:.1f} s; tokens agree {r['token_agreement']:.4f} " \
                    f"(eager twice {repeat:.4f}), max |Δ| {r['max_abs_diff']:.2e})"
        elif "first_call_s" in r:
            line += f" (first call {r['first_call_s']:.1f} s)"
        if device.type == "cuda":
            base = key.split("_graphs")[0].removesuffix("_compiled")
            r["achieved_tflops"] = flops[base] / r["seconds_per_cube"]
            line += f" {r['achieved_tflops']:7.2f} TFLOP/s"
            if peak:
                r["fraction_of_bf16_peak"] = r["achieved_tflops"] / peak
                line += f" ({100 * r['fraction_of_bf16_peak']:.1f}% of bf16 peak)"
        print(line, flush=True)

    run = args.measure == "yes" or (args.measure == "auto" and (args.preset == "tiny" or device.type == "cuda"))
    if run:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        labels = args.precisions.split(",") if args.precisions else (
            ["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
        if any(label not in ("fp32", "bf16") for label in labels) or ("bf16" in labels and device.type != "cuda"):
            ap.error(f"--precisions: fp32, and bf16 on CUDA; got {args.precisions}")
        precisions = {label: label == "bf16" for label in labels}
        known = ("dag_kv", "cfg_kv", "dag_no_kv", f"diffusion_{DIFFUSION_STEPS}_steps")  # the keys of variants()
        only = None if args.variants is None else tuple({"dag_kv", *args.variants.split(",")})
        if only is not None and not set(only) <= set(known):
            ap.error(f"--variants: expected some of {', '.join(known)}; got {args.variants}")
        ablations = (() if args.graph_ablations is None else (*GRAPH_ABLATIONS, *MODEL_ABLATIONS)
                     if args.graph_ablations == "all" else tuple(args.graph_ablations.split(",")))
        if not set(ablations) <= {*GRAPH_ABLATIONS, *MODEL_ABLATIONS}:
            ap.error(f"--graph-ablations: expected some of {', '.join([*GRAPH_ABLATIONS, *MODEL_ABLATIONS])}, or all; "
                     f"got {args.graph_ablations}")
        report["measured"] = {}
        for label, bf16 in precisions.items():
            report["measured"][label] = measure(
                args.preset, args.bands, device, sizes, args.repeats, bf16, args.compile, args.graphs,
                args.channels_last, ablations, only,
                on_result=lambda key, bs, r, label=label: show(label, key, bs, r))
        if args.parts or args.kernels:
            report["parts_ms_per_cube"] = {}
            for label, bf16 in precisions.items():
                for bs in sizes:
                    parts, ops = measure_parts(args.preset, args.bands, device, bs, args.repeats, bf16, args.kernels)
                    report["parts_ms_per_cube"].setdefault(label, {})[f"batch_{bs}"] = parts
                    print(f"  {label} parts, batch {bs} (ms/cube): " + ", ".join(
                        f"{k} {v:.2f}" for k, v in parts.items()), flush=True)
                    if ops is not None:
                        report.setdefault("costliest_ops", {}).setdefault(label, {})[f"batch_{bs}"] = ops
                        print(f"  {label} kernels, batch {bs}: busy {ops['busy_ms_per_cube']:.2f} ms/cube, "
                              f"{ops['calls_per_cube']:.0f} calls/cube; costliest:", flush=True)
                        for r in ops["top"]:
                            print(f"    {r['ms_per_cube']:8.3f} ms {100 * r['share']:5.1f} % "
                                  f"{r['calls_per_cube']:7.1f}/cube  {r['name']}", flush=True)
        # time ratios at the first batch size: every variant against eager DAG + KV (and the graphed one, if any)
        first = f"batch_{sizes[0]}"
        report["measured_time_ratios"] = {}
        for label, m in report["measured"].items():
            for ref in ("dag_kv", "dag_kv_graphs"):
                if ref in m:
                    base = m[ref][first]["seconds_per_cube"]
                    ratios = {k: v[first]["seconds_per_cube"] / base for k, v in m.items() if first in v}
                    report["measured_time_ratios"].setdefault(label, {})[f"vs_{ref}"] = ratios
                    shown = {k: round(v, 2) for k, v in ratios.items()}
                    print(f"  time ratios vs {ref} ({label}, batch {sizes[0]}): {shown}")
    else:
        print("  (not measured on this device: counted FLOPs only; pass --measure yes to force)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
