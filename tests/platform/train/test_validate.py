"""Rank-0 validation without Ray: the protocol read in the worker, and what each stage checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hsivar_platform.data import list_cubes, protocol_rows
from hsivar_platform.train.validate import val_examples, validate

from hsivar.degrade import protocol_cases
from hsivar.models.build import build_model
from hsivar.presets import preset
from hsivar.synth import make_demo_dataset

BANDS = 8
SIX = ("gaussian", "complex", "blur", "sr", "inpaint", "bandmiss")


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 40-px validation cubes (.npy) and a file that is not a cube, sorted between them."""
    out = tmp_path_factory.mktemp("val8")
    make_demo_dataset(str(out), n_train=1, n_val=2, n_test=1, size=40, bands=BANDS, format="npy", seed=3)
    (out / "val" / "cube_0000_broken.npy").write_bytes(b"not an array")
    return out / "val"


def test_the_worker_reads_the_protocol_and_leaves_out_what_it_cannot_read(val_dir: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    files = list_cubes(str(val_dir))
    assert len(files) == 3
    rows = protocol_rows(files, protocol_cases("middle", SIX))
    with caplog.at_level(logging.WARNING):
        batches = val_examples(rows, bands=BANDS, crop=32, norm_window=40, batch_size=4)
    assert sum(len(b["uri"]) for b in batches) == 2 * len(SIX) and all(len(b["uri"]) <= 4 for b in batches)
    assert all(b["clean"].shape[1:] == (BANDS, 32, 32) and b["degraded"].dtype == np.float32 for b in batches)
    assert "cube_0000_broken.npy" in caplog.text
    assert {str(t) for b in batches for t in b["task"]} == set(SIX)


@pytest.mark.parametrize("family", ["restorevar", "varformer"])
def test_the_stages_between_check_their_own_progress_not_the_first_estimate(val_dir: Path, family: str) -> None:
    """Before stage decoder the restoration's output is the first estimate (the fusion head starts at zero), so the
    stages between report their held-out loss and the token path's reconstruction per family instead: for an
    untrained model that path is far below what stage decoder's restoration (the first estimate) scores."""
    cfg = preset("tiny", bands=BANDS, family=family)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    rows = protocol_rows(list_cubes(str(val_dir)), protocol_cases("middle", cfg.dag.tasks))
    examples = val_examples(rows, bands=BANDS, crop=32, norm_window=40, batch_size=8)
    cpu = torch.device("cpu")
    between = [s for s in cfg.stages if s not in ("vqvae", "decoder")]
    assert between == (["var", "refiner"] if family == "restorevar" else ["var"])
    final, panel = validate(model, "decoder", examples, task_mode="auto", device=cpu, bf16=False)
    assert {f"val/{t}/{k}" for t in SIX for k in ("psnr", "sam", "psnr_degraded")} <= set(final)
    for stage in between:
        metrics, panel = validate(model, stage, examples, task_mode="auto", device=cpu, bf16=False)
        assert model.training  # the mode the worker trains in is kept
        own = {"var": ("ce", "acc", "acc_s0"), "refiner": ("l1", "l1_greedy")}[stage]
        assert {f"val/{t}/{k}" for t in SIX for k in (*own, "loss", "token_path_psnr", "token_path_sam")} \
            <= set(metrics)
        assert not any(k.endswith("/psnr") for k in metrics)  # no restoration through the whole path
        assert metrics["val/mean/token_path_psnr"] < final["val/mean/psnr"] - 10
        assert metrics == validate(model, stage, examples, task_mode="auto", device=cpu, bf16=False)[0]
        assert panel is not None and panel.shape == (len(SIX) * 4 * 32 + (len(SIX) - 1) * 8, 4 * (3 * 32 + 4), 3)
