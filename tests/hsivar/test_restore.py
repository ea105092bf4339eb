"""Published model round trip and the one restoration path: any H×W, seamless tiles, samples, nodata, clear errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hsivar.models.hsivar import HSIVAR
from hsivar.models.var import Sampling
from hsivar.publish import ModelFileError, load_published, save_published
from hsivar.restore import NothingToRestore, RestoreInputError, Restorer, finish, prepare_cube


@pytest.fixture
def tiny_model(head_on_model: HSIVAR) -> HSIVAR:
    """Restorations compared here must depend on the model: its output head is switched on (conftest)."""
    return head_on_model


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


def test_a_model_published_with_the_retired_blur_width_head_still_loads(published: Path,
                                                                        tiny_model: HSIVAR) -> None:
    """Models published before the learned blur-width head was retired carry ``dag.blur_width``,
    ``loss.blur_width`` and ``dag.width_head.*`` weights: they load, without them, to the same model."""
    from safetensors.torch import load_file, save_file

    doc = json.loads((published / "config.json").read_text())
    doc["model"]["dag"]["blur_width"] = True
    doc["model"]["loss"]["blur_width"] = 0.5
    (published / "config.json").write_text(json.dumps(doc))
    weights = load_file(str(published / "model.safetensors"))
    weights["dag.width_head.0.weight"] = torch.ones(64)
    save_file(weights, str(published / "model.safetensors"))
    model, _ = load_published(published)
    assert model.cfg == tiny_model.cfg and not any("width_head" in k for k in model.state_dict())
    doc["model"]["dag"]["no_such_field"] = 1
    (published / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="invalid model config"):
        load_published(published)


def test_restorer_equals_the_model_on_one_tile(published: Path, tiny_model: HSIVAR) -> None:
    from hsivar.degrade import Observation
    from hsivar.estimate import first_estimate

    restorer = Restorer.from_published(published)
    cube = np.random.default_rng(0).random((8, 32, 32), dtype=np.float32)
    out = restorer.restore(cube, task="gaussian", value_range=(0.0, 1.0))
    x0 = torch.from_numpy(first_estimate(cube, Observation.detect(cube)))[None]
    direct = tiny_model.restore(torch.from_numpy(cube)[None], task="gaussian", estimate01=x0).cube[0].numpy()
    assert out.tiles == 1 and out.std is None
    np.testing.assert_allclose(out.cube, direct, atol=1e-6)
    assert out.task_weights["gaussian"] == pytest.approx(1.0)


def test_restorer_handles_any_size_and_returns_input_units(published: Path) -> None:
    """A cube in DN units comes back as the restoration of its [0, 1] version mapped back to DN."""
    restorer = Restorer.from_published(published)
    rng = np.random.default_rng(1)
    for shape in [(8, 50, 71), (8, 20, 13), (8, 32, 33)]:
        x01 = rng.random(shape, dtype=np.float32)
        lo, scale = 1000.0, 4000.0
        out = restorer.restore(x01 * scale + lo, batch_size=3, value_range=(lo, lo + scale))
        ref = restorer.restore(x01, batch_size=3, value_range=(0.0, 1.0))
        assert out.cube.shape == shape and out.cube.dtype == np.float32
        np.testing.assert_allclose(out.cube, ref.cube * scale + lo, rtol=0, atol=1e-3)
        assert out.tiles == ref.tiles and sum(out.task_weights.values()) == pytest.approx(1.0, abs=1e-5)


def test_multi_tile_restore_equals_the_model_applied_tile_by_tile(published: Path, tiny_model: HSIVAR) -> None:
    """Batching tiles changes nothing: each tile restored alone by the model (with its part of the cube's first
    estimate), blended by the window, is the answer."""
    from hsivar.degrade import Observation
    from hsivar.estimate import first_estimate
    from hsivar.tiling import blend_window, tile_grid

    restorer = Restorer.from_published(published)
    cube = np.random.default_rng(3).random((8, 50, 45), dtype=np.float32)
    x0 = first_estimate(cube, Observation.detect(cube))
    out = restorer.restore(cube, task="gaussian", batch_size=4, value_range=(0.0, 1.0), overlap=8)
    acc, weight = np.zeros(cube.shape), np.zeros(cube.shape[1:])
    w = blend_window(32, 8).double().numpy()
    for r, c in tile_grid(50, 45, 32, 8):
        tile = torch.from_numpy(cube[None, :, r:r + 32, c:c + 32].copy())
        est = torch.from_numpy(x0[None, :, r:r + 32, c:c + 32].copy())
        restored = tiny_model.restore(tile, task="gaussian", estimate01=est).cube[0].double().numpy()
        acc[:, r:r + 32, c:c + 32] += restored * w
        weight[r:r + 32, c:c + 32] += w
    assert out.tiles == len(tile_grid(50, 45, 32, 8)) == 4
    np.testing.assert_allclose(out.cube, acc / weight, atol=1e-5)


def test_nodata_voxels_are_kept_and_left_out_of_the_range(published: Path) -> None:
    restorer = Restorer.from_published(published)
    cube = np.random.default_rng(4).random((8, 32, 40), dtype=np.float32) * 100
    cube[2, 5:9, 7:11] = -9999.0
    out = restorer.restore(cube, nodata=-9999.0)
    assert (out.cube[2, 5:9, 7:11] == -9999.0).all()
    valid = np.ones(cube.shape, bool)
    valid[2, 5:9, 7:11] = False
    prep = prepare_cube(cube, 8, 32, 8, nodata=-9999.0)
    assert prep.lo == pytest.approx(float(cube[valid].min())) and prep.mask is not None and prep.mask.sum() == 16
    # the nodata voxels count as unobserved entries whose values play no part: the restoration equals that of the
    # cube with any other value there, marked missing
    filled = cube.copy()
    filled[~valid] = 50.0
    np.testing.assert_allclose(out.cube[valid], restorer.restore(filled, missing=~valid).cube[valid], atol=1e-4)
    with pytest.raises(NothingToRestore, match="nothing to restore"):
        restorer.restore(np.full((8, 32, 32), -9999.0, np.float32), nodata=-9999.0)


def test_prepare_and_finish_round_trip_the_units() -> None:
    cube = np.random.default_rng(5).random((3, 40, 37), dtype=np.float32) * 7 + 2
    prep = prepare_cube(cube, 3, 32, 8)
    tiles = prep.tiles()
    assert tiles.min() >= 0 and tiles.max() <= 1 and tiles.shape == (len(prep.coords), 3, 32, 32) == (4, 3, 32, 32)
    assert torch.equal(prep.tiles(1, 3), tiles[1:3])
    blender = prep.blender()
    blender.add(prep.coords, tiles)
    mean, std = finish(prep, blender.result()[None])
    assert std is None
    np.testing.assert_allclose(mean, cube, atol=1e-5)


def test_samples_give_a_seeded_uncertainty_map(published: Path) -> None:
    """The std is exactly the per-pixel std over the N samples, sample i decoded with seed + i."""
    restorer = Restorer.from_published(published)
    cube = np.random.default_rng(2).random((8, 40, 40), dtype=np.float32)
    sampling = Sampling(greedy=False, top_k=50)
    a = restorer.restore(cube, samples=3, seed=5, sampling=sampling, value_range=(0.0, 1.0))
    b = restorer.restore(cube, samples=3, seed=5, sampling=sampling, value_range=(0.0, 1.0))
    singles = np.stack([restorer.restore(cube, samples=1, seed=5 + i, sampling=sampling,
                                         value_range=(0.0, 1.0)).cube for i in range(3)])
    assert a.std is not None and a.std.shape == cube.shape and a.std.max() > 0
    np.testing.assert_allclose(a.cube, singles.mean(0), atol=1e-6)
    np.testing.assert_allclose(a.std, singles.std(0), atol=1e-6)
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
    with pytest.raises(RestoreInputError, match=r"overlap must be in \[0, 32\)"):
        restorer.restore(np.zeros((8, 32, 32), np.float32), overlap=32)
    with pytest.raises(ValueError, match="unknown task"):
        restorer.restore(np.zeros((8, 32, 32), np.float32), task="haze")


def test_blind_blur_gets_its_width_from_the_cube(tiny_model: HSIVAR) -> None:
    """task blur (or auto judged blurred) without a known width: the classical blind estimate supplies σ, the first
    estimate deconvolves with it; other tasks and a known width are left alone."""
    from hsivar.degrade import Observation, degrade_for_test
    from hsivar.estimate import first_estimate
    from hsivar.synth import make_cube

    restorer = Restorer(tiny_model)
    cube = degrade_for_test(make_cube(seed=4, size=48, bands=8)[0], "blur", 15)[0]
    prep = restorer.prepare(cube, 8, value_range=(0.0, 1.0))
    assert prep.observation.blur_sigma is None
    blind = restorer.observe(prep, "blur")
    sigma = blind.observation.blur_sigma
    assert sigma and 1.5 < sigma < 2.8 and blind.observation.source["blur_sigma"] == "estimated"  # true 2.6 px
    assert blind.observation.blur_border == "zero"  # the blur family's zero padding, read from the border
    expected = first_estimate(cube, Observation.detect(cube).replaced(blur_sigma=sigma))
    np.testing.assert_allclose(blind.estimate01[:, :48, :48].numpy(), expected, atol=1e-6)
    assert restorer.observe(prep, "gaussian") is prep
    assert restorer.observe(prep, {"gaussian": 1.0}) is prep
    known = restorer.prepare(cube, 8, value_range=(0.0, 1.0), observation=Observation(cube.shape, blur_sigma=2.6))
    assert restorer.observe(known, "blur") is known
    out = restorer.restore(cube, "blur", value_range=(0.0, 1.0))
    assert out.observation["blur_sigma"] == pytest.approx(sigma) and out.observation["blur_border"] == "zero"


def test_a_blurred_window_of_a_scene_is_read_with_a_free_border(tiny_model: HSIVAR) -> None:
    """A camera's blurred image goes on beyond its frame: blind restoration reads the border as free, says so in the
    output, and its first estimate deblurs the window instead of framing it brighter (worse than the input)."""
    from hsivar.deblur import blur
    from hsivar.kernels import gaussian_kernel1d
    from hsivar.metrics import psnr
    from hsivar.synth import make_cube

    scene = make_cube(seed=5, size=72, bands=8)[0]
    window, blurred = scene[:, 12:60, 12:60], blur(scene, gaussian_kernel1d(15))[:, 12:60, 12:60]
    restorer = Restorer(tiny_model)
    blind = restorer.observe(restorer.prepare(blurred, 8, value_range=(0.0, 1.0)), "blur")
    assert blind.observation.blur_border == "free" and blind.observation.source["blur_border"] == "estimated"
    assert psnr(blind.estimate01[:, :48, :48].numpy(), window) > psnr(blurred, window) + 1.0
    out = restorer.restore(blurred, "blur", value_range=(0.0, 1.0))
    assert out.observation["blur_border"] == "free"


def test_blind_deblurring_takes_off_the_width_the_models_sharp_data_read(tiny_model: HSIVAR) -> None:
    """A model whose calibration measured what its sharp data read (``cfg.sharp_width``) takes it off the width it
    reads of a window in quadrature, and the first estimate of a light blur is then better than the input (with the
    raw reading it was worse)."""
    from scipy.ndimage import gaussian_filter

    from hsivar.deblur import blind_width, blur, sharp_width
    from hsivar.kernels import gaussian_kernel1d
    from hsivar.metrics import psnr
    from hsivar.synth import make_cube

    scene = gaussian_filter(make_cube(seed=7, size=96, bands=8)[0], (0, 0.6, 0.6), mode="reflect")
    window, blurred = scene[:, 28:68, 28:68], blur(scene, gaussian_kernel1d(3))[:, 28:68, 28:68]
    raw = Restorer(tiny_model).observe(Restorer(tiny_model).prepare(blurred, 8, value_range=(0.0, 1.0)), "blur")
    model = copy.deepcopy(tiny_model)
    model.set_sharp_width(sharp_width([window]))
    restorer = Restorer(model)
    less = restorer.observe(restorer.prepare(blurred, 8, value_range=(0.0, 1.0)), "blur")
    assert less.observation.blur_sigma == pytest.approx(blind_width(blurred, sharp=model.cfg.sharp_width))
    assert less.observation.blur_sigma < raw.observation.blur_sigma
    before = psnr(blurred, window)
    assert psnr(raw.estimate01[:, :40, :40].numpy(), window) < before
    assert psnr(less.estimate01[:, :40, :40].numpy(), window) > before + 2.0


def test_auto_restores_among_the_families_the_cube_leaves_plausible(tiny_model: HSIVAR) -> None:
    from hsivar.degrade import degrade_for_test
    from hsivar.models.dag import AutoAmong
    from hsivar.synth import make_cube

    restorer = Restorer(tiny_model)
    clean = make_cube(seed=6, size=48, bands=8)[0]
    degraded = degrade_for_test(clean, "bandmiss", 0.3)[0]
    prep = restorer.prepare(degraded, 8, value_range=(0.0, 1.0))
    assert restorer.resolve_task(prep, "auto") == AutoAmong(("bandmiss",))
    assert restorer.resolve_task(prep, "gaussian") == "gaussian"  # a task given is a task taken
    out = restorer.restore(degraded, "auto", value_range=(0.0, 1.0))
    assert out.task_weights["bandmiss"] == pytest.approx(1.0) and out.observation["plausible_tasks"] == ["bandmiss"]


def test_observe_reads_haze_and_an_exposure_for_a_model_that_knows_them() -> None:
    """A model trained on haze and low light (``dag.tasks``): the exposure is read from the cube and the first estimate
    brightened by it; haze switches the dark channel step on. A model of MP-HSIR's six families leaves both alone."""
    from hsivar.config import ModelConfig
    from hsivar.degrade import degrade_for_test
    from hsivar.metrics import psnr
    from hsivar.presets import preset
    from hsivar.synth import make_cube
    from hsivar.tasks import TASKS

    base = preset("tiny", bands=8)
    cfg = ModelConfig.model_validate({**base.model_dump(), "dag": {**base.dag.model_dump(), "tasks": TASKS}})
    torch.manual_seed(0)
    restorer, six = Restorer(HSIVAR(cfg).eval()), Restorer(HSIVAR(base).eval())
    clean = make_cube(seed=5, size=48, bands=8)[0]
    clean = (clean - clean.min()) / (clean.max() - clean.min())

    dark = degrade_for_test(clean, "lowlight", 0.1)[0]
    prep = restorer.prepare(dark, 8, value_range=(0.0, 1.0))
    assert restorer.unobserved(prep) == ("blur", "haze", "lowlight") and six.unobserved(prep) == ("blur",)
    seen = restorer.observe(prep, "lowlight")
    assert 0.04 < seen.observation.exposure < 0.3 and seen.observation.source["exposure"] == "estimated"
    assert seen.observation.haze is None and seen.observation.blur_sigma is None
    x0 = seen.estimate01[:, :48, :48].numpy()
    assert psnr(x0, clean) > psnr(dark, clean) + 5
    bright = restorer.prepare(clean, 8, value_range=(0.0, 1.0))
    assert restorer.observe(bright, "lowlight") is bright  # as bright as a normal scene: nothing to correct

    hazy = degrade_for_test(clean, "haze", 1.0)[0]
    prep = restorer.prepare(hazy, 8, value_range=(0.0, 1.0))
    seen = restorer.observe(prep, {"haze": 0.5, "sr": 0.5})
    assert seen.observation.haze and seen.observation.exposure is None
    assert psnr(seen.estimate01[:, :48, :48].numpy(), clean) > psnr(hazy, clean) + 3
    assert restorer.observe(prep, "gaussian") is prep
    out = restorer.restore(hazy, "haze", value_range=(0.0, 1.0))
    assert out.observation["haze"] and out.kept is None or not out.kept.any()
