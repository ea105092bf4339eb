"""Decoded tiles reused across restorations (hsivar.memo): a second restoration of the same tiles under another task
(under the same task weights where the token path reads them) fuses the first one's decoded tiles and returns what
decoding again returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsivar.calibrate import CalibrationExample, calibrate
from hsivar.degrade import degrade_for_test
from hsivar.memo import DecodedTiles
from hsivar.models.build import build_model
from hsivar.presets import preset
from hsivar.restore import Restorer, resolve_overlap
from hsivar.synth import make_cube


def _restorer(family: str) -> Restorer:
    torch.manual_seed(0)
    model = build_model(preset("tiny", bands=8, family=family))
    with torch.no_grad():
        model.fusion.gate.weight.uniform_(0.3, 1.0)  # a fusion head whose share of x0 depends on the task
    return Restorer(model.eval())


@pytest.mark.parametrize("family", ["restorevar", "varformer"])
def test_a_second_task_fuses_the_decoded_tiles_and_equals_decoding_again(family: str) -> None:
    restorer = _restorer(family)
    degraded = degrade_for_test(make_cube(seed=3, size=48, bands=8)[0], "inpaint", 0.5)[0]
    prep = restorer.prepare(degraded, resolve_overlap(restorer.tile, None, None), value_range=(0.0, 1.0))
    memo = DecodedTiles()
    first = restorer.restore_prepared(prep, "inpaint", batch_size=16, memo=memo).samples01
    assert (memo.hits, memo.misses) == (0, 1)
    again = restorer.restore_prepared(prep, "gaussian", batch_size=16, memo=memo).samples01
    fresh = restorer.restore_prepared(prep, "gaussian", batch_size=16).samples01
    assert (memo.hits, memo.misses) == (1, 1)
    assert torch.equal(again, fresh)  # bit for bit what decoding again gives
    assert not torch.equal(again, first)  # the fusion head read the other task's weights
    # other tiles (another cube) or other options are not served from the memo
    other = restorer.prepare(degraded[:, ::-1].copy(), resolve_overlap(restorer.tile, None, None),
                             value_range=(0.0, 1.0))
    restorer.restore_prepared(other, "auto", batch_size=16, memo=memo)
    restorer.restore_prepared(prep, "auto", batch_size=16, memo=memo, refine=False)
    assert (memo.hits, memo.misses) == (1, 3)


def test_a_family_whose_token_path_reads_the_task_reuses_tiles_only_under_the_same_weights() -> None:
    """HSI-VAR's transformer reads the task embedding: blind ``auto`` on an inpainted cube weighs inpaint alone (the
    one family its observation leaves plausible) and fuses the tiles decoded under the named task; another task
    decodes again."""
    restorer = _restorer("hsivar")
    degraded = degrade_for_test(make_cube(seed=4, size=32, bands=8)[0], "inpaint", 0.5)[0]
    prep = restorer.prepare(degraded, resolve_overlap(restorer.tile, None, None), value_range=(0.0, 1.0))
    memo = DecodedTiles()
    restorer.restore_prepared(prep, "inpaint", memo=memo)
    restorer.model.fusion.set_trust(torch.full((len(restorer.tasks),), 0.5))  # only the fusion head changes
    blind = restorer.restore_prepared(prep, "auto", memo=memo).samples01
    assert (memo.hits, memo.misses) == (1, 1)
    assert torch.equal(blind, restorer.restore_prepared(prep, "auto").samples01)  # bit for bit decoding again
    gaussian = restorer.restore_prepared(prep, "gaussian", memo=memo).samples01
    assert (memo.hits, memo.misses) == (1, 2)
    assert torch.equal(gaussian, restorer.restore_prepared(prep, "gaussian").samples01)
    tiles, estimate = prep.tiles(0, 1), prep.estimate_tiles(0, 1)
    decoded = [restorer.model.restore(tiles, t, estimate01=estimate).decoded for t in ("inpaint", "gaussian")]
    assert not torch.equal(*decoded)  # the transformer read the other task: decoding again was needed
    with pytest.raises(ValueError, match="reads the task"):  # fusing needs the weights the tiles were decoded under
        restorer.model.fuse(prep.tiles(0, 1), torch.zeros(1, 8, 32, 32), "gaussian")


def test_a_full_memo_keeps_nothing_more() -> None:
    memo = DecodedTiles(max_bytes=8 * 32 * 32 * 4)  # room for one tile
    tiles = torch.rand(2, 8, 32, 32)
    keys = memo.keys(tiles, None, "greedy")
    memo.put(keys, torch.rand(2, 8, 32, 32))
    assert memo.get(keys[:1]) is not None and memo.get(keys) is None and keys[0] != keys[1]


@pytest.mark.parametrize("family", ["restorevar", "hsivar"])
def test_calibration_with_the_memo_returns_the_blind_restorations_users_get(family: str) -> None:
    """The blind pass of the calibration reuses the oracle pass's decoded tiles where nothing differs (for HSI-VAR,
    the task weights too), and its restorations equal those of Restorer.restore in auto mode."""
    restorer = _restorer(family)
    clean = make_cube(seed=5, size=32, bands=8)[0]
    examples = [CalibrationExample(degrade_for_test(clean, t, lvl)[0], clean, t, lvl)
                for t, lvl in (("inpaint", 0.5), ("bandmiss", 0.3), ("gaussian", 30))]
    fit = calibrate(restorer, examples)
    assert fit.reused >= 2  # inpaint and bandmiss: the blind observation reads the same mask, one plausible family
    for ex, out in zip(examples, fit.restored):
        users = restorer.restore(ex.degraded, "auto", value_range=(0.0, 1.0), batch_size=16).cube
        np.testing.assert_array_equal(out, users)
