"""CUDA graphs of whole restorations (:mod:`hsivar.models.graphs`): what can be checked without a GPU.

Recording and replay need CUDA: ``tests/hsivar/test_cuda.py`` checks that a replayed restoration equals the eager one
in every family, the padding of batches without their own graph and the Restorer's use of graphs, on a lent GPU.
"""

from __future__ import annotations

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
