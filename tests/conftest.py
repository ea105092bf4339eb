"""Settings for every test (no network, two torch threads) and the local S3-compatible server.

Library fixtures are in ``tests/hsivar/conftest.py``; Ray, MLflow and published-model fixtures in
``tests/platform/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global random state (torch and numpy's legacy generator), so a
    test that draws without its own generator is still reproducible."""
    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A local S3-compatible server (moto) on 127.0.0.1, once per session; → its endpoint URL, exported
    as AWS_ENDPOINT_URL (start it before Ray: Ray's workers inherit the environment)."""
    from hsivar_platform.testing import local_s3_server

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
