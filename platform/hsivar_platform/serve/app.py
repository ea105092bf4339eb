"""The Ray Serve HTTP app: restore cubes sent as ``.npy``, GeoTIFF or HDF5 bytes.

Routes (one deployment, :class:`HSIVARService`, FastAPI ingress)::

    POST /v1/restore   body: the cube (Content-Type application/x-npy, image/tiff or application/x-hdf5)
                       query: task (auto | family | gaussian:0.7,blur:0.3), tile, overlap, samples, seed,
                              value_range (LO,HI input units mapped to [0, 1]; default the cube's min–max),
                              format (npy | tiff | h5; default: the request's), dtype (source | float32),
                              uncertainty (true: add dataset "std", HDF5 only: the calibrated error bar of a
                              calibrated model, else the std over samples ≥ 2), dataset (HDF5 input),
                              bad_bands (0-based indices, e.g. 3,7: bands not observed, synthesised)
                       → the restored cube in the requested format, headers X-HSIVAR-Task (the task used),
                         X-HSIVAR-Task-Weights, X-HSIVAR-Tiles, X-HSIVAR-Seconds, Server-Timing,
                         X-HSIVAR-Kept-Entries (entries holding the request's values bit for bit),
                         X-HSIVAR-Observation (JSON: missing_fraction, missing_bands, ...), X-HSIVAR-Uncertainty
                         (with uncertainty=true: calibrated | sample-spread); HDF5 answers add
                         dataset "kept" (uint8, 1 = kept as observed, 0 = synthesised or restored)
    GET  /v1/model     bands, wavelengths, tasks, tile, preset, version, limits
    GET  /healthz      {"status": "ok"} (no auth, for probes)

Entries a request marks as not observed — ``bad_bands``, a GeoTIFF body's internal mask, an HDF5 body's
``mask`` dataset (nonzero = observed) or bad band list ``bbl`` (:mod:`hsivar.io.masks`) — are synthesised;
the other exactly observed entries come back bit for bit.

Errors are JSON ``{"error": message, "status": code}``: 400 not a cube / corrupt body / a body's mask of
the wrong shape, 401 missing or wrong bearer token, 413 body or cube over the configured size, 415
unsupported media type, 422 wrong band count, shape, NaN/Inf values, options (``bad_bands`` not integers
or out of range) or a mask that leaves nothing observed. An unexpected fault answers 503 (and is logged); it
never takes the replica down.

A request goes through the one restoration path of :mod:`hsivar.restore` (prepare → model → blend →
finish), so it is restored exactly like :meth:`hsivar.restore.Restorer.restore`. Greedy requests send
their tiles one by one through a ``@serve.batch`` method, so tiles of concurrent requests share
:meth:`~hsivar.restore.Restorer.forward` passes; sampled requests (``samples > 1``) run
:meth:`~hsivar.restore.Restorer.restore_prepared` with their own seeded generators. The model runs in
one thread per replica (its KV cache is module state), off the event loop, so health checks stay
responsive.

``deploy/serve.yaml`` deploys :func:`app_builder` (``hsivar_platform.serve:app_builder``); ``hsivar serve``
calls :func:`build_app`.
"""

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.deployment import Application

from hsivar.models.dag import AutoAmong
from hsivar.models.var import GREEDY
from hsivar.publish import read_config
from hsivar.restore import (
    PreparedCube,
    RestoredSamples,
    RestoreInputError,
    Restorer,
    parse_value_range,
    resolve_overlap,
)
from hsivar.tasks import dominant_task, parse_task
from hsivar_platform.serve.payload import (
    RESPONSE_TYPES,
    PayloadError,
    decode_cube,
    encode_cube,
    media_format,
    output_format,
    parse_bad_bands,
    request_missing,
)

log = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "HSIVARService"


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


class _ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


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


def _blend(prep: PreparedCube, results: list[_TileResult]) -> RestoredSamples:
    """One request's restored tiles (in the order of ``prep.coords``) blended into one sample made consistent with
    the observation, and the mean task weights (runs in a worker thread, off the event loop)."""
    blender = prep.blender()
    blender.add(prep.coords, torch.stack([r.cube for r in results]))
    sample = prep.consistent(blender.result())
    return RestoredSamples(sample[None], torch.stack([r.weights for r in results]).mean(0).tolist())


