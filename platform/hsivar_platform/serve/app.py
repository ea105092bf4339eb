"""The Ray Serve HTTP app: restore cubes sent as ``.npy``, GeoTIFF or HDF5 bytes (and PNG / JPEG images to a model
of 1 or 3 bands).

Two deployments in one application: :class:`HSIVARService` (the HTTP gateway: FastAPI ingress, auth,
limits, decoding, encoding; no weights) and :class:`HSIVARModel` (the model, its one
model thread and the tile batcher), which the gateway calls through a ``DeploymentHandle``. They live in
different processes so that a lost model replica is answered for: routes::

    POST /v1/restore   body: the cube (Content-Type application/x-npy, image/tiff, application/x-hdf5, image/png or
                              image/jpeg)
                       query: task (auto | family | gaussian:0.7,blur:0.3), tile, overlap, samples, seed,
                              value_range (LO,HI input units mapped to [0, 1]; default the cube's min–max, an
                              image's full dtype range), format (npy | tiff | h5 | png | jpg; default: the
                              request's; an image holds 1 or 3 bands of its dtype), dtype (source | float32),
                              uncertainty (true: add dataset "std", HDF5 only: the calibrated error bar of a
                              calibrated model, else the std over samples ≥ 2), dataset (HDF5 input),
                              bad_bands (0-based indices, e.g. 3,7: bands not observed, synthesised)
                       → the restored cube in the requested format, headers X-HSIVAR-Task (the task used),
                         X-HSIVAR-Task-Weights, X-HSIVAR-Tiles, X-HSIVAR-Seconds, Server-Timing,
                         X-HSIVAR-Kept-Entries (entries holding the request's values bit for bit),
                         X-HSIVAR-Observation (JSON: missing_fraction, missing_bands, ...), X-HSIVAR-Uncertainty
                         (with uncertainty=true: calibrated | sample-spread); HDF5 answers add
                         dataset "kept" (uint8, 1 = kept as observed, 0 = synthesised or restored)
    GET  /v1/model     bands, wavelengths, tasks, tile, preset, model family, version, limits
    GET  /healthz      {"status": "ok"} (no auth, for probes)

Entries a request marks as not observed — ``bad_bands``, a GeoTIFF body's internal mask, an HDF5 body's
``mask`` dataset (nonzero = observed) or bad band list ``bbl`` (:mod:`hsivar.io.masks`) — are synthesised;
the other exactly observed entries come back bit for bit.

Errors are JSON ``{"error": message, "status": code}``: 400 not a cube / corrupt body / a body's mask of
the wrong shape, 401 missing or wrong bearer token, 413 body or cube over the configured size, 415
unsupported media type, 422 wrong band count, shape, NaN/Inf values, options (``bad_bands`` not integers
or out of range; a response format that cannot hold the answer, e.g. dtype=float32 as PNG) or a mask that
leaves nothing observed, 503 with ``Retry-After`` (seconds) when the model
replica serving the request was lost (its process died; Serve restarts it and queues new calls until it is back).
An unexpected fault answers 503 (and is logged); it never takes the replica down.

A request goes through the one restoration path of :mod:`hsivar.restore` (prepare → model → blend →
finish), so it is restored exactly like :meth:`hsivar.restore.Restorer.restore`. The gateway reads, checks,
decodes and encodes (what a request's answer codes need: :class:`hsivar.restore.RestoreSpec`, from the model's
``config.json``); the model deployment runs the restoration in one call per request
(:meth:`HSIVARModel.restore`): preparation and the first estimate, :meth:`~hsivar.restore.Restorer.observe`,
the forward passes, blending, consistency and finishing, so all the per-request compute scales with the model
replicas. A greedy request's tiles go to the model's adaptive batcher (:mod:`hsivar_platform.serve.batcher`: no
wait when the model is idle; tiles that arrive while a pass runs share the next
:meth:`~hsivar.restore.Restorer.forward` pass, across requests); sampled requests (``samples > 1``) run
:meth:`~hsivar.restore.Restorer.restore_prepared` there with their own seeded generators. The model runs in
one thread per model replica (its KV cache is module state), off the event loop, so health checks stay
responsive. ``GET /v1/model``'s ``stats`` merge the gateway's counters (requests, tiles, errors) with those
of the model replica that answers (batches, max_batch). ``Server-Timing`` gives each request's phases: read,
decode, model (and the replica's own: prepare, observe, restore, blend), encode, total.

``deploy/serve.yaml`` deploys :func:`app_builder` (``hsivar_platform.serve:app_builder``); ``hsivar serve``
calls :func:`build_app`. Scaling options (replicas, autoscaling, CPUs/GPUs) apply to :class:`HSIVARModel`;
the gateway is light (a quarter CPU: HTTP, decoding and encoding) with its own options.
"""

