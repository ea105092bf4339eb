"""Where two restorations of the same tiles first part: every operator compared, call by call, by fingerprints.

On an H200 the paper preset's restoration replayed from a CUDA graph (:class:`hsivar.models.graphs.GraphedRestore`)
gave 0.15–0.27 % other tokens than the eager restoration at batch ≥ 32 (docs/benchmarks.md), while the eager path
agrees with itself and the graph agrees at batch 1 and 8. This bench finds the operator that first computes
differently. A :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every aten operator of a restoration
after autocast (the GEMM inside a module's ``F.linear``, the attention kernel, each convolution and norm) and keeps,
for each, a fingerprint of its tensor inputs and of its first output (exact integer sums of their bit patterns; a
few bytes per call, so any batch size fits). Views, casts, copies and fresh allocations are left out: they compute
nothing that could round otherwise, and casts differ in number between autocast and the graph's weight copies.

The two restorations, ``--against``:

* ``graph`` (CUDA, the default there): an eager restoration and the graph's (the fingerprints computed while
  recording are filled by the replay);
* ``no-mkldnn`` (the CPU's default): an eager restoration and one with oneDNN off, so that convolutions take
  PyTorch's own kernels: a CPU case of "the same operator, another kernel";
* ``eager``: the eager restoration twice (a control: every call equal).

It reports the share of equal tokens, the first call whose output differs, and the calls whose inputs were equal
but whose output was not (``roots``: the operators that compute differently themselves). The first root is then
re-run alone on its recorded arguments (rebuilt with their strides, storage offset and so alignment), under each
condition that could explain it — on CUDA eagerly, on a side stream and replayed from a fresh graph, under cuBLAS
and under cuBLASLt; on the CPU with oneDNN on and off — each said to give the first restoration's output, the
second's, or neither.

    python bench/graph_parity.py --preset paper --device cuda --batch-size 32
    python bench/graph_parity.py --batch-size 2                     # CPU, tiny preset, oneDNN on vs off

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from _common import bench_parser, token_agreement
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from hsivar.models.graphs import GraphedRestore, record
from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset

SKIPPED = ("aten._to_copy", "aten.copy_", "aten.empty", "aten.new_empty", "aten.detach", "aten.lift_fresh",
           "aten.alias", "aten.clone", "aten.contiguous", "aten._local_scalar_dense")
"""Operators not fingerprinted (besides views): casts and copies, allocations (their output is uninitialised)."""

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """(3,) int64 on ``t``'s device: the sum of its elements' bit patterns, of their squares and of them weighted by
    position (mod 65521), wrapping in int64. Equal bits give equal fingerprints; one changed bit changes the first."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(3, dtype=torch.int64, device=t.device)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    bits = (flat.to(torch.int64) if flat.dtype == torch.bool
            else flat.contiguous().view(_BITS[flat.element_size()]).to(torch.int64))
    w = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64).remainder_(65521).add_(1)
    return torch.stack([bits.sum(), (bits * bits).sum(), w.mul_(bits).sum()])


def _tensors(tree: object) -> list[torch.Tensor]:
    return [v for v in tree_flatten(tree)[0] if isinstance(v, torch.Tensor)]


@dataclass
class Op:
    """One fingerprinted operator call."""

    name: str
    inputs: torch.Tensor  # (n, 3) int64 on the output's device: its tensor inputs on that device
    host_inputs: list[list[int]]  # the fingerprints of its inputs on another device (a CPU scalar, say)
    layouts: list[tuple]  # of every tensor input: (shape, strides, storage offset, address mod 256)
    output: torch.Tensor  # (3,) int64: its first tensor output
    shape: list[int]  # of that output


def _layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.stride(), t.storage_offset(), t.data_ptr() % 256


