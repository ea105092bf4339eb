"""Helpers shared by the Ray benchmarks (bench/pipeline.py, bench/serve.py, bench/train.py).

Not a benchmark itself: the machine description every bench puts in its JSON line, the local Ray
they all start, the embedded S3 server and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# Benchmarks never reach the network: no Hugging Face lookups, no EC2 metadata probes by botocore.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """What the figures were measured on: CPU model and cores, memory, torch / Ray / Python versions, device,
    and the system load average when called (at the end of a run)."""
    import ray

    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
        "os": platform.platform(terse=True), "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }
    try:  # others' work on a shared machine: read the figures with this in mind
        info["load_average_1_5_15m"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def check_device(device: str) -> None:
    """Exit with a message when ``device`` is cuda but no CUDA device is visible."""
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but no CUDA device is visible")


def init_ray(num_cpus: int | None = None, object_store_bytes: int = 600_000_000) -> None:
    """Start a fresh local Ray (never attach to a running cluster) through :func:`hsivar_platform.ray_runtime.init`,
    its driver-side logs in a temporary folder and the workers' output not echoed (it would interleave with
    the figures). ``num_cpus`` logical CPUs, default max(4, 2 × cores)."""
    import logging
    import tempfile

    from hsivar_platform import ray_runtime

    ray_runtime.init("local", num_cpus=num_cpus, object_store_mb=object_store_bytes // 2**20,
                     log_dir=tempfile.mkdtemp(prefix="hsivar-bench-logs-"), worker_output=False)
    for name in ("mlflow",):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def local_s3() -> Iterator[str]:
    """A local S3-compatible server on 127.0.0.1 (:func:`hsivar_platform.testing.local_s3_server`); → endpoint URL.

    Call it before :func:`init_ray`: Ray workers inherit the driver's environment.
    """
    from hsivar_platform.testing import local_s3_server

    with local_s3_server("bench", "bench") as endpoint:
        yield endpoint


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """What waits for ``device``'s queued work before a clock is read: ``torch.cuda.synchronize`` on CUDA, a no-op
    on the CPU."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def call_times(fn: Callable[[], Any], repeats: int, device: torch.device | str) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, ``device`` synchronised before the first and after each."""
    sync = device_sync(device)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def median_time(fn: Callable[[], Any], repeats: int, device: torch.device | str) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls (:func:`call_times`) after two warm-up calls (the first
    compiles / allocates, the second lets the allocator and thread pools settle)."""
    fn()
    fn()
    times = call_times(fn, repeats, device)
    return sorted(times)[len(times) // 2]


def token_agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The share of equal tokens over every scale of two decodings ([(B, p_k²)] each)."""
    return float(torch.cat([(x == y).flatten() for x, y in zip(a, b)]).float().mean())


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def temp_dir(prefix: str, keep: bool) -> Any:
    """A temporary directory context (``keep=True``: created, printed and left in place)."""
    if keep:
        path = tempfile.mkdtemp(prefix=prefix)
        print(f"work directory (kept): {path}")

        @contextmanager
        def kept() -> Iterator[str]:
            yield path

        return kept()
    return tempfile.TemporaryDirectory(prefix=prefix)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def json_line(report: dict[str, Any]) -> str:
    """``report`` as one line of strict JSON: floats to 6 significant digits, NaN / inf as null."""
    return json.dumps(_clean(report), allow_nan=False)


def bench_parser(doc: str | None, model_option: bool = False) -> argparse.ArgumentParser:
    """The options every bench shares: ``--preset``, ``--bands``, ``--device`` (and ``--model`` if asked)."""
    from hsivar.presets import PRESETS

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default="tiny")
    ap.add_argument("--bands", type=int, default=31)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    if model_option:
        ap.add_argument("--model", help="published model URI (default: a fresh --preset model in a temp folder)")
    return ap


def publish_fresh_model(name: str, bands: int, out: Path) -> str:
    """Publish a freshly initialised (seed 0) ``name`` preset with ``bands`` bands into ``out``; → its path."""
    from hsivar.models.hsivar import HSIVAR
    from hsivar.presets import preset
    from hsivar.publish import save_published

    torch.manual_seed(0)
    return str(save_published(HSIVAR(preset(name, bands=bands)).eval(), out, stage="decoder"))