import asyncio
import copy
import hmac
import json
import logging
import os
import threading
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.deployment import Application
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from hsivar.publish import read_config
from hsivar.restore import (
    RestoreInputError,
    RestoreSpec,
    parse_value_range,
    resolve_overlap,
)
from hsivar.tasks import dominant_task, parse_task
from hsivar_platform.serve.model import (
    MODEL_DEPLOYMENT_NAME,
    HSIVARModel,
    ModelAnswer,
    RestoreRequest,
    ServeSettings,
)
from hsivar_platform.serve.payload import (
    RESPONSE_TYPES,
    PayloadError,
    check_output,
    decode_cube,
    encode_cube,
    media_format,
    output_format,
    parse_bad_bands,
    request_missing,
)

log = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "HSIVARService"
"""The HTTP gateway's deployment (FastAPI ingress, no weights)."""
RETRY_AFTER_S = 5
"""``Retry-After`` (seconds) of the 503 answered when the model replica was lost: about a replica's restart."""
MODEL_STATS_TIMEOUT_S = 2.0
"""How long ``GET /v1/model`` waits for the model replica's counters before answering the gateway's alone."""


class _ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class _ModelLost(_ApiError):
    """The model replica serving a call was lost: 503 with Retry-After (logged once per request)."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class _Timing:
    """The phases of one request for its ``Server-Timing`` header: each :meth:`mark` ends the phase named."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []
        self.last = time.perf_counter()

    def mark(self, name: str, inner: dict[str, float] | None = None) -> None:
        """End phase ``name``; ``inner``: seconds of its own parts (the model replica's phases), listed after it."""
        now = time.perf_counter()
        self.marks.append((name, now - self.last))
        self.marks.extend((inner or {}).items())
        self.last = now

    def header(self, t0: float) -> str:
        """``name;dur=ms`` per phase, then ``total`` (from ``t0``, the request's start in the gateway)."""
        parts = [*self.marks, ("total", self.last - t0)]
        return ", ".join(f"{name};dur={s * 1e3:.1f}" for name, s in parts)


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


def _lost_model_replica(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by a call to the model deployment) means the model replica was lost — its actor
    died or is unreachable, or Serve has none of the deployment to route to — rather than a fault of the request
    (which the model replica answers for itself). Ray wraps an upstream actor's death (``RayTaskError.cause``,
    a ``RayServeException``'s ``__cause__``): followed."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        # RayActorError: ActorDiedError (SIGKILL, OOM) and ActorUnavailableError (unreachable for now)
        if isinstance(cur, RayActorError | ReplicaUnavailableError | DeploymentUnavailableError):
            return True
        cur = getattr(cur, "cause", None) or cur.__cause__
    return False


