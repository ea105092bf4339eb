"""The Serve app's model deployment, :class:`HSIVARModel`: the published model, its model thread and the tile
batcher shared by concurrent requests; and the app's settings (:class:`ServeSettings`, ``args:`` of
``deploy/serve.yaml``). The HTTP gateway (:mod:`hsivar_platform.serve.app`) calls it through a deployment handle,
so a lost model process is answered by the gateway (503 + Retry-After) instead of the proxy's 500."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from hsivar.models.var import GREEDY
from hsivar.restore import PreparedCube, RestoredSamples, Restorer

log = logging.getLogger("ray.serve")

MODEL_DEPLOYMENT_NAME = "HSIVARModel"
"""The model's deployment (the one that scales)."""


class ServeSettings(BaseModel):
    """Arguments of the Serve app (``args:`` in ``deploy/serve.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="published model: local dir, s3:// prefix, models:/NAME/VERSION or @ALIAS")
    device: str = Field("auto", description="auto (cuda when the replica has a GPU), cpu or cuda")
    max_request_bytes: int = Field(64 * 2**20, gt=0, description="largest request body; 413 above")
    max_cube_values: int = Field(2**26, gt=0, description="largest cube C·H·W per request; 413 above")
    max_samples: int = Field(8, ge=1, description="largest samples= per request; 422 above")
    max_batch_size: int = Field(8, ge=1, description="tiles per forward pass, across requests")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="how long a batch waits to fill")
    auth_token_env: str | None = Field(
        "HSIVAR_SERVE_TOKEN", description="environment variable holding the bearer token; when it is set "
        "(non-empty) in the replica, /v1/* require 'Authorization: Bearer <token>'")
    model_cache_dir: str | None = Field(None, description="where remote models are copied (default: a temp dir)")


@dataclass
class _TileJob:
    tile: torch.Tensor  # (C, S, S) in [0, 1]
    key: str  # task spec as JSON: tiles with the same key share a forward pass
    task: Any
    estimate: torch.Tensor | None = None  # (C, S, S) the tile's first estimate (models with first_estimate)


@dataclass
class _TileResult:
    cube: torch.Tensor  # (C, S, S) in [0, 1]
    weights: torch.Tensor  # (N,) task weights


@serve.deployment(name=MODEL_DEPLOYMENT_NAME, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1},
                  graceful_shutdown_timeout_s=30)
class HSIVARModel:
    """One model replica: the published model, its single model thread and the tile batcher.

    Called by :class:`HSIVARService` only (no HTTP route); each greedy tile is one call (:meth:`restore_tile`),
    hence the high ``max_ongoing_requests``.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        """Load the model of ``settings`` (:class:`ServeSettings` as a dict) on its device."""
        from hsivar_platform.model_uri import model_version, resolve_model

        self.settings = ServeSettings.model_validate(settings)
        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        local = resolve_model(self.settings.model, self.settings.model_cache_dir)
        self.restorer = Restorer.from_published(local, device=device)
        self.version = model_version(self.settings.model, local)
        # The model's KV cache is module state: one model thread per replica.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsivar-model")
        self._stats_lock = threading.Lock()
        self._stats = {"batches": 0, "max_batch": 0}
        self._restore_batch.set_max_batch_size(self.settings.max_batch_size)
        self._restore_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        log.info("hsivar model replica ready: %s (version %s) on %s", self.settings.model, self.version, device)

    def stats(self) -> dict[str, Any]:
        """This replica's counters: ``batches`` (forward passes), ``max_batch`` (most tiles in one), and its
        ``device``."""
        with self._stats_lock:
            return {**self._stats, "device": self.device}

    async def observe_blur(self, prep: PreparedCube, task: Any) -> PreparedCube:
        """:meth:`hsivar.restore.Restorer.observe_blur` on the model thread (the blur width, blind deblurring)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, partial(self.restorer.observe_blur, prep, task))

    async def restore_tile(self, job: _TileJob) -> _TileResult:
        """One greedy tile (C, S, S), restored in a forward pass shared with the tiles of concurrent requests."""
        return await self._restore_batch(job)

    async def restore_sampled(self, prep: PreparedCube, task: Any, samples: int, seed: int) -> RestoredSamples:
        """:meth:`hsivar.restore.Restorer.restore_prepared` with ``samples`` seeded decodings (sample i: seed + i),
        on the model thread; → the blended samples (samples, C, H, W) in [0, 1] and the task weights."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, partial(
            self._restore_sampled, prep, task, samples, seed))

    def _restore_sampled(self, prep: PreparedCube, task: Any, samples: int, seed: int) -> RestoredSamples:
        out = self.restorer.restore_prepared(prep, task, samples=samples, seed=seed,
                                             batch_size=self.settings.max_batch_size)
        with self._stats_lock:
            self._stats["batches"] += -(-len(prep.coords) // self.settings.max_batch_size) * samples
        return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _restore_batch(self, jobs: list[_TileJob]) -> list[_TileResult]:
        """Restore single tiles from any number of requests in shared forward passes (greedy)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, self._run_jobs, jobs)

    def _run_jobs(self, jobs: list[_TileJob]) -> list[_TileResult]:
        results: list[_TileResult | None] = [None] * len(jobs)
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.key, []).append(i)
        for idx in groups.values():
            estimates = [jobs[i].estimate for i in idx]
            x0 = None if any(e is None for e in estimates) else torch.stack(estimates)  # type: ignore[arg-type]
            cubes, weights = self.restorer.forward(torch.stack([jobs[i].tile for i in idx]), jobs[idx[0]].task,
                                                   GREEDY, estimate01=x0)
            for j, i in enumerate(idx):
                results[i] = _TileResult(cubes[j], weights[j])
        with self._stats_lock:
            self._stats["batches"] += len(groups)
            self._stats["max_batch"] = max(self._stats["max_batch"], len(jobs))
        return results  # type: ignore[return-value]


__all__ = ["MODEL_DEPLOYMENT_NAME", "HSIVARModel", "ServeSettings"]
