"""The observation model: what a record, a level and the cube itself say about how a cube was observed."""

from __future__ import annotations

import numpy as np
import pytest

from hsivar.degrade import Observation, degrade, degrade_for_test, degrade_mixture, observation_of_level
from hsivar.degrade.observation import band_noise_sigma, replication_scale
from hsivar.kernels import blur_sigma


def test_records_say_which_entries_were_not_observed(cube: np.ndarray) -> None:
    C = cube.shape[0]
    _, rec = degrade_for_test(cube, "inpaint", 0.8)
    obs = Observation.from_record(rec)
    assert np.array_equal(obs.missing, rec.removed_mask) and not obs.noisy() and obs.sr_scale is None
    _, rec = degrade_for_test(cube, "bandmiss", 0.3)
    obs = Observation.from_record(rec)
    assert np.array_equal(np.flatnonzero(obs.missing_bands), rec.missing_bands)
    assert obs.missing.sum() == len(rec.missing_bands) * cube[0].size
    _, rec = degrade_for_test(cube, "complex", 3)  # dead lines: whole columns of some bands, plus noise
    obs = Observation.from_record(rec)
    assert np.array_equal(obs.missing[:, 0, :], rec.column_mask) and obs.noisy()
    assert np.allclose(obs.noise_sigma, rec.band_sigmas)
    _, rec = degrade_for_test(cube, "complex", 4)
    assert np.array_equal(Observation.from_record(rec).missing, rec.impulse_mask)
    assert Observation.from_record(degrade_for_test(cube, "complex", 2)[1]).stripes
    assert Observation.from_record(degrade_for_test(cube, "sr", 4)[1]).sr_scale == 4
    blurred = Observation.from_record(degrade_for_test(cube, "blur", 15)[1])
    assert blurred.blur_sigma == pytest.approx(blur_sigma(15)) and blurred.blur_border == "zero"
    obs = Observation.from_record(degrade_for_test(cube, "gaussian", 50)[1])
    assert obs.noise_sigma.shape == (C,) and np.allclose(obs.noise_sigma, 50 / 255)


