"""Smoke tests of the benchmarks: each bench script through its real entrypoint (a subprocess with this
interpreter; the Ray ones start their own local Ray) at its smallest settings; the last stdout line must be
one JSON object with the expected figures. Behaviour only, never timings (the three Ray ones run side by
side; step.py and precision.py, which need no Ray, after them)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MACHINE_KEYS = {"cpu", "cores", "torch", "ray", "device"}
TIMEOUT_S = 600

# Each bench at its smallest settings. Most of their time is Ray starting processes, not CPU work, so the
# module starts the selected ones side by side and each test waits for its own.
BENCHES: dict[str, list[str]] = {
    "pipeline": ["--files", "2", "--size", "32", "--actors", "1", "--storage", "local,s3"],
    # direct ingress: the app's gateway answers HTTP itself (the default, through Ray's proxy, differs by its URL only)
    "serve": ["--concurrency", "1,2", "--seconds", "0.5", "--warmup", "1", "--own-repeats", "3", "--floors",
              "--direct-ingress"],
    "train": ["--workers", "1,2", "--stages", "vqvae", "--steps", "2", "--files", "1"],
}

pytestmark = pytest.mark.slow


@dataclass
class _Launched:
    proc: subprocess.Popen
    stdout: Path
    stderr: Path


@pytest.fixture(scope="module")
def launched(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, _Launched]]:
    """The benches whose tests are selected, started at once (``bench/<name>.py`` with this interpreter)."""
    names = {n for n in BENCHES for item in request.session.items
             if item.module is request.module and item.name.startswith(f"test_{n}_bench")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # the scripts start their own local Ray; never a cluster from the environment
    out = tmp_path_factory.mktemp("bench")
    runs: dict[str, _Launched] = {}
    for name in sorted(names):
        stdout, stderr = out / f"{name}.out", out / f"{name}.err"
        with open(stdout, "w") as fo, open(stderr, "w") as fe:
            proc = subprocess.Popen([sys.executable, str(REPO / "bench" / f"{name}.py"), *BENCHES[name]], cwd=REPO,
                                    env=env, stdout=fo, stderr=fe, text=True)
        runs[name] = _Launched(proc, stdout, stderr)
    yield runs
    for run in runs.values():  # a failed assertion must not leave a bench (and its Ray) running
        if run.proc.poll() is None:
            run.proc.terminate()  # SIGTERM: the driver shuts its Ray down
            try:
                run.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.proc.kill()
                run.proc.wait()


def _report(launched: dict[str, _Launched], name: str) -> dict[str, Any]:
    """Wait for bench ``name``; → the JSON object on its last stdout line (machine keys checked)."""
    run = launched[name]
    try:
        rc = run.proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bench/{name}.py ran over {TIMEOUT_S} s:\n{run.stderr.read_text()[-5000:]}")
    stdout, stderr = run.stdout.read_text(), run.stderr.read_text()
    assert rc == 0, f"bench/{name}.py failed ({rc}):\n{stdout[-3000:]}\n{stderr[-5000:]}"
    lines = stdout.strip().splitlines()
    assert lines, f"bench/{name}.py printed nothing"
    report = json.loads(lines[-1])
    assert isinstance(report, dict) and report["bench"] == name
    assert MACHINE_KEYS <= set(report["machine"]), report["machine"]
    assert report["machine"]["device"] == "cpu"
    return report


def test_pipeline_bench_ray_vs_loop_on_local_and_s3(launched: dict[str, _Launched]) -> None:
    r = _report(launched, "pipeline")
    assert r["preset"] == "tiny" and r["files"] == 2
    assert set(r["storage"]) == {"local", "s3"} == set(r["efficiency_ratio"]) == set(r["steady_ratio"])
    for backend in r["storage"].values():
        for way in ("ray", "loop"):
            assert backend[way]["cubes"] == 2 and backend[way]["cubes_per_s"] > 0
            assert backend[way]["steady_cubes_per_s"] > 0  # outputs after the first, from the first to the last
        # the job's start-up (actors importing torch and loading the model) is left out of its steady state
        assert backend["ray"]["steady_cubes_per_s"] > backend["ray"]["cubes_per_s"]
        assert backend["steady_ratio"] > 0
        # the job's own figure is over the pipeline alone, a part of the whole run_batch call
        assert backend["ray"]["pipeline_cubes_per_s"] >= backend["ray"]["cubes_per_s"]
        assert len(backend["ray"]["all_seconds"]) == len(backend["loop"]["all_seconds"]) == 1


def test_serve_bench_latency_and_throughput_batching_on_and_off(launched: dict[str, _Launched]) -> None:
    r = _report(launched, "serve")
    assert r["concurrency"] == [1, 2] and r["tiles_per_request"] == 1 and r["direct_ingress"] is True
    assert set(r["batching"]) == {"on", "off"}
    for mode in r["batching"].values():
        assert set(mode) == {"1", "2"}
        for level in mode.values():
            assert level["requests"] >= 1 and not level["errors"]
            assert {"p50_s", "p95_s", "p99_s", "requests_per_s", "tiles_per_s", "tiles_per_forward"} <= set(level)
            assert 0 < level["p50_s"] <= level["p95_s"] <= level["p99_s"]
    assert r["batching"]["off"]["2"]["tiles_per_forward"] == 1
    assert set(r["throughput_ratio_on_vs_off"]) == {"1", "2"}
    own = r["model_own_time"]
    assert 0 < own["min_s"] <= own["p50_s"] and own["threads"] == 1
    assert own["forward_per_tile_s"] > 0 and own["batch_gain_ceiling"] > 0
    for mode in ("on", "off"):  # what HTTP, the gateway and the handle add to the model's own time
        assert r["serve_overhead_p50_s"][mode] == pytest.approx(r["batching"][mode]["1"]["p50_s"] - own["p50_s"],
                                                                abs=1e-5)  # the JSON line rounds
    # where each level's CPU went, by process: the mode's own model replica did the restoring
    for name, mode in r["batching"].items():
        for level in mode.values():
            cpu = level["cpu"]
            assert cpu["cores_busy"] > 0 and cpu["total_ms_per_request"] > 0
            assert cpu["ms_per_request"][f"replica hsivar-bench-{name}:HSIVARModel"] > 0
            assert cpu["total_ms_per_request"] >= sum(cpu["ms_per_request"].values()) - 1e-3
    assert set(r["cpu_bound_batching"]) == {"1", "2"}
    for b in r["cpu_bound_batching"].values():
        assert b["cpu_per_request_off_s"] > b["forward_s"] > 0
        assert b["ratio_full_passes"] <= b["ratio_free_forward"] and b["ratio_free_forward"] > 1
    # the floors: Serve's path with nothing restored, by the ingress alone and through a handle call
    assert set(r["floors"]) == {"proxy", "handle"}
    for kind, floor in r["floors"].items():
        assert set(floor) == {"1", "2"}
        for level in floor.values():
            assert level["requests"] >= 1 and not level["errors"] and level["p50_s"] > 0
            assert level["cpu"]["ms_per_request"][f"replica hsivar-bench-floor-{kind}:EchoGateway"] > 0
    assert "replica hsivar-bench-floor-handle:Echo" in r["floors"]["handle"]["1"]["cpu"]["ms_per_request"]


def test_train_bench_one_vs_two_workers(launched: dict[str, _Launched]) -> None:
    r = _report(launched, "train")
    assert r["steps"] == 2 and r["timed_steps"] == 1
    assert set(r["workers"]) == {"1", "2"}
    for per_stage in r["workers"].values():
        fig = per_stage["vqvae"]
        assert fig["samples_per_s"] > 0 and fig["timed_steps"] == 1 and fig["stage_wall_s"] > 0
    assert set(r["speedup"]["2"]) == {"vqvae"} and r["scaling_efficiency"]["2"]["vqvae"] > 0


def _run_bench(name: str, *args: str) -> dict[str, Any]:
    """Run a bench without Ray to completion; → the JSON object on its last stdout line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"bench/{name}.py failed ({proc.returncode}):\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_step_bench_times_every_stage() -> None:
    r = _run_bench("step", "--bands", "8", "--batch-sizes", "2", "--steps", "1")
    assert r["device"] == "cpu" and r["tile"] == 32
    assert set(r["results"]) == {f"fp32/batch_2/{s}" for s in ("vqvae", "var", "decoder")}
    for fig in r["results"].values():
        assert fig["seconds_per_step"] > 0 and fig["samples_per_s"] > 0 and math.isfinite(fig["loss"])


