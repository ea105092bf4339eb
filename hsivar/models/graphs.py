"""Whole restorations replayed as CUDA graphs: one launch per batch of tiles instead of thousands.

On a GPU, greedy restoration of a small batch is bound by kernel launches, not arithmetic: the paper preset's
10 scales × 16 blocks plus the convolutional encoder and decoder launch several thousand kernels per call, each
costing the host microseconds that the GPU spends idle. Greedy decoding has static shapes (each scale's p_k² tokens,
the KV cache growing by known amounts) and never reads a value back to the host (argmax, the codebook lookup, φ and
the next scale's input stay on the device), so the whole of :meth:`~hsivar.models.base.RestorationModel.restore` —
condition encoder, task classifier, the scale loop with its KV cache, refiner, decoder, fusion head — is recorded
into a :class:`torch.cuda.CUDAGraph` and replayed with one launch.

A graph is recorded on first use of a :class:`GraphKey` (batch size, task kind, first estimate present, guidance,
its scale under CFG, refine, precision) and kept; all graphs share one memory pool (they never run at once). Past
``max_graphs`` graphs a batch is padded to the smallest recorded batch size of its key that holds it (padding rows
repeat the last tile; every operation is per tile, so the real rows do not change), else it runs eagerly, as does a
key whose recording failed (logged once). Outputs are copied out of the graph's static buffers, so a caller may keep
them across calls. A lock serialises calls: a graph's buffers serve one call at a time, and while a graph records,
the model holds the weight copies below — another thread must not run the model eagerly outside autocast then.

Under bf16 autocast (the Restorer's on a GPU) a graph reads bf16 copies of the linear and convolution weights, taken
at the first recording (``low_precision_weights``): autocast casts every fp32 weight to bf16 at each use, and inside
a graph its cast cache must stay off, so the paper preset's transformer would otherwise re-read and re-cast its 206 M
weights at every scale. The copies hold what autocast's casts compute, so the outputs are the same. The quantiser's
weights are not copied: its encoding path runs in fp32 with autocast off, where a bf16 weight would not be cast back.
The copies cost half the fp32 weights' memory again. A model whose weights change after the first recording needs a
new :class:`GraphedRestore`.

Task ``"auto"`` runs the classifier inside the graph; any other task spec is resolved to weights (B, N) eagerly
(a mixture or a name needs a host-built tensor, which a graph cannot record) and fed to the graph as an input.
Sampled decoding (``Sampling.greedy`` False) is not recorded: callers run it eagerly.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch
from torch import nn

from hsivar.models.base import Guidance, RestorationModel, RestoreOutput
from hsivar.models.dag import TaskSpec

log = logging.getLogger(__name__)

WARMUP_CALLS = 2
"""Eager calls on a side stream before recording (cuBLAS / cuDNN pick and initialise their kernels there: a first
call's one-off work must not be recorded)."""

LOW_PRECISION_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The modules whose weights a graph recorded under autocast reads as low-precision copies."""


@dataclass(frozen=True)
class GraphKey:
    """What fixes a recorded graph's shapes and code path."""

    batch: int
    auto: bool  # task "auto": the classifier runs inside the graph; else the weights (B, N) are an input
    estimate: bool  # a first estimate x0 is an input
    guidance: Guidance
    cfg_scale: float  # 0 under "dag", which does not read it
    refine: bool
    autocast: torch.dtype | None  # the CUDA autocast dtype in force when called, None without autocast


@dataclass
class _Recorded:
    """One recorded restoration: the graph, its static inputs and its static output."""

    graph: torch.cuda.CUDAGraph
    lq: torch.Tensor  # (B, C, S, S)
    weights: torch.Tensor | None  # (B, N), None for "auto"
    estimate: torch.Tensor | None  # (B, C, S, S)
    out: RestoreOutput


T = TypeVar("T")


def record(run: Callable[[], T], device: torch.device, pool: tuple[int, int] | None = None
           ) -> tuple[torch.cuda.CUDAGraph, T]:
    """One call of ``run`` (static inputs, no host synchronisation) recorded into a CUDA graph on ``device``, after
    :data:`WARMUP_CALLS` eager calls on the same side stream; ``pool``: a memory pool shared with other graphs.

    Returns:
        (the graph, which has not run yet: replay it; ``run``'s output from the recording — static buffers that
        each replay overwrites).
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # Freeing a graph is a CUDA call that invalidates a recording in progress: collect the garbage first (an earlier
    # graph left in a reference cycle), and let no collection run while recording.
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:  # thread_local: CUDA calls of other threads (a copy to the host, say) do not break the recording
        with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            out = run()
    finally:
        if collecting:
            gc.enable()
    return graph, out


def _copy_out(out: RestoreOutput, rows: int) -> RestoreOutput:
    """A copy of the first ``rows`` tiles of every tensor of ``out`` (a graph's static output is overwritten by its
    next replay)."""
    def take(v: object) -> object:
        if isinstance(v, torch.Tensor):
            return v[:rows].clone()
        if isinstance(v, list):
            return [take(t) for t in v]
        return v
    return replace(out, **{f.name: take(getattr(out, f.name)) for f in fields(out)})


class GraphedRestore:
    """:meth:`RestorationModel.restore` with greedy decoding, replayed from CUDA graphs (see the module docstring)."""

    def __init__(self, model: RestorationModel, max_graphs: int = 16, low_precision_weights: bool = True) -> None:
        """Record ``model``'s restorations (its parameters on a CUDA device, in eval mode) into at most ``max_graphs``
        graphs; ``low_precision_weights``: see the module docstring.

        Raises:
            ValueError: the model is not on a CUDA device, or decodes through ``torch.compile``'d steps (a graph
                cannot record them).
        """
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {device}")
        if getattr(model, "var", None) is not None and getattr(model.var, "_compiled_step", None) is not None:
            raise ValueError("the model decodes through compiled steps (compile_steps); turn them off before "
                             "recording CUDA graphs of it")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.model, self.device, self.max_graphs = model, device, max_graphs
        self.low_precision_weights = low_precision_weights
        self._copies: dict[torch.dtype, dict[tuple[nn.Module, str], nn.Parameter]] = {}
        self.recorded: dict[GraphKey, _Recorded] = {}
        self._failed: set[GraphKey] = set()
        with torch.cuda.device(device):
            self._pool = torch.cuda.graph_pool_handle()
        self._warned_eager = False
        self._lock = threading.Lock()

    def _autocast(self) -> torch.dtype | None:
        return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None

    @contextmanager
    def _weights(self, dtype: torch.dtype | None) -> Iterator[None]:
        """A context in which the linear and convolution modules (but the quantiser's) hold ``dtype`` copies of their
        fp32 weights (made on first use and kept: a graph recorded inside reads them); nothing changes for None or
        without ``low_precision_weights``."""
        if dtype is None or not self.low_precision_weights:
            yield
            return
        if dtype not in self._copies:
            quantizer = {id(m) for m in self.model.vqvae.quantize.modules()}
            self._copies[dtype] = {
                (m, name): nn.Parameter(p.detach().to(dtype), requires_grad=False)
                for m in self.model.modules() if isinstance(m, LOW_PRECISION_MODULES) and id(m) not in quantizer
                for name, p in m.named_parameters(recurse=False) if p.dtype == torch.float32}
        saved = {}
        try:
            for (m, name), copy in self._copies[dtype].items():
                saved[(m, name)] = m._parameters[name]
                m._parameters[name] = copy
            yield
        finally:
            for (m, name), p in saved.items():
                m._parameters[name] = p

    def _record(self, key: GraphKey, lq: torch.Tensor, weights: torch.Tensor | None,
                estimate: torch.Tensor | None) -> _Recorded:
        """Warm up on a side stream, then record one restoration of these static inputs (on the model's device).

        Raises:
            ValueError: the model is in training mode (dropout and drop-path would be recorded).
        """
        model = self.model
        if model.training:
            raise ValueError("CUDA graphs record a model in eval mode; call model.eval() first")

        def run() -> RestoreOutput:
            # the autocast cache must be off while recording: cached casts of the weights would be freed at the
            # context's exit while the graph still reads them
            ctx = (torch.autocast("cuda", dtype=key.autocast, cache_enabled=False) if key.autocast is not None
                   else torch.autocast("cuda", enabled=False))
            with ctx:
                return model.restore(lq, "auto" if weights is None else weights, guidance=key.guidance,
                                     cfg_scale=key.cfg_scale, refine=key.refine, kv_cache=True, estimate01=estimate)

        with self._weights(key.autocast):
            graph, out = record(run, self.device, self._pool)
        return _Recorded(graph, lq, weights, estimate, out)

    def _graph_for(self, key: GraphKey, lq: torch.Tensor, weights: torch.Tensor | None,
                   estimate: torch.Tensor | None) -> tuple[_Recorded, int] | None:
        """The graph to replay for ``key`` and its batch size (recorded now if there is room); None: run eagerly."""
        if key in self.recorded:
            return self.recorded[key], key.batch
        if key in self._failed:
            return None
        if len(self.recorded) < self.max_graphs:
            try:
                self.recorded[key] = self._record(key, lq.clone(), None if weights is None else weights.clone(),
                                                  None if estimate is None else estimate.clone())
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError as err:  # a recording the driver refused (invalidated, an unsupported call)
                log.warning("CUDA graphs: recording %s failed (%s); restoring such batches eagerly", key, err)
                self._failed.add(key)
                return None
            return self.recorded[key], key.batch
        bigger = [k for k in self.recorded if k.batch > key.batch and replace(k, batch=key.batch) == key]
        if bigger:
            padded = min(bigger, key=lambda k: k.batch)
            return self.recorded[padded], padded.batch
        if not self._warned_eager:
            log.warning("CUDA graphs: %d recorded, none for %s; restoring such batches eagerly", len(self.recorded),
                        key)
            self._warned_eager = True
        return None

    @torch.inference_mode()
    def __call__(self, lq01: torch.Tensor, task: TaskSpec = "auto", *, guidance: Guidance = "dag",
                 cfg_scale: float = 1.5, refine: bool = True, estimate01: torch.Tensor | None = None) -> RestoreOutput:
        """What ``model.restore(lq01, task, guidance=…, cfg_scale=…, refine=…, estimate01=…)`` returns with greedy
        decoding, from a replayed graph; under the CUDA autocast in force (bf16 on the GPU, as the Restorer runs).

        Args:
            lq01: (B, C, S, S) degraded tiles in [0, 1], on the model's device.
            task: as :meth:`RestorationModel.restore`.
            estimate01: (B, C, S, S) the tiles' first estimate x0, or None.
        Returns:
            the :class:`RestoreOutput` of the B tiles, every tensor a copy owned by the caller.
        """
        self.model.check_input(lq01)
        b = lq01.shape[0]
        auto = isinstance(task, str) and task == "auto"
        key = GraphKey(b, auto, estimate01 is not None, guidance, float(cfg_scale) if guidance == "cfg" else 0.0,
                       refine, self._autocast())
        with self._lock, torch.cuda.device(self.device):
            weights = None if auto else self.model.dag.weights(task, lq01).float()
            chosen = self._graph_for(key, lq01, weights, estimate01)
            if chosen is None:
                return self.model.restore(lq01, task, guidance=guidance, cfg_scale=cfg_scale, refine=refine,
                                          estimate01=estimate01)
            return self._replay(*chosen, lq01, weights, estimate01)

    def _replay(self, rec: _Recorded, rows: int, lq01: torch.Tensor, weights: torch.Tensor | None,
                estimate01: torch.Tensor | None) -> RestoreOutput:
        """Fill ``rec``'s static inputs (the b real tiles, then the last one repeated up to ``rows``), replay, copy out
        the b tiles."""
        b = lq01.shape[0]

        def fill(static: torch.Tensor, value: torch.Tensor) -> None:  # the real rows, then the last one repeated
            static[:b].copy_(value)
            if rows > b:
                static[b:].copy_(value[-1:].expand(rows - b, *value.shape[1:]))

        fill(rec.lq, lq01)
        if rec.weights is not None:
            fill(rec.weights, weights)
        if rec.estimate is not None:
            fill(rec.estimate, estimate01)
        rec.graph.replay()
        return _copy_out(rec.out, b)
