"""What the console shows: the platform's own lines; Ray's lines (Python and C++) go to the log folder."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

from hsivar_platform.console import WORKER_TAG, RayLineFilter, StageProgress


def test_ray_lines_are_diverted_and_ours_kept(tmp_path: Path) -> None:
    out, log = io.StringIO(), tmp_path / "ray.log"
    f = RayLineFilter(out, log)
    f.write("\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed")  # print(): text, then "\n"
    other = threading.Thread(target=lambda: f.write("[train var] step 10/20 loss 0.5\n"))  # another thread meanwhile
    other.start()
    other.join()
    f.write("\n")
    f.writelines(["(MapWorker(MapBatches(read_and_tile)) pid=7, ip=10.0.0.1) Progress bars disabled\n",
                  f"(MapBatches(read_crops) pid=9) {WORKER_TAG} skipping a.h5: cannot read its header\n",
                  "(note) a line of ours in parentheses\n", "50%|█████     | 5/10\r"])
    f.write("[demo] no newline yet")
    f.flush()
    assert out.getvalue() == ("[train var] step 10/20 loss 0.5\n"
                              f"(MapBatches(read_crops) pid=9) {WORKER_TAG} skipping a.h5: cannot read its header\n"
                              "(note) a line of ours in parentheses\n50%|█████     | 5/10\r[demo] no newline yet")
    diverted = log.read_text().splitlines()
    assert len(diverted) == 2 and "graceful_shutdown" in diverted[0] and "Progress bars disabled" in diverted[1]


def test_native_stderr_lines_of_ray_go_to_the_log(tmp_path: Path) -> None:
    """Ray's C++ core writes glog lines to file descriptor 2 directly; a filtered process keeps them off stderr."""
    code = (
        "import os, sys\n"
        "from hsivar_platform.console import filter_native_stderr, filter_ray_lines\n"
        "filter_native_stderr()\n"
        f"filter_ray_lines({str(tmp_path)!r})\n"
        "os.write(2, b'[2026-12-01 15:47:29,263 E 23609 23609] core_worker.cc:2465: Actor with class name x\\n')\n"
        "print('[demo] ours', file=sys.stderr)\n"
        "sys.stderr.write('tail without newline')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "[demo] ours\ntail without newline"
    assert "core_worker.cc:2465" in (tmp_path / "ray.log").read_text()


def test_stage_progress_prints_lines_with_eta_when_not_a_terminal() -> None:
    lines: list[str] = []
    with StageProgress("vqvae", 10, lines.append, stream=io.StringIO(), interval_s=0.0) as p:
        p.message("resumed from the checkpoint at step 4")
        for step in range(5, 11):
            p.update(step, {"loss": 1.0 / step, "psnr": 20.0 + step, "lr": 1e-3})
    assert lines[0] == "[train vqvae] resumed from the checkpoint at step 4"
    assert lines[1].startswith("[train vqvae] step 5/10 loss 0.2 psnr 25")
    assert "ETA" in lines[2] and "lr" not in lines[2]
    assert lines[-1].startswith("[train vqvae] step 10/10 loss 0.1 psnr 30") and "ETA" not in lines[-1]