def test_a_mixture_merges_its_components(cube: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    _, rec = degrade_mixture(cube, [("blur", 9), ("inpaint", 0.7), ("bandmiss", 0.2)], rng)
    obs = Observation.from_record(rec)
    removed = rec.components[1].removed_mask.copy()
    removed[rec.components[2].missing_bands] = True
    assert np.array_equal(obs.missing, removed) and obs.blur_sigma == pytest.approx(blur_sigma(9))


def test_the_cube_shows_missing_bands_removed_voxels_and_replication(cube: np.ndarray) -> None:
    for level in (0.1, 0.2, 0.3):
        degraded, rec = degrade_for_test(cube, "bandmiss", level)
        assert np.array_equal(Observation.detect(degraded).missing, Observation.from_record(rec).missing)
    degraded, rec = degrade_for_test(cube, "inpaint", 0.8)
    detected = Observation.detect(degraded)
    assert np.array_equal(detected.missing & (cube != 0), rec.removed_mask & (cube != 0))  # a clean 0 looks removed
    assert not detected.noisy()
    for s in (2, 4, 8):
        assert Observation.detect(degrade_for_test(cube, "sr", s)[0]).sr_scale == s
    for task, level in (("gaussian", 30), ("blur", 9), ("inpaint", 0.9)):
        assert Observation.detect(degrade_for_test(cube, task, level)[0]).sr_scale is None
    assert replication_scale(np.repeat(np.repeat(cube[:, ::3, ::3], 3, 1), 3, 2)) is None  # only 2, 4 and 8


def test_the_cube_shows_its_noise_level(cube: np.ndarray) -> None:
    from hsivar.synth import make_cube

    assert not Observation.detect(make_cube(seed=3, size=48, bands=16)[0]).noisy()  # shared texture is no noise
    for level in (30, 50, 70):
        sigma = Observation.detect(degrade_for_test(cube, "gaussian", level)[0]).noise_sigma
        assert np.median(sigma) == pytest.approx(level / 255, rel=0.15)
    rng = np.random.default_rng(1)
    even = cube[:30]
    noisy = even + rng.normal(0, [[[0.02]], [[0.2]]] * 15, even.shape).astype(np.float32)
    est = band_noise_sigma(noisy)
    texture = 0.05 / np.sqrt(12)  # the fixture's per-band uniform texture is white noise to any estimator
    assert np.median(est[::2]) == pytest.approx(np.hypot(0.02, texture), rel=0.15)
    assert np.median(est[1::2]) == pytest.approx(0.2, rel=0.15)


def test_impulse_hits_and_saturated_entries_count_as_unobserved(cube: np.ndarray) -> None:
    degraded, rec = degrade_for_test(cube, "complex", 4)
    detected = Observation.detect(degraded).missing
    assert detected is not None
    hit = rec.impulse_mask
    assert (detected & hit).sum() >= 0.99 * hit.sum()  # the pepper (0) and salt (1) voxels
    assert (detected & ~hit).sum() <= 0.01 * hit.sum()


def test_a_level_says_what_the_masks_cannot() -> None:
    shape = (8, 16, 16)
    assert observation_of_level("blur", 21, shape).blur_sigma == pytest.approx(blur_sigma(21))
    assert observation_of_level("blur", 21, shape).blur_border is None  # read from the cube (a record says zero)
    assert observation_of_level("sr", 8, shape).sr_scale == 8
    assert np.allclose(observation_of_level("gaussian", 70, shape).noise_sigma, np.full(8, 70 / 255))
    assert observation_of_level("complex", 2, shape).stripes and not observation_of_level("complex", 3, shape).stripes
    assert observation_of_level("inpaint", 0.8, shape).missing is None
    assert observation_of_level("haze", 1, shape).haze and observation_of_level("lowlight", 0.1, shape).exposure == 0.1
    with pytest.raises(ValueError, match="unknown task"):
        observation_of_level("rain", 1, shape)


def test_merge_facts_and_masks(cube: np.ndarray) -> None:
    C, H, W = cube.shape
    a = Observation((C, H, W), np.zeros((C, H, W), bool), blur_sigma=2.0, source={"given": "user"})
    a.missing[0, :2] = True
    b = Observation((C, H, W), np.zeros((C, H, W), bool), sr_scale=4, blur_sigma=9.0, blur_border="free")
    b.missing[1, :, :3] = True
    m = a.merge(b)
    assert m.missing.sum() == 2 * W + 3 * H and m.blur_sigma == 2.0 and m.sr_scale == 4 and m.blur_border == "free"
    again = Observation.from_facts(m.facts(), m.missing)
    assert again.facts() == m.facts() and np.array_equal(again.missing, m.missing)
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(Observation((C, H + 1, W)))
    degraded, _ = degrade(cube, "gaussian", 0, np.random.default_rng(0))  # σ = 0: a clean cube
    assert Observation.detect(degraded).summary()["missing_fraction"] == 0.0


def test_the_cube_tells_which_families_could_explain_it(cube: np.ndarray) -> None:
    """plausible_tasks: the families auto mode chooses among (one each on the protocol's clear cases)."""
    expected = {"gaussian": ("gaussian",), "complex": ("complex",), "blur": ("blur", "haze", "lowlight"), "sr": ("sr",),
                "inpaint": ("inpaint",), "bandmiss": ("bandmiss",)}
    for task, want in expected.items():
        for level in {"gaussian": (30, 70), "complex": (1, 2, 3, 4), "blur": (9, 21), "sr": (2, 8),
                      "inpaint": (0.7, 0.9), "bandmiss": (0.1, 0.3)}[task]:
            obs = Observation.detect(degrade_for_test(cube, task, level)[0])
            assert obs.plausible == want, (task, level, obs.plausible)
    assert Observation.detect(cube).plausible == ("blur", "haze", "lowlight")  # nothing shows: those, or clean
    for task, level in (("haze", 1.0), ("lowlight", 0.2), ("lowlight", 0.05)):  # the classifier decides
        assert "haze" in Observation.detect(degrade_for_test(cube, task, level)[0]).plausible
    dark_noisy = 0.1 * cube + np.random.default_rng(0).normal(0, 0.05, cube.shape).astype(np.float32)
    assert Observation.detect(dark_noisy).plausible[-1] == "lowlight"  # noise on a dark cube
    degraded, _ = degrade_for_test(cube, "gaussian", 50)
    known = np.zeros(cube.shape, bool)
    known[:, :8] = True  # nodata rows from a file are no sign of inpainting
    assert Observation.detect(degraded, known=known).plausible == ("gaussian",)
    facts = Observation.detect(degraded).facts()
    assert Observation.from_facts(facts).plausible == ("gaussian",)


def test_a_narrow_cube_shows_stripes_pooled_over_its_bands(cube: np.ndarray) -> None:
    """On a 40-px window a striped band shows only a few offset columns: two in each of several bands are stripes,
    two in one band alone are not (chance); noise alone is not."""
    from hsivar.degrade.observation import striped_bands

    rng = np.random.default_rng(3)
    noisy = (cube[:, :40, :40] + rng.normal(0, 0.04, (31, 40, 40))).astype(np.float32)
    sigma = band_noise_sigma(noisy)
    assert not striped_bands(noisy, sigma).any()
    striped = noisy.copy()
    for band, cols in ((3, (7, 25)), (11, (12, 30)), (19, (5, 21)), (27, (16, 33))):
        striped[band][:, list(cols)] += 0.15
    found = striped_bands(striped, sigma)
    assert found[[3, 11, 19, 27]].all() and found.sum() == 4
    assert Observation.detect(striped).stripes
    one = noisy.copy()
    one[11][:, [12, 30]] += 0.15
    assert not striped_bands(one, sigma).any()


def test_a_wide_noisy_cube_is_not_striped_by_chance_hits() -> None:
    """On a wide cube the content's chance hits grow with the width: two bands with two offset columns each are no
    sign of stripes there (the per-band rule, which asks for more columns as the cube widens, decides)."""
    from hsivar.degrade.observation import striped_bands
    from hsivar.synth import make_cube

    clean = make_cube(seed=0, size=512, bands=31)[0]
    noisy = (clean + np.random.default_rng(1).normal(0, 10 / 255, clean.shape)).astype(np.float32)
    assert not striped_bands(noisy, band_noise_sigma(noisy)).any()
    obs = Observation.detect(noisy)
    assert not obs.stripes and obs.plausible == ("gaussian",)


def test_stripes_are_told_from_noise_edges_and_dead_lines(cube: np.ndarray) -> None:
    from hsivar.degrade.observation import striped_bands

    striped, rec = degrade_for_test(cube, "complex", 2)
    obs = Observation.detect(striped)
    assert obs.stripes and obs.plausible == ("complex",)
    bands = striped_bands(striped, obs.noise_sigma, obs.observed)
    assert bands.sum() >= 1 and not bands.all()  # the protocol stripes a third of the bands
    for task, level in (("gaussian", 50), ("blur", 15), ("bandmiss", 0.2)):
        assert not Observation.detect(degrade_for_test(cube, task, level)[0]).stripes, task
    edge = cube.copy()
    edge[:, :, 32:] += 0.2  # a vertical edge through the whole scene is content, not a stripe
    assert not striped_bands(edge, band_noise_sigma(edge)).any()
