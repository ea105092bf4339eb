"""The Serve app's model deployment, :class:`HSIVARModel`: the published model, its model thread and the tile
batcher shared by concurrent requests; and the app's settings (:class:`ServeSettings`, ``args:`` of
``deploy/serve.yaml``). The HTTP gateway (:mod:`hsivar_platform.serve.app`) calls it through a deployment handle,
so a lost model process is answered by the gateway (503 + Retry-After) instead of the proxy's 500."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from hsivar.models.dag import AutoAmong
from hsivar.models.var import GREEDY
from hsivar.restore import PreparedCube, RestoredSamples, Restorer
from hsivar_platform.serve.batcher import AdaptiveBatcher

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
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="how long an idle model waits for more tiles before a pass (0: at once; tiles that "
        "arrive while a pass runs form the next one either way: hsivar_platform.serve.batcher)")
    auth_token_env: str | None = Field(
        "HSIVAR_SERVE_TOKEN", description="environment variable holding the bearer token; when it is set "
        "(non-empty) in the replica, /v1/* require 'Authorization: Bearer <token>'")
    model_cache_dir: str | None = Field(None, description="where remote models are copied (default: a temp dir)")
    compiled: bool = Field(False, description="on a GPU, replay each greedy restoration from a CUDA graph (the "
                           "first request of each batch size records it); on a CPU, decode through compiled steps")


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


@dataclass
class RestoreRequest:
    """One request as the gateway decoded and checked it (what :meth:`HSIVARModel.restore` needs)."""

    cube: np.ndarray  # (C, H, W) as decoded, input units
    task: Any  # parsed task spec (hsivar.tasks.parse_task)
    overlap: int  # tile overlap, pixels
    samples: int = 1
    seed: int = 0
    value_range: tuple[float, float] | None = None  # input units mapped to [0, 1]; None: the cube's min–max
    nodata: float | None = None
    missing: np.ndarray | None = None  # (C, H, W) bool, entries the request marks as not observed
    wavelengths: tuple[float, ...] | None = None  # band centres (nm) of the body's file, else the model's
    uncertainty: bool = False  # answer the error bar too


@dataclass
class ModelAnswer:
    """What the model replica answers for one request (:meth:`HSIVARModel.restore`)."""

    mean: np.ndarray  # (C, H, W) float32, input units, exactly observed entries bit for bit, nodata as nodata
    std: np.ndarray | None  # (C, H, W) float32 error bar in input units, when asked for
    kept: np.ndarray | None  # (C, H, W) bool, entries holding the request's values bit for bit
    observation: dict[str, Any]  # the observation's summary (missing_fraction, missing_bands, blur width, ...)
    task_weights: list[float]  # (N,) in the model's task order
    tiles: int
    seconds: dict[str, float]  # the replica's phases: prepare, observe (blur width), restore (queue + forward), blend


def _blend(prep: PreparedCube, results: list[_TileResult]) -> RestoredSamples:
    """One request's restored tiles (in the order of ``prep.coords``) blended into one sample made consistent with
    the observation, and the mean task weights."""
    blender = prep.blender()
    blender.add(prep.coords, torch.stack([r.cube for r in results]))
    sample = prep.consistent(blender.result())
    return RestoredSamples(sample[None], torch.stack([r.weights for r in results]).mean(0).tolist())


@serve.deployment(name=MODEL_DEPLOYMENT_NAME, max_ongoing_requests=32, ray_actor_options={"num_cpus": 1},
                  graceful_shutdown_timeout_s=30)
class HSIVARModel:
    """One model replica: the published model, its single model thread and the tile batcher.

    Called by :class:`HSIVARService` only (no HTTP route), once per request (:meth:`restore`); a greedy
    request's tiles are batched adaptively with the tiles of concurrent requests
    (:class:`~hsivar_platform.serve.batcher.AdaptiveBatcher`).
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
        # a pass holds 1..max_batch_size tiles: a CUDA graph per size on a GPU; on a CPU compiled steps, whose
        # batches double under classifier-free guidance
        self.restorer = Restorer.from_published(local, device=device, compiled=self.settings.compiled,
                                                compiled_batch_sizes=2 * self.settings.max_batch_size)
        self.version = model_version(self.settings.model, local)
        # The model's KV cache is module state: one model thread per replica.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsivar-model")
        self._stats_lock = threading.Lock()
        self._stats = {"batches": 0, "max_batch": 0}
        self._batcher: AdaptiveBatcher[_TileJob, _TileResult] = AdaptiveBatcher(
            self._run_jobs, self._model_thread, self.settings.max_batch_size, self.settings.batch_wait_timeout_s)
        log.info("hsivar model replica ready: %s (version %s) on %s", self.settings.model, self.version, device)

    def stats(self) -> dict[str, Any]:
        """This replica's counters: ``batches`` (forward passes), ``max_batch`` (most tiles in one); its ``device``
        and ``torch_threads``."""
        with self._stats_lock:
            return {**self._stats, "device": self.device, "torch_threads": torch.get_num_threads()}

    async def restore(self, req: RestoreRequest) -> ModelAnswer:
        """One request, in one call, through the one restoration path: prepare (normalise, observe, first
        estimate), what only the model can tell (a blur width, haze, an exposure:
        :meth:`hsivar.restore.Restorer.observe`),
        the restoration — greedy (``samples == 1``): the tiles go through the adaptive batcher, sharing forward
        passes with concurrent requests' tiles; sampled: ``samples`` seeded decodings (sample i: seed + i,
        :meth:`~hsivar.restore.Restorer.restore_prepared`) on the model thread — and finish. Everything but the
        forward passes runs off the model thread, so concurrent requests prepare and blend while it runs.

        Raises:
            RestoreInputError: the cube or options cannot be restored (the gateway answers 422).
        """
        loop = asyncio.get_running_loop()
        r, seconds = self.restorer, {}
        t = time.perf_counter()
        prep = await asyncio.to_thread(partial(r.prepare, req.cube, req.overlap, nodata=req.nodata,
                                               value_range=req.value_range, missing=req.missing,
                                               wavelengths=req.wavelengths))
        seconds["prepare"], t = time.perf_counter() - t, time.perf_counter()
        if r.unobserved(prep):  # else observe returns prep unchanged: no model-thread hop
            prep = await loop.run_in_executor(self._model_thread, partial(r.observe, prep, req.task))
            seconds["observe"], t = time.perf_counter() - t, time.perf_counter()
        if req.samples == 1:
            task = r.resolve_task(prep, req.task)  # "auto" among the families the cube leaves plausible
            key = json.dumps(task.tasks if isinstance(task, AutoAmong) else task, sort_keys=True)
            tiles, estimates = await asyncio.to_thread(lambda: (prep.tiles(), prep.estimate_tiles()))
            results = await self._batcher.submit([
                _TileJob(tile, key, task, None if estimates is None else estimates[k]) for k, tile in enumerate(tiles)])
            del tiles, estimates
            seconds["restore"], t = time.perf_counter() - t, time.perf_counter()
            restored = await asyncio.to_thread(_blend, prep, results)
        else:
            restored = await loop.run_in_executor(self._model_thread, partial(
                self._restore_sampled, prep, req.task, req.samples, req.seed))
            seconds["restore"], t = time.perf_counter() - t, time.perf_counter()
        mean, std = await asyncio.to_thread(partial(r.finish, prep, restored, uncertainty=req.uncertainty))
        seconds["blend"] = time.perf_counter() - t
        return ModelAnswer(mean=mean, std=std, kept=prep.kept,
                           observation=prep.observation.summary() if prep.observation is not None else {},
                           task_weights=restored.task_weights, tiles=len(prep.coords), seconds=seconds)

    def _restore_sampled(self, prep: PreparedCube, task: Any, samples: int, seed: int) -> RestoredSamples:
        out = self.restorer.restore_prepared(prep, task, samples=samples, seed=seed,
                                             batch_size=self.settings.max_batch_size)
        with self._stats_lock:
            self._stats["batches"] += -(-len(prep.coords) // self.settings.max_batch_size) * samples
        return out

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


__all__ = ["MODEL_DEPLOYMENT_NAME", "HSIVARModel", "ModelAnswer", "RestoreRequest", "ServeSettings"]
