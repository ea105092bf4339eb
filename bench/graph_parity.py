"""Where one restoration first differs from another: the token path's module calls compared in call order.

On an H200 the paper preset's restoration replayed from a CUDA graph (:class:`hsivar.models.graphs.GraphedRestore`)
gave 0.15–0.27 % other tokens than the eager restoration at batch ≥ 32 (docs/benchmarks.md), while the eager path
agrees with itself and the graph agrees at batch 1 and 8. This bench finds the operation that first computes
differently. It records the input and output of every Linear, convolution, norm and embedding module and the output
of every attention module of the token path (condition encoder, guidance, transformer, the quantiser's φ; ``--under``)
in two restorations of the same tiles:

* ``--against graph`` (CUDA): an eager restoration and the graph's (the hooks' copies made while recording are
  filled by the replay);
* ``--against single``: the batch's first tile restored in the batch and on its own (does a batch change a tile's
  result? On the CPU this is the only comparison).

It reports the first call whose output differs, the calls whose input was equal but whose output was not (the
operations that compute differently themselves) and, for the first of those on CUDA, that module re-run alone on
the recorded input: eagerly, on a side stream and recorded into a fresh graph, under each preferred BLAS library
(cuBLAS, cuBLASLt), each said to equal the first restoration's output, the second's, or neither.

    python bench/graph_parity.py --preset paper --device cuda --batch-size 32
    python bench/graph_parity.py --against single --batch-size 4          # CPU, tiny preset

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from _common import bench_parser
from torch import nn

from hsivar.models.graphs import GraphedRestore, record
from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset

LEAVES = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm, nn.Embedding)
"""Module kinds recorded with their input (re-run alone when they compute differently)."""


@dataclass
class Call:
    """One recorded module call."""

    name: str
    module: nn.Module
    args: tuple | None  # the positional arguments, tensors copied (leaf modules only)
    output: torch.Tensor


class Recorder:
    """Records every call of the leaf modules (:data:`LEAVES`) and the attention modules of a model whose qualified
    name is one of ``under`` or below it into ``calls``; with ``capturing_only``, only the calls made while a CUDA
    graph records (not a graph's eager warm-up calls)."""

    def __init__(self, model: nn.Module, under: tuple[str, ...]) -> None:
        self.calls: list[Call] = []
        self.capturing_only = False
        self._handles = [m.register_forward_hook(self._hook(name, isinstance(m, LEAVES)))
                         for name, m in model.named_modules()
                         if any(name == u or name.startswith(u + ".") for u in under)
                         and (isinstance(m, LEAVES) or name.endswith("attn"))]

    def _hook(self, name: str, leaf: bool) -> Callable[[nn.Module, tuple, object], None]:
        def copy(v: object) -> object:
            return v.detach().clone() if isinstance(v, torch.Tensor) else v

        def hook(m: nn.Module, args: tuple, out: object) -> None:
            if self.capturing_only and not torch.cuda.is_current_stream_capturing():
                return
            if isinstance(out, torch.Tensor):
                self.calls.append(Call(name, m, tuple(copy(a) for a in args) if leaf else None, copy(out)))
        return hook

    def remove(self) -> None:
        """Take the hooks off the model."""
        for h in self._handles:
            h.remove()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape, dtype and bits."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| (inf for other shapes)."""
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("inf")


def compare(first: list[Call], second: list[Call], rows: int | None) -> dict:
    """The calls of two restorations side by side (``rows``: compare only the first ``rows`` rows of ``first``'s
    tensors, the batch against a single tile); → counts, the first differing call, and the calls that compute
    differently on an equal input (``roots``, at most 20, with their indices)."""
    def view(t: torch.Tensor) -> torch.Tensor:
        return t[:rows] if rows is not None else t

    if [c.name for c in first] != [c.name for c in second]:
        raise RuntimeError("the two restorations called the recorded modules in another order")
    report: dict = {"calls": len(first), "differing": 0, "first_differing": None, "roots": []}
    for i, (a, b) in enumerate(zip(first, second)):
        if same(view(a.output), b.output):
            continue
        report["differing"] += 1
        entry = {"index": i, "name": a.name, "kind": type(a.module).__name__, "shape": list(b.output.shape),
                 "dtype": str(b.output.dtype), "max_abs_diff": max_diff(view(a.output), b.output)}
        if a.args is not None:
            ins = [(view(x), y) for x, y in zip(a.args, b.args) if isinstance(x, torch.Tensor)]
            entry["input_equal"] = all(same(x, y) for x, y in ins)
            entry["input_shapes"] = [list(y.shape) for _, y in ins]
        if report["first_differing"] is None:
            report["first_differing"] = entry
        if entry.get("input_equal") and len(report["roots"]) < 20:
            report["roots"].append(entry)
    return report


def isolate(call: Call, eager_out: torch.Tensor, graph_out: torch.Tensor, device: torch.device,
            dtype: torch.dtype | None) -> dict[str, dict[str, str]]:
    """``call``'s module re-run alone on its recorded arguments (CUDA, under the autocast ``dtype`` if any): eagerly,
    on a side stream and replayed from a fresh graph, under each preferred BLAS library; → for each, whether it
    equals the eager restoration's output, the graph's, or neither."""
    def verdict(out: torch.Tensor) -> str:
        if same(out, eager_out):
            return "= eager"
        if same(out, graph_out):
            return "= graph"
        return f"neither (max |Δ| {max_diff(out, eager_out):.3g} from eager)"

    def run() -> torch.Tensor:
        ctx = torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype else nullcontext()
        with ctx, torch.no_grad():
            return call.module(*call.args)

    before = torch.backends.cuda.preferred_blas_library()
    out: dict[str, dict[str, str]] = {}
    try:
        for library in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(library)
            eager = run()
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                on_side = run()
            torch.cuda.current_stream(device).wait_stream(side)
            graph, static = record(run, device)
            graph.replay()
            torch.cuda.synchronize(device)
            out[library] = {"eager": verdict(eager), "side_stream": verdict(on_side), "graph": verdict(static)}
    finally:
        torch.backends.cuda.preferred_blas_library(before)
    return out


def main() -> None:
    """Parse arguments, compare two restorations of the same tiles, print the findings, end with one JSON line."""
    ap = bench_parser(__doc__)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--against", choices=("graph", "single"), default=None,
                    help="graph: eager vs CUDA graph (CUDA, the default there); single: the batch's first tile in the "
                         "batch vs on its own (the default on the CPU)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--under", default="cond,dag,var,vqvae.quantize",
                    help="comma-separated module names whose calls (and their submodules') are recorded")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    against = args.against or ("graph" if device.type == "cuda" else "single")
    if against == "graph" and device.type != "cuda":
        ap.error("--against graph needs --device cuda")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else None
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    torch.manual_seed(0)
    with torch.device(device):
        model = HSIVAR(preset(args.preset, bands=args.bands)).eval()
    x = torch.rand(args.batch_size, *model.cfg.cube_shape, device=device)
    recorder = Recorder(model, tuple(args.under.split(",")))
    with ctx, torch.no_grad():
        ref = model.restore(x, task="auto")
        first, recorder.calls = recorder.calls, []
        if against == "graph":  # the copies made while recording hold the replay's values once it has run
            recorder.capturing_only = True
            out, rows = GraphedRestore(model)(x, "auto"), None
        else:
            out, rows = model.restore(x[:1], task="auto"), 1
        second = recorder.calls
    recorder.remove()
    if len(second) != len(first):
        raise RuntimeError(f"{len(first)} calls recorded in the first restoration, {len(second)} in the second")
    if device.type == "cuda":
        torch.cuda.synchronize(device)

    tokens = [(a[:rows] if rows else a) for a in ref.idx]
    report = {"preset": args.preset, "bands": args.bands, "device": args.device, "precision": precision,
              "batch_size": args.batch_size, "against": against,
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "token_agreement": float(sum(int((a == b).sum()) for a, b in zip(tokens, out.idx))
                                       / sum(b.numel() for b in out.idx)),
              **compare(first, second, rows)}
    print(f"{args.preset}, batch {args.batch_size}, {precision}, eager vs {against}: {report['calls']} calls recorded,"
          f" {report['differing']} differ; tokens {100 * report['token_agreement']:.3f} % equal")
    print(f"  first differing call: {report['first_differing']}")
    for r in report["roots"][:5]:
        print(f"  computes differently on an equal input: {r}")
    if report["roots"] and against == "graph":
        root = report["roots"][0]
        report["isolated"] = isolate(first[root["index"]], first[root["index"]].output,
                                     second[root["index"]].output, device, dtype)
        print(f"  {root['name']} re-run alone: {report['isolated']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