def _int(params: Any, name: str, default: int | None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _ApiError(422, f"query parameter {name}={raw!r} is not an integer") from None


def _bool(params: Any, name: str) -> bool:
    raw = (params.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise _ApiError(422, f"query parameter {name}={raw!r} is not a boolean (true / false)")


def _hsivar_version() -> str:
    try:
        return package_version("hsivar")
    except PackageNotFoundError:
        return "unknown"


# Everything the deployment class uses must be defined above it: Serve serialises the class when it
# is decorated.
api = FastAPI(title="hsivar", description="All-in-one hyperspectral restoration (HSI-VAR)")


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=16, ray_actor_options={"num_cpus": 1},
                  graceful_shutdown_timeout_s=30)
@serve.ingress(api)
class HSIVARService:
    """One replica: the model, the tile batcher and the HTTP routes."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from hsivar_platform.model_uri import model_version, resolve_model

        self.settings = ServeSettings.model_validate(settings)
        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        local = resolve_model(self.settings.model, self.settings.model_cache_dir)
        cfg, doc = read_config(local)
        self.restorer = Restorer.from_published(local, device=device)
        self.version = model_version(self.settings.model, local)
        env = self.settings.auth_token_env
        self._token = (os.environ.get(env) or None) if env else None
        self.info = {
            "model": self.settings.model, "version": self.version, "preset": cfg.name, "stage": doc.get("stage"),
            "format_version": doc.get("format_version"), "metadata": doc.get("metadata", {}),
            "bands": cfg.vqvae.bands, "wavelengths": list(cfg.wavelengths) if cfg.wavelengths else None,
            "tasks": list(self.restorer.tasks), "tile": self.restorer.tile,
            "default_overlap": self.restorer.tile // 4, "device": device,
            "auth": self._token is not None,
            "hsivar_version": _hsivar_version(),
            "limits": {"max_request_bytes": self.settings.max_request_bytes,
                       "max_cube_values": self.settings.max_cube_values,
                       "max_samples": self.settings.max_samples, "max_batch_size": self.settings.max_batch_size},
        }
        # The model's KV cache is module state: one model thread per replica.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsivar-model")
        self._stats_lock = threading.Lock()
        self.stats = {"requests": 0, "tiles": 0, "batches": 0, "max_batch": 0, "errors": 0}
        self._restore_batch.set_max_batch_size(self.settings.max_batch_size)
        self._restore_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        log.info("hsivar replica ready: %s (version %s) on %s, auth %s", self.settings.model, self.version,
                 device, "on" if self._token else "off")

    # ------------------------------------------------------------------------------------- routes

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """Liveness/readiness: the model is loaded (no auth, for probes)."""
        return JSONResponse({"status": "ok", "model": self.settings.model, "version": self.version})

    @api.get("/v1/model")
    async def model_info(self, request: Request) -> JSONResponse:
        """What this endpoint restores: bands, wavelengths, tasks, tile, preset, version, limits, counters."""
        try:
            self._authorize(request)
        except _ApiError as exc:
            return _error(exc.status, exc.message, exc.headers)
        with self._stats_lock:
            stats = dict(self.stats)
        return JSONResponse({**self.info, "stats": stats})

    @api.post("/v1/restore")
    async def restore(self, request: Request) -> Response:
        """Restore the cube in the body; see the module docstring for parameters and status codes."""
        try:
            return await self._restore(request)
        except _ApiError as exc:
            self._count("errors")
            return _error(exc.status, exc.message, exc.headers)
        except PayloadError as exc:
            self._count("errors")
            return _error(exc.status, str(exc))
        except RestoreInputError as exc:
            self._count("errors")
            return _error(422, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            self._count("errors")
            log.exception("internal error while restoring a request")
            return _error(503, "internal error while restoring; the replica logged the details, retry later")

    # ------------------------------------------------------------------------------------- internals

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            raise _ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                            {"WWW-Authenticate": "Bearer"})

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += n

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes "
                                 "(use the batch job for larger scenes)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _ApiError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _restore(self, request: Request) -> Response:
        t0 = time.perf_counter()
        self._authorize(request)
        fmt_in = media_format(request.headers.get("content-type"))
        q = request.query_params
        S = self.restorer.tile
        try:
            task = parse_task(q.get("task"))
            overlap = resolve_overlap(S, _int(q, "tile", None), _int(q, "overlap", None))
        except ValueError as exc:
            raise _ApiError(422, str(exc)) from None
        samples = _int(q, "samples", 1)
        if not 1 <= samples <= self.settings.max_samples:
            raise _ApiError(422, f"samples must be in [1, {self.settings.max_samples}], got {samples}")
        seed = _int(q, "seed", 0)
        try:
            value_range = parse_value_range(q.get("value_range"))
        except ValueError as exc:
            raise _ApiError(422, str(exc)) from None
        fmt_out = output_format(q.get("format"), fmt_in)
        dtype_opt = (q.get("dtype") or "source").lower()
        if dtype_opt not in ("source", "float32"):
            raise _ApiError(422, f"dtype must be source or float32, got {dtype_opt!r}")
        uncertainty = _bool(q, "uncertainty")
        if uncertainty and fmt_out != "hdf5":
            raise _ApiError(422, "uncertainty=true needs format=h5 (the std is a second dataset)")
        if uncertainty and samples < 2 and not self.restorer.calibrated:
            raise _ApiError(422, "uncertainty=true needs samples ≥ 2 with this model (it has no calibrated "
                                 "uncertainty; the std is the spread over samples)")
        bad_bands = parse_bad_bands(q.get("bad_bands"), self.restorer.bands)

        body = await self._read_body(request)
        cube, meta = await asyncio.to_thread(
            decode_cube, body, fmt_in, bands=self.restorer.bands, max_values=self.settings.max_cube_values,
            dataset=q.get("dataset") or None)
        del body
        missing = request_missing(meta, bad_bands, cube.shape)
        prep = await asyncio.to_thread(partial(self.restorer.prepare, cube, overlap, nodata=meta.nodata,
                                               value_range=value_range, missing=missing,
                                               wavelengths=meta.wavelengths))
        # the blur width only the model can tell (blind deblurring), on the thread that runs the model
        prep = await asyncio.get_running_loop().run_in_executor(
            self._model_thread, partial(self.restorer.observe_blur, prep, task))
        t_decoded = time.perf_counter()

        if samples == 1:
            task = self.restorer.resolve_task(prep, task)  # "auto" among the families the cube leaves plausible
            key = json.dumps(task.tasks if isinstance(task, AutoAmong) else task, sort_keys=True)
            tiles = await asyncio.to_thread(prep.tiles)
            estimates = await asyncio.to_thread(prep.estimate_tiles)
            results = await asyncio.gather(*[
                self._restore_batch(_TileJob(t, key, task, None if estimates is None else estimates[k]))
                for k, t in enumerate(tiles)])
            del tiles, estimates
            restored = await asyncio.to_thread(_blend, prep, results)
        else:
            loop = asyncio.get_running_loop()
            restored = await loop.run_in_executor(self._model_thread, partial(
                self._restore_sampled, prep, task, samples, seed))
        mean, std = await asyncio.to_thread(self.restorer.finish, prep, restored)
        weights = restored.task_weights
        t_restored = time.perf_counter()

        dtype = meta.dtype if dtype_opt == "source" else "float32"
        data = await asyncio.to_thread(encode_cube, mean, meta, fmt_out, dtype=dtype,
                                       std=std if uncertainty else None, kept=prep.kept)
        t_done = time.perf_counter()
        self._count("requests")
        self._count("tiles", len(prep.coords))
        used = dominant_task(weights, self.restorer.tasks)
        headers = {
            "X-HSIVAR-Task": used,
            "X-HSIVAR-Task-Weights": json.dumps(dict(zip(self.info["tasks"], (round(w, 6) for w in weights)))),
            "X-HSIVAR-Tiles": str(len(prep.coords)),
            "X-HSIVAR-Shape": ",".join(map(str, prep.shape)),
            "X-HSIVAR-Seconds": f"{t_done - t0:.4f}",
            "X-HSIVAR-Model-Version": self.version,
            "X-HSIVAR-Kept-Entries": str(int(prep.kept.sum()) if prep.kept is not None else 0),
            "X-HSIVAR-Observation": json.dumps(prep.observation.summary() if prep.observation is not None else {}),
            **({"X-HSIVAR-Uncertainty": "calibrated" if self.restorer.calibrated else "sample-spread"}
               if uncertainty else {}),
            "Server-Timing": ", ".join(f"{name};dur={ms:.1f}" for name, ms in (
                ("decode", (t_decoded - t0) * 1e3), ("restore", (t_restored - t_decoded) * 1e3),
                ("encode", (t_done - t_restored) * 1e3))),
        }
        return Response(content=data, media_type=RESPONSE_TYPES[fmt_out], headers=headers)

    def _restore_sampled(self, prep: PreparedCube, task: Any, samples: int, seed: int) -> RestoredSamples:
        out = self.restorer.restore_prepared(prep, task, samples=samples, seed=seed,
                                             batch_size=self.settings.max_batch_size)
        self._count("batches", -(-len(prep.coords) // self.settings.max_batch_size) * samples)
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
            self.stats["batches"] += len(groups)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(jobs))
        return results  # type: ignore[return-value]


def build_app(settings: ServeSettings | dict[str, Any], **deployment_options: Any) -> Application:
    """The Serve application for ``settings``; ``deployment_options`` go to ``HSIVARService.options``
    (``num_replicas``, ``autoscaling_config``, ``ray_actor_options``, ``max_ongoing_requests``, …)."""
    settings = ServeSettings.model_validate(settings)
    deployment = HSIVARService.options(**deployment_options) if deployment_options else HSIVARService
    return deployment.bind(settings.model_dump())


def app_builder(args: dict[str, Any]) -> Application:
    """Application builder for ``import_path: hsivar_platform.serve:app_builder`` (``args``: :class:`ServeSettings`)."""
    return build_app(ServeSettings.model_validate(dict(args or {})))


__all__ = ["DEPLOYMENT_NAME", "HSIVARService", "ServeSettings", "app_builder", "build_app"]
