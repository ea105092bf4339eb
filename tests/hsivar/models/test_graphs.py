"""CUDA graphs of whole restorations (:mod:`hsivar.models.graphs`): what can be checked without a GPU.

Recording and replay need CUDA: ``tests/hsivar/test_cuda.py`` checks that a replayed restoration equals the eager one
in every family, the padding of batches without their own graph and the Restorer's use of graphs, on a lent GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from hsivar.models.base import RestoreOutput
from hsivar.models.graphs import GraphedRestore, _copy_out
from hsivar.models.hsivar import HSIVAR
from hsivar.restore import Restorer


def test_graphs_refuse_a_model_that_is_not_on_a_cuda_device(tiny_model: HSIVAR) -> None:
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device; it is on cpu"):
        GraphedRestore(tiny_model)


def test_a_compiled_restorer_on_the_cpu_compiles_the_decoding_steps_instead(tiny_model: HSIVAR) -> None:
    restorer = Restorer(tiny_model, "cpu", compiled=True)
    try:
        assert restorer.graphs is None and tiny_model.var._compiled_step is not None
    finally:
        tiny_model.var.compile_steps(False)
    assert Restorer(tiny_model, "cpu").graphs is None


def test_outputs_are_copied_out_of_the_static_buffers_for_the_real_rows_only() -> None:
    """A replay's output is a copy of the first b rows of every tensor (lists of tensors too): the next replay
    overwrites the static buffers, padding rows are dropped, absent fields stay None."""
    static = RestoreOutput(cube=torch.rand(4, 2, 3, 3), task_weights=torch.rand(4, 6),
                           idx=[torch.arange(4)[:, None], torch.arange(16).view(4, 4)], latent=torch.rand(4, 1, 2, 2),
                           hidden_last=torch.rand(4, 4, 8), skips=None)
    out = _copy_out(static, 3)
    assert out.cube.shape == (3, 2, 3, 3) and [i.shape for i in out.idx] == [(3, 1), (3, 4)]
    assert out.skips is None and out.hidden is None and out.decoded is None
    assert torch.equal(out.cube, static.cube[:3]) and torch.equal(out.idx[1], static.idx[1][:3])
    static.cube.zero_()
    static.idx[1].zero_()
    assert out.cube.abs().sum() > 0 and out.idx[1].abs().sum() > 0  # copies, not views


def _unrecorded(model: torch.nn.Module, max_graphs: int = 16) -> GraphedRestore:
    """A GraphedRestore of a CPU model, built past the CUDA check, for its pure-Python parts."""
    graphed = object.__new__(GraphedRestore)
    graphed.model, graphed.device, graphed.max_graphs = model, torch.device("cpu"), max_graphs
    graphed.low_precision_weights, graphed._copies, graphed.recorded, graphed._failed = True, {}, {}, set()
    graphed._warned_eager = False
    return graphed


@pytest.mark.parametrize("family", ["hsivar", "restorevar", "varformer"])
def test_bf16_weight_copies_restore_as_autocast_does_and_are_put_back(family: str, switched_on: Callable) -> None:
    """Under bf16 autocast (here the CPU's), a model holding the graphs' bf16 copies of its linear and conv weights
    restores exactly as with its fp32 weights, which autocast casts to the same values; the quantiser keeps fp32; the
    fp32 parameters are back afterwards, also after an exception."""
    from hsivar.models.build import build_model
    from hsivar.presets import preset

    torch.manual_seed(0)
    model = switched_on(build_model(preset("tiny", bands=8, family=family))).eval()
    before = {name: p for name, p in model.named_parameters()}
    graphed = _unrecorded(model)
    lq = torch.rand(2, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        ref = model.restore(lq, "auto", estimate01=lq)
        with graphed._weights(torch.bfloat16):
            assert model.vqvae.decoder.conv_out.weight.dtype == torch.bfloat16
            assert all(p.dtype == torch.float32 for p in model.vqvae.quantize.parameters())
            out = model.restore(lq, "auto", estimate01=lq)
    assert all(torch.equal(a, b) for a, b in zip(ref.idx, out.idx))
    assert torch.equal(ref.cube, out.cube) and torch.equal(ref.decoded, out.decoded)
    with pytest.raises(RuntimeError, match="boom"), graphed._weights(torch.bfloat16):
        raise RuntimeError("boom")
    assert all(p is before[name] for name, p in model.named_parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_past_max_graphs_a_batch_takes_the_smallest_recorded_graph_of_its_key_that_holds_it(
        tiny_model: HSIVAR) -> None:
    from hsivar.models.graphs import GraphKey

    graphed = _unrecorded(tiny_model, max_graphs=3)
    key = GraphKey(batch=1, auto=True, estimate=True, guidance="dag", cfg_scale=0.0, refine=True, autocast=None)
    for batch in (8, 4):
        graphed.recorded[GraphKey(**{**key.__dict__, "batch": batch})] = f"graph of {batch}"  # type: ignore[assignment]
    graphed.recorded[GraphKey(**{**key.__dict__, "batch": 2, "auto": False})] = "weights graph"  # type: ignore[assignment]
    lq = torch.zeros(1)
    assert graphed._graph_for(key, lq, None, None) == ("graph of 4", 4)
    assert graphed._graph_for(GraphKey(**{**key.__dict__, "batch": 5}), lq, None, None) == ("graph of 8", 8)
    assert graphed._graph_for(GraphKey(**{**key.__dict__, "batch": 9}), lq, None, None) is None  # eager
    assert graphed._graph_for(GraphKey(**{**key.__dict__, "batch": 4}), lq, None, None) == ("graph of 4", 4)
    graphed._failed.add(GraphKey(**{**key.__dict__, "batch": 3, "refine": False}))
    assert graphed._graph_for(GraphKey(**{**key.__dict__, "batch": 3, "refine": False}), lq, None, None) is None
