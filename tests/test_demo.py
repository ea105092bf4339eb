"""Smoke test of the whole library through the real entry point: `hsivar demo --quick`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from hsivar.restore import Restorer
from hsivar.tasks import TASKS


def test_quick_demo_trains_publishes_and_restores(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "hsivar"
    res = subprocess.run([str(exe), "demo", "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stage vqvae done" in res.stdout and "stage decoder done" in res.stdout
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["task"] for r in result["rows"]] == list(TASKS)
    assert all(np.isfinite(r["psnr_restored"]) and r["auto_task"] in TASKS for r in result["rows"])
    restorer = Restorer.from_published(result["model"])
    assert restorer.bands == 31 and restorer.tile == 32