def _model_fault(exc: BaseException) -> BaseException:
    """A fault the model deployment raised, as the gateway handles it: a request error raised there
    (:class:`RestoreInputError`, e.g. a seed out of range) unwrapped from Ray's ``RayTaskError`` so that its own
    message (not Ray's traceback) is answered; anything else unchanged (an internal error: 503, logged)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, RestoreInputError) else exc


# Everything the deployment classes use must be defined above them: Serve serialises a class when it
# is decorated.
api = FastAPI(title="hsivar", description="All-in-one hyperspectral restoration (HSI-VAR)")


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.25},
                  graceful_shutdown_timeout_s=30)
@serve.ingress(api)
class HSIVARService:
    """One gateway replica: the HTTP routes, auth, limits, decoding and encoding; the restoration goes to
    :class:`HSIVARModel` through ``model`` (a ``DeploymentHandle``), one call per request."""

    def __init__(self, settings: dict[str, Any], model: DeploymentHandle) -> None:
        """``settings``: :class:`ServeSettings` as a dict; ``model``: the handle of the app's :class:`HSIVARModel`.
        Reads the model's ``config.json`` only (no weights)."""
        from hsivar_platform.model_uri import model_version, resolve_model

        self.settings = ServeSettings.model_validate(settings)
        self.model = model
        local = resolve_model(self.settings.model, self.settings.model_cache_dir)
        cfg, doc = read_config(local)
        self.spec = RestoreSpec(cfg)
        self.version = model_version(self.settings.model, local)
        env = self.settings.auth_token_env
        self._token = (os.environ.get(env) or None) if env else None
        self.info = {
            "model": self.settings.model, "version": self.version, "preset": cfg.name, "family": cfg.family,
            "stage": doc.get("stage"),
            "format_version": doc.get("format_version"), "metadata": doc.get("metadata", {}),
            "bands": cfg.vqvae.bands, "wavelengths": list(cfg.wavelengths) if cfg.wavelengths else None,
            "tasks": list(self.spec.tasks), "tile": self.spec.tile,
            "default_overlap": self.spec.tile // 4, "device": self.settings.device,
            "auth": self._token is not None,
            "hsivar_version": _hsivar_version(),
            "limits": {"max_request_bytes": self.settings.max_request_bytes,
                       "max_cube_values": self.settings.max_cube_values,
                       "max_samples": self.settings.max_samples, "max_batch_size": self.settings.max_batch_size},
        }
        self._stats_lock = threading.Lock()
        self.stats = {"requests": 0, "tiles": 0, "errors": 0}
        log.info("hsivar gateway ready: %s (version %s), auth %s", self.settings.model, self.version,
                 "on" if self._token else "off")

    # ------------------------------------------------------------------------------------- routes

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """Liveness/readiness of the gateway (no auth, for probes); the model replicas have their own checks."""
        return JSONResponse({"status": "ok", "model": self.settings.model, "version": self.version})

    @api.get("/v1/model")
    async def model_info(self, request: Request) -> JSONResponse:
        """What this endpoint restores: bands, wavelengths, tasks, tile, preset, family, version, limits, counters (the
        gateway's, merged with the answering model replica's when it answers within a short timeout)."""
        try:
            self._authorize(request)
        except _ApiError as exc:
            return _error(exc.status, exc.message, exc.headers)
        with self._stats_lock:
            stats: dict[str, Any] = dict(self.stats)
        info = dict(self.info)
        response = self.model.stats.remote()
        try:
            model_stats = await asyncio.wait_for(response, MODEL_STATS_TIMEOUT_S)
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception:  # the model replica is restarting or busy: the gateway's own counters (best effort)
            response.cancel()
        else:
            info["device"] = model_stats.pop("device", info["device"])
            stats.update(model_stats)
        return JSONResponse({**info, "stats": stats})

    @api.post("/v1/restore")
    async def restore(self, request: Request) -> Response:
        """Restore the cube in the body; see the module docstring for parameters and status codes."""
        try:
            return await self._restore(request)
        except _ApiError as exc:
            self._count("errors")
            if isinstance(exc, _ModelLost):
                log.warning("the model replica was lost during a request; answered 503 with Retry-After")
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

    async def _call_model(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on a model replica — every call to :class:`HSIVARModel` goes through here.

        A lost model replica (its process died mid-call, or none can be reached) raises a 503 ``_ApiError`` with
        ``Retry-After``: the replica cannot answer for itself, Serve restarts it and queues new calls until it is
        back, so the client retries. A request error raised there comes back as itself; any other fault as is.
        """
        try:
            return await getattr(self.model, method).remote(*args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _lost_model_replica(exc):
                raise _ModelLost(503, "the model replica serving this request was lost; it is being restarted, "
                                     f"retry after {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)}) from None
            raise _model_fault(exc) from None

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
        spec = self.spec
        S = spec.tile
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
        if uncertainty and samples < 2 and not spec.calibrated:
            raise _ApiError(422, "uncertainty=true needs samples ≥ 2 with this model (it has no calibrated "
                                 "uncertainty; the std is the spread over samples)")
        bad_bands = parse_bad_bands(q.get("bad_bands"), spec.bands)

        timing = _Timing()
        body = await self._read_body(request)
        timing.mark("read")
        cube, meta = await asyncio.to_thread(
            decode_cube, body, fmt_in, bands=spec.bands, max_values=self.settings.max_cube_values,
            dataset=q.get("dataset") or None)
        del body
        missing = request_missing(meta, bad_bands, cube.shape)
        dtype = meta.dtype if dtype_opt == "source" else "float32"
        check_output(fmt_out, dtype, cube.shape[0])
        # an image is normalised by its dtype's full range, as the batch job does (a dark photo is not stretched)
        value_range = value_range or meta.extras.get("full_range")
        timing.mark("decode")
        req = RestoreRequest(cube, task, overlap, samples=samples, seed=seed, value_range=value_range,
                             nodata=meta.nodata, missing=missing, wavelengths=meta.wavelengths,
                             uncertainty=uncertainty)
        del cube
        answer: ModelAnswer = await self._call_model("restore", req)
        del req
        timing.mark("model", inner={f"model.{k}": v for k, v in answer.seconds.items()})

        data = await asyncio.to_thread(encode_cube, answer.mean, meta, fmt_out, dtype=dtype, std=answer.std,
                                       kept=answer.kept)
        timing.mark("encode")
        self._count("requests")
        self._count("tiles", answer.tiles)
        weights = answer.task_weights
        used = dominant_task(weights, spec.tasks)
        headers = {
            "X-HSIVAR-Task": used,
            "X-HSIVAR-Task-Weights": json.dumps(dict(zip(self.info["tasks"], (round(w, 6) for w in weights)))),
            "X-HSIVAR-Tiles": str(answer.tiles),
            "X-HSIVAR-Shape": ",".join(map(str, answer.mean.shape)),
            "X-HSIVAR-Seconds": f"{timing.last - t0:.4f}",
            "X-HSIVAR-Model-Version": self.version,
            "X-HSIVAR-Kept-Entries": str(int(answer.kept.sum()) if answer.kept is not None else 0),
            "X-HSIVAR-Observation": json.dumps(answer.observation),
            **({"X-HSIVAR-Uncertainty": "calibrated" if spec.calibrated else "sample-spread"}
               if uncertainty else {}),
            "Server-Timing": timing.header(t0),
        }
        return Response(content=data, media_type=RESPONSE_TYPES[fmt_out], headers=headers)


GATEWAY_OPTIONS: dict[str, Any] = {"num_replicas": 1, "max_ongoing_requests": 32,
                                   "ray_actor_options": {"num_cpus": 0.25}}
"""The gateway's default deployment options: light (decoding and encoding only), one fixed replica."""


def build_app(settings: ServeSettings | dict[str, Any], gateway_options: dict[str, Any] | None = None,
              **deployment_options: Any) -> Application:
    """The Serve application for ``settings``: :class:`HSIVARService` (ingress) bound to :class:`HSIVARModel`.

    ``deployment_options`` go to ``HSIVARModel.options`` — the deployment that scales (``num_replicas``,
    ``autoscaling_config``, ``ray_actor_options``, ``max_ongoing_requests``, …); ``gateway_options`` to
    ``HSIVARService.options`` (default :data:`GATEWAY_OPTIONS`).
    """
    settings = ServeSettings.model_validate(settings)
    args = settings.model_dump()
    model = HSIVARModel.options(**deployment_options) if deployment_options else HSIVARModel
    gateway = HSIVARService.options(**copy.deepcopy(GATEWAY_OPTIONS if gateway_options is None else gateway_options))
    return gateway.bind(args, model.bind(args))


def app_builder(args: dict[str, Any]) -> Application:
    """Application builder for ``import_path: hsivar_platform.serve:app_builder`` (``args``: :class:`ServeSettings`)."""
    return build_app(ServeSettings.model_validate(dict(args or {})))


__all__ = ["DEPLOYMENT_NAME", "GATEWAY_OPTIONS", "HSIVARModel", "HSIVARService", "MODEL_DEPLOYMENT_NAME",
           "RETRY_AFTER_S", "ServeSettings", "app_builder", "build_app"]
