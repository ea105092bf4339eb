"""Task names in embedding order, task weights, and the task option (auto / family / mixture)."""

from __future__ import annotations

import numpy as np
import pytest

from hsivar.degrade import FAMILIES
from hsivar.tasks import TASKS, dominant_task, parse_task, task_index, task_weights


def test_tasks_follow_the_family_table() -> None:
    assert TASKS == tuple(f.name for f in FAMILIES)
    # trained models index tasks by position: the published six never move (a new family is appended)
    assert TASKS[:6] == ("gaussian", "complex", "blur", "sr", "inpaint", "bandmiss")
    assert [task_index(t) for t in TASKS] == list(range(len(TASKS)))
    with pytest.raises(ValueError, match="unknown task 'rain'; expected one of gaussian, complex"):
        task_index("rain")


def test_task_weights() -> None:
    w = task_weights(["blur"])
    assert w.dtype == np.float32 and w.shape == (len(TASKS),) and w[2] == 1 and w.sum() == 1
    np.testing.assert_allclose(task_weights(["gaussian", "gaussian", "sr"])[:6], [2 / 3, 0, 0, 1 / 3, 0, 0])
    with pytest.raises(ValueError, match="at least one"):
        task_weights([])


def test_parse_task() -> None:
    assert parse_task(None) == parse_task("") == parse_task(" auto ") == "auto"
    assert parse_task("blur") == "blur"
    assert parse_task("gaussian:0.7,blur:0.3") == {"gaussian": 0.7, "blur": 0.3}
    assert parse_task("gaussian=1, sr") == {"gaussian": 1.0, "sr": 1.0}
    assert parse_task("blur:1,blur:2") == {"blur": 3.0}
    assert parse_task({"sr": 2, "inpaint": 0}) == {"sr": 2.0, "inpaint": 0.0}
    for bad, match in [("denoise", "unknown task"), ("gaussian:x", "not a number"), ("blur:0", "positive"),
                       ("rain:1", "unknown task 'rain' in mixture"), ("blur:-1", "≥ 0"), ("sr:nan", "finite"),
                       ({}, "positive")]:
        with pytest.raises(ValueError, match=match):
            parse_task(bad)


def test_dominant_task() -> None:
    assert dominant_task(task_weights(["sr"])) == "sr"
    assert dominant_task(0.1 + 0.5 * task_weights(["inpaint"])) == "inpaint"
    assert dominant_task([]) == "auto"
    assert dominant_task([0.2, 0.8], ("gaussian", "blur")) == "blur"  # a model's own task list
    with pytest.raises(ValueError, match=f"2 task weights for {len(TASKS)} tasks"):
        dominant_task([0.2, 0.8])
