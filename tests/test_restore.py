"""Published model round trip and the Restorer: any H×W, seamless tiles, samples, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hsivar.models.hsivar import HSIVAR
from hsivar.models.var import Sampling
from hsivar.publish import ModelFileError, load_published, save_published
from hsivar.restore import RestoreInputError, Restorer, blend_tiles, blend_window, tile_starts


@pytest.fixture
def published(tmp_path: Path, tiny_model: HSIVAR) -> Path:
    return save_published(tiny_model, tmp_path / "model", stage="decoder", metadata={"run": "test"})


def test_publish_round_trip_is_exact(published: Path, tiny_model: HSIVAR) -> None:
    assert sorted(p.name for p in published.iterdir()) == ["config.json", "model.safetensors"]
    model, doc = load_published(published)
    assert doc["stage"] == "decoder" and doc["metadata"] == {"run": "test"}
    assert model.cfg == tiny_model.cfg
    for (k, a), (k2, b) in zip(tiny_model.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    lq = torch.rand(1, tiny_model.cfg.bands, 32, 32)
    assert torch.equal(model.restore(lq).cube, tiny_model.restore(lq).cube)


def test_bad_published_models_raise_clear_errors(published: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no config.json"):
        load_published(tmp_path / "nowhere")
    weights = published / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="unreadable safetensors"):
        load_published(published)
    doc = json.loads((published / "config.json").read_text())
    doc["model"]["vqvae"]["bands"] = -3
    (published / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="invalid model config"):
        load_published(published)


def test_restorer_equals_the_model_on_one_tile(published: Path, tiny_model: HSIVAR) -> None:
    restorer = Restorer.from_published(published)
    cube = np.random.default_rng(0).random((8, 32, 32), dtype=np.float32)
    out = restorer.restore(cube, task="blur", value_range=(0.0, 1.0))
    direct = tiny_model.restore(torch.from_numpy(cube)[None], task="blur").cube[0].numpy()
    assert out.tiles == 1 and out.std is None
    np.testing.assert_allclose(out.cube, direct, atol=1e-6)
    assert out.task_weights["blur"] == pytest.approx(1.0)


def test_restorer_handles_any_size_and_returns_input_units(published: Path) -> None:
    restorer = Restorer.from_published(published)
    rng = np.random.default_rng(1)
    for shape in [(8, 50, 71), (8, 20, 13), (8, 32, 33)]:
        cube = (rng.random(shape, dtype=np.float32) * 4000 + 1000).astype(np.float32)  # e.g. DN units
        out = restorer.restore(cube, batch_size=3)
        assert out.cube.shape == shape and out.cube.dtype == np.float32
        assert np.isfinite(out.cube).all()
        assert cube.min() - 1e-3 <= out.cube.min() and out.cube.max() <= cube.max() + 1e-3
        assert sum(out.task_weights.values()) == pytest.approx(1.0, abs=1e-5)


def test_blended_tiles_have_no_seams() -> None:
    """With an identity 'model' the blended result is the input exactly; with a per-tile offset it varies smoothly."""
    x = torch.rand(3, 70, 45)
    np.testing.assert_allclose(blend_tiles(x, 32, 8, 4, lambda t: t).numpy(), x.numpy(), atol=1e-6)
    counter = iter(range(1000))
    shifted = blend_tiles(torch.zeros(1, 70, 45), 32, 8, 1, lambda t: t + float(next(counter)))
    steps = shifted[0].diff(dim=0).abs().max(), shifted[0].diff(dim=1).abs().max()
    assert max(float(s) for s in steps) < 1.0  # tile offsets differ by ≥ 1: a hard seam would jump by ≥ 1
    assert tile_starts(70, 32, 8) == [0, 24, 38] and tile_starts(20, 32, 8) == [0]
    w = blend_window(32, 8)
    assert w.min() > 0 and torch.equal(w[8:24, 8:24], torch.ones(16, 16))


def test_samples_give_a_seeded_uncertainty_map(published: Path) -> None:
    restorer = Restorer.from_published(published)
    cube = np.random.default_rng(2).random((8, 40, 40), dtype=np.float32)
    a = restorer.restore(cube, samples=3, seed=5, sampling=Sampling(greedy=False, top_k=50))
    b = restorer.restore(cube, samples=3, seed=5, sampling=Sampling(greedy=False, top_k=50))
    assert a.std is not None and a.std.shape == cube.shape and (a.std >= 0).all() and a.std.max() > 0
    np.testing.assert_array_equal(a.cube, b.cube)
    np.testing.assert_array_equal(a.std, b.std)
    with pytest.raises(RestoreInputError, match="samples > 1 needs sampling"):
        restorer.restore(cube, samples=2, sampling=Sampling())


def test_restorer_refuses_bad_cubes_with_clear_messages(published: Path) -> None:
    restorer = Restorer.from_published(published)
    with pytest.raises(RestoreInputError, match="cube has 31 bands but the model restores 8 bands"):
        restorer.restore(np.zeros((31, 32, 32), np.float32))
    with pytest.raises(RestoreInputError, match=r"expected a cube \(C, H, W\)"):
        restorer.restore(np.zeros((32, 32), np.float32))
    bad = np.zeros((8, 32, 32), np.float32)
    bad[0, 0, :3] = np.nan
    with pytest.raises(RestoreInputError, match="3 non-finite"):
        restorer.restore(bad)
    with pytest.raises(RestoreInputError, match="tile=64 is not possible"):
        restorer.restore(np.zeros((8, 32, 32), np.float32), tile=64)
    with pytest.raises(ValueError, match="unknown task"):
        restorer.restore(np.zeros((8, 32, 32), np.float32), task="haze")
