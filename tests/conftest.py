"""Shared fixtures: tiny model configs (CPU, seconds) and reproducible seeds."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
torch.set_num_threads(2)

from hsivar.config import ModelConfig, preset  # noqa: E402
from hsivar.models.hsivar import HSIVAR  # noqa: E402

TINY_BANDS = 8


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    """The tiny preset with 8 bands: 32×32 tiles, a 16×16 latent with 8 scales, a 2-block transformer."""
    return preset("tiny", bands=TINY_BANDS)


@pytest.fixture
def tiny_model(tiny_cfg: ModelConfig) -> HSIVAR:
    """A randomly initialised tiny model in eval mode (seeded)."""
    torch.manual_seed(0)
    return HSIVAR(tiny_cfg).eval()


# ------------------------------------------------------------------------------------------ platform
# Real components, started once per test session: a moto S3 server on loopback (s3:// paths), a local
# Ray cluster (started after the S3 variables are set, so its workers inherit them), SQLite MLflow.


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A local S3-compatible server (moto) on 127.0.0.1; → its endpoint URL, exported as AWS_ENDPOINT_URL."""
    from hsivar_platform.storage import local_s3_server

    with local_s3_server("testing", "testing") as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket for one test; → ``s3://<name>``."""
    import re
    import uuid

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}).mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Local Ray, once per session: 4 logical CPUs on 2 cores (so 2 train workers do not starve Ray
    Data), a capped object store, no dashboard; ``address="local"`` so a stale cluster file cannot
    hijack it."""
    import ray

    os.environ.setdefault("RAY_ACCEPT_CLOUD_OBJECT_STORE_MEMORY_LIMIT", "1")
    ray.init(address="local", num_cpus=4, object_store_memory=600 * 1024**2, include_dashboard=False,
             log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    """A real SQLite MLflow tracking store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def published_tiny(tmp_path_factory: pytest.TempPathFactory):
    """A published (randomly initialised, seeded) tiny 8-band model directory: config.json + model.safetensors."""
    from hsivar.publish import save_published

    torch.manual_seed(0)
    model = HSIVAR(preset("tiny", bands=TINY_BANDS)).eval()
    return save_published(model, tmp_path_factory.mktemp("published") / "tiny8", stage="decoder")
