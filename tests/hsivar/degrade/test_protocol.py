"""Dispatch by the family table, the seeded test protocol, the training sampler and mixtures."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from numpy.random import default_rng as rng

from hsivar.degrade import (
    FAMILIES,
    Family,
    case_level,
    degrade,
    degrade_for_test,
    degrade_mixture,
    family,
    protocol_cases,
    sample_training_degradation,
    test_protocol,
)
from hsivar.degrade import families as families_module
from hsivar.tasks import DEFAULT_TASKS, TASKS, task_index, task_weights

SIX = ("gaussian", "complex", "blur", "sr", "inpaint", "bandmiss")
"""The families of the published protocol, in embedding order; a new family is appended after them."""

# Degraded cubes of the seeded protocol (index 1, every family) on the cube of `test_protocol_is_pinned`: sum over the
# cube, voxel (0, 0, 0), voxel (4, 9, 13). Any change of a random stream, of a family or of the seed
# key moves them; evaluations are comparable across versions only while they hold.
PINNED = {
    "gaussian_30": (651.467736478895, 0.7937909364700317, 0.6592183113098145),
    "gaussian_50": (655.4017299078405, 0.8120117783546448, 0.5999974012374878),
    "gaussian_70": (645.5302903875709, 0.4436628520488739, 0.891131579875946),
    "complex_case1": (645.0803894363344, 0.7482304573059082, 0.9193469285964966),
    "complex_case2": (638.8365830481052, 0.6219825744628906, 0.6721737384796143),
    "complex_case3": (650.4155975878239, 0.7242447733879089, 1.1697454452514648),
    "complex_case4": (639.5002721473575, 0.7624685764312744, 0.871264636516571),
    "blur_9": (551.4813804775476, 0.21185974776744843, 0.4786951541900635),
    "blur_15": (497.92069621384144, 0.1717909723520279, 0.4160749018192291),
    "blur_21": (447.7432872951031, 0.1569095104932785, 0.36949047446250916),
    "sr_2": (649.5343202054501, 0.7804993987083435, 0.5524089336395264),
    "sr_4": (590.4353529214859, 0.7804993987083435, 0.3125664293766022),
    "sr_8": (604.9083523750305, 0.7804993987083435, 0.7051737308502197),
    "inpaint_0.7": (194.8882252573967, 0.0, 0.8420470356941223),
    "inpaint_0.8": (123.7715207412839, 0.0, 0.0),
    "inpaint_0.9": (66.7214731797576, 0.0, 0.0),
    "bandmiss_0.1": (519.9072310104966, 0.7804993987083435, 0.8420470356941223),
    "bandmiss_0.2": (519.3408609479666, 0.0, 0.8420470356941223),
    "bandmiss_0.3": (523.8826933130622, 0.7804993987083435, 0.8420470356941223),
    "haze_0.5": (770.968429505825, 0.7953979969024658, 0.8346614837646484),
    "haze_1": (888.1389391422272, 0.8507947325706482, 0.854810893535614),
    "haze_1.5": (958.2273636758327, 0.8652260303497314, 0.8839446306228638),
    "lowlight_0.2": (107.64900539210066, 0.13500924408435822, 0.14993712306022644),
    "lowlight_0.1": (59.98260244959965, 0.06646891683340073, 0.08844170719385147),
    "lowlight_0.05": (28.033253565314226, 0.03887629508972168, 0.03423841670155525),
}


# ------------------------------------------------------------------------------------------ the table


def test_table_rows_are_consistent() -> None:
    assert TASKS == tuple(f.name for f in FAMILIES) and len(set(TASKS)) == len(TASKS)
    assert TASKS[: len(SIX)] == SIX  # trained models index tasks by position: existing ones never move
    for i, f in enumerate(FAMILIES):
        assert family(f.name) is f and task_index(f.name) == i
        assert f.middle_level in f.test_levels, f.name
        assert f.test_levels and f.train_levels and f.level_unit, f.name
        for level in (*f.test_levels, f.middle_level, *f.train_levels):
            f.parse(level)  # every listed level is valid
        assert f.baselines and all(b.name for b in f.baselines)


@pytest.mark.parametrize("name", TASKS)
def test_dispatch_is_by_the_table(monkeypatch: pytest.MonkeyPatch, cube: np.ndarray, name: str) -> None:
    calls = []

    def spy(x: np.ndarray, level, g: np.random.Generator, rec) -> np.ndarray:
        calls.append((x.shape, level, rec.task))
        rec.sigma = 0.5
        return np.full_like(x, 7.0)

    row = family(name)
    rows = tuple(dataclasses.replace(f, apply=spy) if f is row else f for f in FAMILIES)
    monkeypatch.setattr(families_module, "FAMILIES", rows)
    level = float(row.middle_level)  # as it comes through a table: parsed to the row's type before `apply`
    y, rec = degrade(cube, name, level, rng())
    assert calls == [(cube.shape, row.parse(level), name)]
    assert type(calls[0][1]) is type(row.parse(row.middle_level))
    assert (y == 7).all() and rec.sigma == 0.5
    assert rec.task == name and rec.level == level and rec.shape == cube.shape
    np.testing.assert_array_equal(rec.weights, task_weights([name]))


@pytest.mark.parametrize("name", TASKS)
def test_degrade_equals_the_row_function(cube: np.ndarray, name: str) -> None:
    row = family(name)
    y, rec = degrade(cube, name, row.middle_level, rng(3))
    direct = dataclasses.replace(rec, **{f: None for f in row.record_fields})
    expect = row.apply(cube.copy(), row.parse(row.middle_level), rng(3), direct)
    np.testing.assert_array_equal(y, expect)
    assert json.dumps(direct.summary()) == json.dumps(rec.summary())


def test_unknown_family_raises_and_is_never_degraded(monkeypatch: pytest.MonkeyPatch, cube: np.ndarray) -> None:
    def never(*args: object) -> np.ndarray:
        raise AssertionError("an unknown family reached a family function")

    monkeypatch.setattr(families_module, "FAMILIES", tuple(dataclasses.replace(f, apply=never) for f in FAMILIES))
    calls = [
        lambda: degrade(cube, "rain", 0.2, rng()),
        lambda: degrade_for_test(cube, "rain", 0.2),
        lambda: degrade_mixture(cube, [("gaussian", 30), ("rain", 0.2)], rng()),
        lambda: case_level("rain", 0.2),
        lambda: family("rain"),
        lambda: task_weights(["rain"]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="unknown task 'rain'") as err:
            call()
        assert all(t in str(err.value) for t in TASKS)  # the message lists the valid names


def test_bad_levels_and_inputs() -> None:
    x = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        degrade(np.zeros((4, 4), np.float32), "gaussian", 30, rng())
    for task, level, match in [("blur", 4, "blur level 4: .*odd"), ("sr", 2.5, "sr level 2.5: .*positive integer"),
                               ("inpaint", 1.5, r"inpaint level 1.5: .*\[0, 1\]"), ("gaussian", -1, "gaussian"),
                               ("bandmiss", "x", "bandmiss"), ("complex", "case9", "case 1-4")]:
        with pytest.raises(ValueError, match=match):
            degrade(x, task, level, rng())


# ------------------------------------------------------------------------------------------ test protocol


def test_test_protocol_lists_every_pair() -> None:
    cases = test_protocol()  # MP-HSIR's six families
    assert len({c.name for c in cases}) == len(cases) == 19  # 3 + 4 + 3 + 3 + 3 + 3
    assert tuple(dict.fromkeys(c.task for c in cases)) == DEFAULT_TASKS == SIX
    assert {c.name for c in cases} >= {"gaussian_30", "complex_case4", "blur_21", "sr_8", "inpaint_0.9"}
    assert [c.level for c in cases if c.task == "bandmiss"] == [0.1, 0.2, 0.3]
    assert protocol_cases("all") == cases == protocol_cases()
    every = test_protocol(TASKS[::-1])  # any order in, table order out
    assert len({c.name for c in every}) == len(every) == sum(len(f.test_levels) for f in FAMILIES) == 25
    assert tuple(dict.fromkeys(c.task for c in every)) == TASKS and every[:19] == cases
    assert [c.name for c in test_protocol(("lowlight", "haze"))] == [
        "haze_0.5", "haze_1", "haze_1.5", "lowlight_0.2", "lowlight_0.1", "lowlight_0.05"]
    with pytest.raises(ValueError, match="unknown task"):
        test_protocol(("gaussian", "rain"))


def test_protocol_cases_middle_has_one_case_per_family() -> None:
    middle = protocol_cases("middle")
    assert [c.task for c in middle] == list(DEFAULT_TASKS)
    assert [c.level for c in middle] == [f.middle_level for f in FAMILIES[:6]]
    assert set(middle) <= set(test_protocol())
    assert [c.name for c in protocol_cases("middle", TASKS)][6:] == ["haze_1", "lowlight_0.1"]
    assert [c.name for c in middle[: len(SIX)]] == ["gaussian_50", "complex_case2", "blur_15", "sr_4", "inpaint_0.8",
                                                    "bandmiss_0.2"]
    with pytest.raises(ValueError, match="'all' or 'middle'"):
        protocol_cases("some")  # type: ignore[arg-type]


def test_case_level_restores_the_natural_type() -> None:
    assert case_level("blur", 15.0) == 15 and isinstance(case_level("blur", 15.0), int)
    assert isinstance(case_level("complex", 2.0), int) and isinstance(case_level("sr", 4.0), int)
    assert case_level("complex", "case3") == 3
    assert case_level("inpaint", 0.8) == 0.8 and isinstance(case_level("gaussian", 50), float)


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_every_row_level_runs_through_degrade_for_test(fam: Family) -> None:
    x = np.random.default_rng(4).random((6, 20, 20), dtype=np.float32) * 0.8 + 0.1
    for level in (*fam.test_levels, fam.middle_level):
        y, rec = degrade_for_test(x, fam.name, level, index=2)
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all(), (fam.name, level)
        assert rec.task == fam.name and rec.level == level
        assert rec.weights[task_index(fam.name)] == 1 and rec.weights.sum() == 1
        # Levels come back from tables and Ray rows as floats: same seed key, same cube.
        y2, _ = degrade_for_test(x, fam.name, case_level(fam.name, float(level)), index=2)
        np.testing.assert_array_equal(y, y2)


def test_test_protocol_is_pinned() -> None:
    x = np.random.default_rng(0).random((5, 16, 16), dtype=np.float32) * 0.8 + 0.1
    cases = test_protocol(TASKS)
    assert [c.name for c in cases] == list(PINNED)
    for case in cases:
        y, _ = degrade_for_test(x, case.task, case.level, index=1)
        got = (float(y.astype(np.float64).sum()), float(y[0, 0, 0]), float(y[4, 9, 13]))
        assert got == pytest.approx(PINNED[case.name], rel=1e-6, abs=1e-6), case.name


def test_determinism_and_input_untouched(cube: np.ndarray) -> None:
    before = cube.copy()
    for case in test_protocol():
        a, ra = degrade_for_test(cube, case.task, case.level, index=3)
        b, rb = degrade_for_test(cube, case.task, case.level, index=3)
        np.testing.assert_array_equal(a, b)
        assert json.dumps(ra.summary()) == json.dumps(rb.summary())
        if case.task not in ("blur", "sr"):  # those are deterministic by nature
            c, _ = degrade_for_test(cube, case.task, case.level, index=4)
            assert not np.array_equal(a, c)
    np.testing.assert_array_equal(cube, before)
    a, _ = degrade(cube, "gaussian", 30, rng(9))
    b, _ = degrade(cube, "gaussian", 30, rng(9))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("c", [1, 3, 8, 31])
def test_any_band_count(c: int) -> None:
    x = np.random.default_rng(c).random((c, 12, 17), dtype=np.float32) * 0.8 + 0.1
    for case in test_protocol():
        y, rec = degrade_for_test(x, case.task, case.level)
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all(), case.name
        assert rec.shape == x.shape
        if case.task == "complex" and case.level > 1:
            assert rec.affected_bands.size == max(1, c // 3)
        if case.task == "bandmiss":
            expect = 0 if c == 1 else min(max(1, int(case.level * c)), c - 1)
            assert rec.missing_bands.size == expect
            assert (rec.band_mask is None) == (expect == 0)
    # C = 1: band completion has nothing it may remove (the only band stays observed).
    if c == 1:
        y, rec = degrade(x, "bandmiss", 0.3, rng())
        np.testing.assert_array_equal(y, x)


def test_torch_in_torch_out(cube: np.ndarray) -> None:
    t = torch.from_numpy(cube).double()
    y, rec = degrade(t, "blur", 9, rng())
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64 and y.shape == t.shape
    y2, _ = degrade(cube, "blur", 9, rng())
    np.testing.assert_allclose(y.numpy(), y2, atol=1e-6)


# ------------------------------------------------------------------------------------------ training, mixtures


def test_training_sampler_covers_families_uniformly() -> None:
    x = np.full((4, 8, 8), 0.5, np.float32)
    g = rng(123)
    recs = [sample_training_degradation(x, g)[1] for _ in range(600)]
    counts = np.bincount([task_index(r.task) for r in recs], minlength=len(TASKS))
    # Binomial(600, 1/6): mean 100, s.d. 9.1; [60, 140] is > 4 s.d. Haze and low light only when a model lists them.
    assert ((counts[:6] >= 60) & (counts[:6] <= 140)).all() and not counts[6:].any(), counts
    two = [sample_training_degradation(x, g, ("lowlight", "sr"))[1].task for _ in range(200)]
    assert set(two) == {"lowlight", "sr"} and 60 <= two.count("lowlight") <= 140
    for r in recs:
        assert r.weights.sum() == pytest.approx(1.0) and r.weights[task_index(r.task)] == 1
        if r.task == "gaussian":
            assert 30 / 255 <= r.sigma <= 70 / 255
        elif r.task == "complex":
            assert r.case in (2, 3, 4)  # pure non-i.i.d. is never trained
        else:
            assert r.level in family(r.task).train_levels
    assert {r.case for r in recs if r.task == "complex"} == {2, 3, 4}
    assert len({r.level for r in recs if r.task == "gaussian"}) > 50  # continuous σ


def test_mixture_weights_order_and_noise(cube: np.ndarray) -> None:
    y, rec = degrade_mixture(cube, [("gaussian", 30), ("blur", 9)], rng(2))
    assert rec.task == "mixture"
    assert [c.task for c in rec.components] == ["blur", "gaussian"]  # physical order: blur first
    expect = np.zeros(len(TASKS))
    expect[[task_index("gaussian"), task_index("blur")]] = 0.5
    np.testing.assert_allclose(rec.weights, expect)
    blurred, _ = degrade(cube, "blur", 9, rng())
    assert (y - blurred).std() == pytest.approx(30 / 255, rel=0.02)  # noise is not blurred
    _, rec2 = degrade_mixture(cube, [("gaussian", 30), ("blur", 9)], rng(2), physical_order=False)
    assert [c.task for c in rec2.components] == ["gaussian", "blur"]
    _, rec3 = degrade_mixture(cube, [("bandmiss", 0.1), ("inpaint", 0.7)], rng(2))
    assert rec3.missing_bands.size == 3 and rec3.band_mask is None  # all bands degraded → score all
    json.dumps(rec3.summary())


def test_mixture_physical_order_of_the_six_families(cube: np.ndarray) -> None:
    comps = [(name, family(name).middle_level) for name in reversed(SIX)]
    _, rec = degrade_mixture(cube[:6, :24, :24], comps, rng(1))
    assert [c.task for c in rec.components] == ["blur", "sr", "gaussian", "complex", "inpaint", "bandmiss"]
    np.testing.assert_allclose(rec.weights, task_weights(list(SIX)))
    assert rec.weights[: len(SIX)].tolist() == pytest.approx([1 / 6] * 6)


def test_mixture_physical_order_with_haze_and_low_light(cube: np.ndarray) -> None:
    """Haze is in the scene before the optics; a short exposure scales the signal before the sensor's noise."""
    comps = [("gaussian", 30), ("lowlight", 0.2), ("blur", 9), ("haze", 1.0)]
    _, rec = degrade_mixture(cube[:, :24, :24], comps, rng(2))
    assert [c.task for c in rec.components] == ["haze", "blur", "lowlight", "gaussian"]
