"""Fixtures of the platform's tests: real components started once per test session — a local Ray
(through :func:`hsivar_platform.ray_runtime.init`, after the S3 server so its workers inherit the
endpoint), SQLite MLflow stores, a published tiny model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hsivar.models.hsivar import HSIVAR
from hsivar.presets import preset

TINY_BANDS = 8


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Local Ray, once per session: 4 logical CPUs on 2 cores (so 2 train workers do not starve Ray
    Data), a 600 MiB object store, Ray's log lines in the session's temp folder."""
    import ray
    from hsivar_platform import ray_runtime

    base = tmp_path_factory.mktemp("ray")
    ray_runtime.init(num_cpus=4, object_store_mb=600, log_dir=base / "logs", temp_dir=base)
    yield
    ray.shutdown()


@pytest.fixture
def fault_proxy(s3_server: str) -> Iterator[Any]:
    """A fault-injecting TCP proxy in front of the local S3 server (``tests/platform/fault_proxy.py``); point a
    job at it with ``AWS_ENDPOINT_URL=<proxy>.url``."""
    import importlib.util
    import sys

    name = "hsivar_tests_fault_proxy"
    module = sys.modules.get(name)
    if module is None:  # registered before it runs: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fault_proxy.py"))
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    proxy = module.FaultProxy(int(s3_server.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A real SQLite MLflow tracking store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def published_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published (randomly initialised, seeded) tiny 8-band model directory: config.json + model.safetensors.

    Its output head is switched on: an untrained head returns the classical first estimate exactly, so a fresh
    model's restorations would not depend on its weights (a wrong model, task or tile batching would pass every
    comparison with :class:`~hsivar.restore.Restorer`); here half of each output is the decoder's, plus the head's.
    It carries a calibrated uncertainty (coefficients that differ per task, so their mixing by task weights shows).
    """
    from hsivar.publish import save_published

    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=TINY_BANDS)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.fusion.gate.weight.fill_(0.5)
        model.fusion.ending.weight.copy_(0.02 * torch.randn(model.fusion.ending.weight.shape, generator=g))
    model.set_uncertainty(tuple((0.5 * k, 0.5, 1.0, 1.0, 1e-4 * k) for k in range(1, len(model.dag.tasks) + 1)))
    return save_published(model, tmp_path_factory.mktemp("published") / "tiny8", stage="decoder")


def _smooth_cube(shape: tuple[int, int, int], scale: float = 1.0) -> np.ndarray:
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    bands = np.linspace(0, 1, c)[:, None, None]
    return (scale * (0.5 + 0.3 * np.sin(3 * xx + 2 * bands) * np.cos(2 * yy - bands))).astype(np.float32)


@pytest.fixture(scope="session")
def smooth_cube() -> Callable[..., np.ndarray]:
    """``smooth_cube((C, H, W), scale)`` → a smooth, noise-free float32 cube in [0.2, 0.8]·scale: every entry it
    observes counts as exact, so the kept mask of its restoration is exactly its observed entries."""
    return _smooth_cube