class Fingerprints(TorchDispatchMode):
    """Fingerprints every computing aten operator called under it into ``ops``; with ``capturing_only``, only those
    called while a CUDA graph records (not a graph's eager warm-up calls). With ``keep`` = i, only call i is
    fingerprinted (the others are counted) and its arguments, copied with their layout, are kept in ``kept`` as
    (operator, args, kwargs)."""

    def __init__(self, capturing_only: bool = False, keep: int | None = None) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.capturing_only, self.keep = capturing_only, keep
        self.kept: tuple[object, tuple, dict] | None = None

    def __torch_dispatch__(self, func: object, types: object, args: tuple = (), kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        name = str(func)
        if (func.is_view or name.startswith(SKIPPED)  # type: ignore[attr-defined]
                or (self.capturing_only and not torch.cuda.is_current_stream_capturing())):
            return func(*args, **kwargs)  # type: ignore[operator]
        if self.keep is not None and self.keep != len(self.ops):  # only counted
            out = func(*args, **kwargs)  # type: ignore[operator]
            if _tensors(out):
                self.ops.append(Op(name, torch.zeros(0, 3), [], [], torch.zeros(3), []))
            return out
        if self.keep is not None:
            self.kept = (func, tree_map(_same_layout, args), tree_map(_same_layout, kwargs))
        tensors = _tensors((args, kwargs))
        fps = [fingerprint(t) for t in tensors]
        layouts = [_layout(t) for t in tensors]
        out = func(*args, **kwargs)  # type: ignore[operator]
        first = next(iter(_tensors(out)), None)
        if first is not None:
            # inputs on another device than the output (a CPU scalar) stay there: a copy to the GPU while a graph
            # records would break the recording
            here = [fp for t, fp in zip(tensors, fps) if t.device == first.device]
            away = [fp.tolist() for t, fp in zip(tensors, fps) if t.device != first.device and t.device.type == "cpu"]
            self.ops.append(Op(name, torch.stack(here) if here else torch.zeros(0, 3, dtype=torch.int64,
                                                                                 device=first.device),
                               away, layouts, fingerprint(first), list(first.shape)))
        return out


def _same_layout(v: object) -> object:
    """A tensor's whole storage copied and viewed as the tensor is (its shape, strides, also zero ones, and offset,
    so its address has the same alignment); anything else as it is."""
    if not isinstance(v, torch.Tensor):
        return v
    whole = torch.empty(0, dtype=v.dtype, device=v.device).set_(v.untyped_storage()).clone()
    return whole.as_strided(v.shape, v.stride(), v.storage_offset())


def compare(first: list[Op], second: list[Op]) -> dict:
    """Two restorations' operator calls side by side; → counts, the first differing call and the calls that compute
    differently on equal inputs (``roots``, at most 20), each with its index, operator, output shape and whether
    its inputs' layouts were the same too. Should the two call other operators from some call on, the calls before it
    are compared and ``mismatch`` says where and which."""
    report: dict = {"calls": len(first), "second_calls": len(second), "mismatch": None, "differing": 0,
                    "first_differing": None, "roots": []}
    n = next((i for i, (a, b) in enumerate(zip(first, second)) if a.name != b.name), min(len(first), len(second)))
    if n < max(len(first), len(second)):
        report["mismatch"] = {"at": n, "first": [o.name for o in first[max(n - 2, 0):n + 3]],
                              "second": [o.name for o in second[max(n - 2, 0):n + 3]]}
    for i, (a, b) in enumerate(zip(first[:n], second[:n])):
        if torch.equal(a.output, b.output):
            continue
        report["differing"] += 1
        entry = {"index": i, "op": a.name, "shape": a.shape,
                 "inputs_equal": (a.inputs.shape == b.inputs.shape and torch.equal(a.inputs, b.inputs)
                                  and a.host_inputs == b.host_inputs),
                 "layouts_equal": a.layouts == b.layouts}
        if report["first_differing"] is None:
            report["first_differing"] = entry
        if entry["inputs_equal"] and len(report["roots"]) < 20:
            report["roots"].append(entry)
    return report


def conditions(device: torch.device) -> dict[str, Callable[[Callable[[], object]], object]]:
    """The ways to re-run one operator (name → runner of a call): on CUDA eagerly, on a side stream and replayed
    from a fresh graph, under cuBLAS and cuBLASLt; on the CPU with oneDNN on and off."""
    if device.type != "cuda":
        def mkldnn(enabled: bool) -> Callable[[Callable[[], object]], object]:
            def run(call: Callable[[], object]) -> object:
                with _onednn(enabled):
                    return call()
            return run
        return {"onednn_on": mkldnn(True), "onednn_off": mkldnn(False)}

    def side_stream(call: Callable[[], object]) -> object:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            out = call()
        torch.cuda.current_stream(device).wait_stream(side)
        return out

    def graphed(call: Callable[[], object]) -> object:
        graph, out = record(call, device)
        graph.replay()
        torch.cuda.synchronize(device)  # read while the graph is alive
        return out

    out = {}
    for library in ("cublas", "cublaslt"):
        for how, runner in (("eager", lambda call: call()), ("side_stream", side_stream), ("graph", graphed)):
            out[f"{library}_{how}"] = _under_library(library, runner)
    return out


def _under_library(library: str, runner: Callable[[Callable[[], object]], object]
                   ) -> Callable[[Callable[[], object]], object]:
    def run(call: Callable[[], object]) -> object:
        before = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library(library)
        try:
            return runner(call)
        finally:
            torch.backends.cuda.preferred_blas_library(before)
    return run


def isolate(kept: tuple[object, tuple, dict], first: Op, second: Op, device: torch.device) -> dict[str, str]:
    """The kept operator call re-run alone under each of :func:`conditions`, on fresh copies of its arguments each
    time; → for each, "first" (the first restoration's output), "second", or "neither"."""
    func, pristine_args, pristine_kwargs = kept
    verdicts = {}
    for name, run in conditions(device).items():
        args, kwargs = tree_map(_same_layout, pristine_args), tree_map(_same_layout, pristine_kwargs)
        out = run(lambda: func(*args, **kwargs))  # type: ignore[operator]  # noqa: B023 (called at once)
        fp = fingerprint(_tensors(out)[0]).to(first.output.device)
        verdicts[name] = ("first" if torch.equal(fp, first.output) else "second" if torch.equal(fp, second.output)
                          else "neither")
    return verdicts


@contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    """oneDNN (the CPU's convolution library) on or off within the block."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def main() -> None:
    """Parse arguments, compare two restorations of the same tiles, print the findings, end with one JSON line."""
    ap = bench_parser(__doc__)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--against", choices=("graph", "no-mkldnn", "eager"), default=None,
                    help="the second restoration (default: graph on CUDA, no-mkldnn on the CPU)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    against = args.against or ("graph" if device.type == "cuda" else "no-mkldnn")
    if (against == "graph") != (device.type == "cuda") and against != "eager":
        ap.error(f"--against {against} needs --device {'cuda' if against == 'graph' else 'cpu'}")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else None

    def autocast() -> AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    torch.manual_seed(0)
    with torch.device(device):
        model = HSIVAR(preset(args.preset, bands=args.bands)).eval()
    x = torch.rand(args.batch_size, *model.cfg.cube_shape, device=device)
    first_fp, second_fp = Fingerprints(), Fingerprints(capturing_only=against == "graph")
    with autocast(), torch.no_grad():
        with first_fp:
            ref = model.restore(x, task="auto")
        with second_fp, _onednn(False) if against == "no-mkldnn" else nullcontext():
            if against == "graph":
                graphed = GraphedRestore(model)
                out = graphed(x, "auto")
                if not graphed.recorded or graphed._failed:
                    raise RuntimeError("the restoration was not recorded into a graph (see the log): nothing compared")
            else:
                out = model.restore(x, task="auto")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    report = {"preset": args.preset, "bands": args.bands, "device": args.device, "precision": precision,
              "batch_size": args.batch_size, "against": against,
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "token_agreement": token_agreement(ref.idx, out.idx),
              **compare(first_fp.ops, second_fp.ops)}
    print(f"{args.preset}, batch {args.batch_size}, {precision}, eager vs {against}: {report['calls']} operator calls,"
          f" {report['differing']} differ; tokens {100 * report['token_agreement']:.3f} % equal", flush=True)
    if report["mismatch"]:
        print(f"  the two called other operators from call {report['mismatch']}", flush=True)
    print(f"  first differing call: {report['first_differing']}", flush=True)
    for r in report["roots"][:8]:
        print(f"  computes differently on equal inputs: {r}", flush=True)
    print(json.dumps(report), flush=True)  # what was found, should re-running the first root fail or run out of time
    if report["roots"]:
        i = report["roots"][0]["index"]
        try:
            keeper = Fingerprints(keep=i)
            with autocast(), torch.no_grad(), keeper:  # the eager restoration again, keeping the root's arguments
                model.restore(x, task="auto")
            if keeper.kept is None or not torch.equal(keeper.ops[i].output, first_fp.ops[i].output):
                raise RuntimeError("the eager restoration did not repeat itself up to the first root")
            report["isolated"] = {"op": report["roots"][0]["op"],
                                  "verdicts": isolate(keeper.kept, first_fp.ops[i], second_fp.ops[i], device)}
        except Exception as e:  # noqa: BLE001 (a diagnostic: say what failed, keep what was found)
            report["isolated"] = {"op": report["roots"][0]["op"], "error": repr(e)}
        print(f"  the first re-run alone: {report['isolated']}", flush=True)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