def test_precision_bench_scores_both_precisions_on_every_family(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from hsivar.models.hsivar import HSIVAR
    from hsivar.presets import preset
    from hsivar.publish import save_published

    torch.manual_seed(0)
    model = save_published(HSIVAR(preset("tiny", bands=8)).eval(), tmp_path / "model", stage="decoder")
    data = tmp_path / "test"
    data.mkdir()
    np.save(data / "cube.npy", np.random.default_rng(0).random((8, 32, 32), dtype=np.float32))
    r = _run_bench("precision", "--model", str(model), "--data", str(data), "--device", "cpu")
    assert r["cubes"] == 1 and set(r["families"]) == {"gaussian", "complex", "blur", "sr", "inpaint", "bandmiss"}
    # The fp32 and degraded figures equal the protocol scored here directly: Restorer.restore of each seeded
    # case, scored by evaluate_record (bf16 is a CUDA path: on the CPU both columns are fp32, nothing to check).
    from collections import defaultdict

    from hsivar.degrade import degrade_for_test, test_protocol
    from hsivar.metrics import evaluate_record
    from hsivar.restore import Restorer

    cube = np.load(data / "cube.npy")
    clean = (cube - cube.min()) / (cube.max() - cube.min())
    restorer = Restorer.from_published(model)
    want: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for case in test_protocol():
        degraded, record = degrade_for_test(clean, case.task, case.level, index=0)
        degraded = np.asarray(degraded, np.float32)
        out = restorer.restore(degraded, task="auto", value_range=(0.0, 1.0)).cube
        want[case.task]["degraded"].append(evaluate_record(degraded, clean, record).psnr)
        want[case.task]["fp32"].append(evaluate_record(out, clean, record).psnr)
    for task, fam in r["families"].items():
        assert fam["degraded"] == pytest.approx(np.mean(want[task]["degraded"]), abs=1e-4), task
        assert fam["fp32"] == pytest.approx(np.mean(want[task]["fp32"]), abs=1e-3), task


def test_consistency_bench_times_every_step_of_every_family() -> None:
    r = _run_bench("consistency", "--bands", "8", "--size", "40", "--repeats", "1")
    assert r["device"] == "cpu" and r["size"] == 40 and r["tile"] == 32
    assert set(r["families"]) == {"gaussian", "complex", "blur", "sr", "inpaint", "bandmiss"}
    for fam in r["families"].values():
        assert fam["tiles"] == 4 and set(fam["share"]) == {"prepare", "blur_width", "model", "consistency"}
        assert math.isclose(sum(fam["share"].values()), 1.0) and all(v > 0 for v in fam["ms_per_tile"].values())


def test_inference_bench_times_every_variant_and_every_part_of_the_model() -> None:
    r = _run_bench("inference", "--batch-sizes", "1,2", "--repeats", "1", "--parts", "--kernels", "5")
    assert r["preset"] == "tiny" and r["device"] == "cpu"
    flops = r["counted_tflops_per_cube"]
    assert 0 < flops["dag_kv"] < flops["cfg_kv"] and flops["dag_kv"] < flops["diffusion_100_steps"]
    measured = r["measured"]["fp32"]
    assert set(measured["dag_kv"]) == {"batch_1", "batch_2"} and set(measured["diffusion_100_steps"]) == {"batch_1"}
    for bs, parts in r["parts_ms_per_cube"]["fp32"].items():
        assert set(parts) == {"condition", "guidance", "transformer", "refiner", "decoder", "fusion", "total"}, bs
        assert all(v > 0 for v in parts.values())
        assert sum(v for k, v in parts.items() if k != "total") <= parts["total"] * 1.05  # parts of the whole
        ops = r["costliest_ops"]["fp32"][bs]  # on the CPU: aten operators by their own CPU time
        assert len(ops["top"]) == 5 and all(o["name"].startswith("aten::") for o in ops["top"])
        times = [o["ms_per_cube"] for o in ops["top"]]
        assert times == sorted(times, reverse=True) and times[-1] > 0
        assert 0 < sum(times) <= ops["busy_ms_per_cube"] <= parts["total"] * 1.05 and ops["calls_per_cube"] > 100
    ops = r["costliest_ops"]["fp32"]  # a batch of 2 calls about the same operators as one tile: half as many per cube
    assert ops["batch_2"]["calls_per_cube"] < 0.6 * ops["batch_1"]["calls_per_cube"]


def test_graph_parity_bench_finds_the_operators_that_compute_differently() -> None:
    """On the CPU (no graphs) the second restoration runs with oneDNN off: its convolutions take PyTorch's own
    kernels, so they, and nothing before them, compute differently on equal inputs; re-run alone, the first gives
    each restoration's output under its own setting. The eager path against itself: every call equal."""
    r = _run_bench("graph_parity", "--bands", "8", "--batch-size", "2")
    assert r["against"] == "no-mkldnn" and r["precision"] == "fp32" and r["device"] == "cpu"
    assert r["calls"] > 500 and r["second_calls"] == r["calls"] and r["mismatch"] is None
    assert 0 < r["differing"] < r["calls"]
    first = r["first_differing"]
    assert first["op"] == "aten.convolution.default" and first["inputs_equal"] and first == r["roots"][0]
    assert {root["op"] for root in r["roots"]} == {"aten.convolution.default"}
    assert r["isolated"] == {"op": "aten.convolution.default",
                             "verdicts": {"onednn_on": "first", "onednn_off": "second"}}

    control = _run_bench("graph_parity", "--bands", "8", "--batch-size", "2", "--against", "eager")
    assert control["calls"] == r["calls"] and control["differing"] == 0 and control["roots"] == []
    assert control["token_agreement"] == 1.0 and "isolated" not in control


def test_families_bench_reports_every_family_side_by_side() -> None:
    r = _run_bench("families", "--bands", "8", "--batch-sizes", "1,2", "--repeats", "1")
    assert r["bench"] == "families" and set(r["results"]) == {"hsivar", "restorevar", "varformer"}
    for fig in r["results"].values():
        assert fig["params_m"] > 0 and fig["tflops_per_tile"] > 0
        assert set(fig["timing"]) == {"batch_1", "batch_2"}
        assert all(t["ms_per_tile"] > 0 for t in fig["timing"].values())
    # the LRT is RestoreVAR's refiner: a transformer, larger than HSI-VAR's NAFNet refiner
    parts = {f: fig["params_by_part_m"] for f, fig in r["results"].items()}
    assert parts["restorevar"]["refiner"] > parts["hsivar"]["refiner"]
    assert parts["varformer"]["restorer"] > 0 and parts["hsivar"]["restorer"] == parts["restorevar"]["restorer"] == 0
