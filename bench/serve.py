"""Serve latency and throughput: the HSI-VAR Ray Serve app over loopback HTTP, request batching on and off.

Starts a local Ray, deploys :func:`hsivar_platform.serve.build_app` (the app ``hsivar serve`` and
``deploy/serve.yaml`` run) on 127.0.0.1 with a fixed number of replicas, once per batching mode (side
by side), and for each concurrency level and mode in turn keeps that many clients posting ``.npy``
cubes to ``/v1/restore`` for ``--seconds``. Reported per level: latency p50 / p95 / p99 (seconds,
successful requests), throughput (requests/s and tiles/s over the level's wall time, in-flight
requests at the deadline included), errors, and from the replica's own counters the mean tiles per
forward pass (how much batching happened).

Batching **on** is the app's default (:mod:`hsivar_platform.serve.batcher`: an idle model starts a pass at
once; tiles that arrive while a pass runs, up to ``max_batch_size``, share the next one); **off** is
``max_batch_size=1, batch_wait_timeout_s=0`` (one forward pass per tile).

The **model's own time** per request is measured in the same run, in the bench's process, before Ray starts:
:meth:`hsivar.restore.Restorer.restore` of the same cube with as many torch threads as a replica reserves
CPUs (median of ``--own-repeats`` calls after one warm-up). ``serve_overhead_p50_s`` = the concurrency-1 p50
latency − that time: what HTTP, the proxy, the gateway, the handle call and decoding / encoding add; the
median ``Server-Timing`` phases of the requests (gateway: read, decode, model, encode, total; the model replica's
own: model.prepare, model.observe, model.restore, model.blend) say where.

Where the CPU goes: around every level the CPU seconds of each process taking part (the model and gateway replicas,
Ray's proxy, raylet, GCS, the controller, this process's clients, the rest of the machine) are read, per completed
request. With every core busy throughput goes as 1 / CPU per request, so with both modes measured (on a CPU, one thread
per replica) ``cpu_bound_batching`` per level says what batching can gain on this machine: the CPU a request costs
with batching off (the processes taking part, the rest of the machine left out) over that cost less what full
passes save on the forward (``ratio_full_passes``), or less the whole forward (``ratio_free_forward``: a bound,
should batching make the forward free).
``--floors`` adds two apps that restore nothing (the body answered back by the ingress, and through a second
deployment by a handle call, the app's gateway → model hop): what Ray Serve's path costs on this machine.

    python bench/serve.py                                     # tiny, CPU, concurrency 1, 8, 32, 5 s each
    python bench/serve.py --preset paper --device cuda --seconds 20
Human-readable lines first; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import (
    bench_parser,
    call_times,
    check_device,
    init_ray,
    json_line,
    machine_info,
    percentile,
    publish_fresh_model,
    temp_dir,
)
from fastapi import FastAPI, Request
from fastapi.responses import Response
from hsivar_platform.demo.http_check import free_port
from hsivar_platform.model_uri import load_restorer, resolve_model
from hsivar_platform.serve import ServeSettings, build_app

from hsivar.degrade.protocol import degrade
from hsivar.publish import read_config
from hsivar.synth import synthesize
from hsivar.tiling import tile_grid

APP = "hsivar-bench"
"""Application name prefix; one app per batching mode (``hsivar-bench-on`` at ``/on``, …)."""
HOST = "127.0.0.1"
"""Where Serve listens (loopback only)."""
DIRECT_INGRESS_ENV = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
"""``--direct-ingress``: Ray Serve's direct ingress (experimental in Ray 2.60: each app's ingress replica answers
HTTP on a port of its own from Ray's range, 30000–30999; the proxy stays out of the request path), and a 1 s drain
for a stopping ingress replica instead of 30 s (nothing routes to the bench's after it)."""
MODES = ("on", "off")
OFF = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
"""ServeSettings of batching off (on: the app's defaults, or ``--max-batch-size``)."""


def npy_bytes(cube: np.ndarray) -> bytes:
    """``cube`` as ``.npy`` file bytes (the request body)."""
    buf = io.BytesIO()
    np.save(buf, cube, allow_pickle=False)
    return buf.getvalue()


FLOORS = ("proxy", "handle")
"""The floor apps (``--floors``): ``proxy`` — an ingress that reads the body and answers it back (HTTP and Ray's
proxy, nothing computed); ``handle`` — the same ingress passing the body through a second deployment and back by a
``DeploymentHandle`` call (the app's gateway → model hop, nothing computed)."""


def floor_app(kind: str) -> Any:
    """An app that restores nothing, for what Ray Serve's path costs on this machine (``kind``: :data:`FLOORS`):
    ``POST /v1/restore`` answers the request body as it came, through one deployment (``proxy``) or through a
    second one by a handle call (``handle``); both light (a quarter CPU each, like the app's gateway)."""
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Echo", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
    class Echo:
        async def __call__(self, body: bytes) -> bytes:
            return body

    @serve.deployment(name="EchoGateway", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
    @serve.ingress(api)
    class EchoGateway:
        def __init__(self, echo: Any = None) -> None:
            self.echo = echo

        @api.post("/v1/restore")
        async def restore(self, request: Request) -> Response:
            # Request named in the body: the replica's copy of this class (pickled by value) then holds it, and
            # FastAPI resolves the annotations there (they are strings in this module)
            body = await Request.body(request)
            if self.echo is not None:
                body = await self.echo.remote(body)
            return Response(content=body, media_type="application/x-npy")

    return EchoGateway.bind(Echo.bind()) if kind == "handle" else EchoGateway.bind(None)


def direct_url(app: str, route_prefix: str, host: str) -> str:
    """The base URL at which app ``app``'s ingress replica answers HTTP itself (Ray Serve's direct ingress, no proxy
    hop): the port of its first HTTP target, read from the Serve controller (``get_target_groups``, a private API),
    on ``host`` (Serve's HTTP host, which the replica binds; the target names the node's address)."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    groups = ray.get(_get_global_client()._controller.get_target_groups.remote(app))
    for group in groups:
        if group.protocol == RequestProtocol.HTTP and group.targets and group.app_name == app:
            return f"http://{host}:{group.targets[0].port}{route_prefix}"
    raise RuntimeError(f"no direct-ingress HTTP target for app {app!r} (target groups: {groups})")


def process_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of every process of this machine that takes part in a measurement, by
    role: Ray's named workers by their process title (``ray::ProxyActor``, ``ray::ServeReplica:APP:DEPLOYMENT``,
    ...), ``raylet``, ``gcs_server``, ``client`` (this process: the load's HTTP clients) and ``other``; the
    difference of two calls around a level says where its CPU went."""
    import psutil

    out: dict[str, float] = {}
    me = psutil.Process().pid
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            t = proc.cpu_times()
            cmd = proc.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        head = cmd[0] if cmd else (proc.info["name"] or "")
        if proc.info["pid"] == me:
            role = "client"
        elif head.startswith("ray::ServeReplica:"):  # ray::ServeReplica:APP:DEPLOYMENT[.method while one runs]
            app, _, deployment = head.split(" ", 1)[0].removeprefix("ray::ServeReplica:").partition(":")
            role = f"replica {app}:{deployment.split('.', 1)[0]}"
        elif head.startswith("ray::"):  # ray::ProxyActor, ray::ServeController.listen_for_change, ...
            role = head.split(" ", 1)[0].split(".", 1)[0].removeprefix("ray::")
        elif head.endswith("/raylet") or head.endswith("/gcs_server"):
            role = Path(head).name
        else:
            role = "other"
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int,
                    wall_s: float) -> dict[str, Any]:
    """Where a level's CPU went: ms of CPU per completed request by role (most first; ``other``: everything else on
    the machine), and the cores busy on average over the level (``cores_busy``)."""
    used = {role: after[role] - before.get(role, 0.0) for role in after}
    total = sum(max(v, 0.0) for v in used.values())
    per = {role: v * 1e3 / max(requests, 1) for role, v in sorted(used.items(), key=lambda kv: -kv[1])}
    return {"ms_per_request": {k: v for k, v in per.items() if v > 0},
            "total_ms_per_request": total * 1e3 / max(requests, 1), "cores_busy": total / wall_s}


async def load(url: str, body: bytes, concurrency: int, seconds: float, timeout_s: float) -> dict[str, Any]:
    """``concurrency`` clients posting ``body`` to ``url`` back to back until ``seconds`` have passed.

    Returns latencies (s) of the successful requests, the error count and status codes seen, and the
    wall time from the start until the last in-flight request finished.
    """
    latencies: list[float] = []
    phases: dict[str, list[float]] = {}  # Server-Timing of the successful requests, ms per phase
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/x-npy"}
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        t0 = time.perf_counter()
        deadline = t0 + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    key = None if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if key is None:
                    latencies.append(time.perf_counter() - t)
                    for part in r.headers.get("server-timing", "").split(", "):
                        name, _, ms = part.partition(";dur=")
                        if ms:
                            phases.setdefault(name, []).append(float(ms))
                else:
                    errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "phases": phases, "errors": errors, "wall_s": wall}


def own_time(model: str, cube: np.ndarray, device: str, threads: int, repeats: int,
             max_batch_size: int) -> dict[str, float]:
    """The model's own time per request: :meth:`hsivar.restore.Restorer.restore` of ``cube`` in this process
    with ``threads`` torch threads (as a replica reserving that many CPUs), after one untimed call; → p50 / min
    seconds over ``repeats`` calls. Also the forward pass's time per tile alone and in a batch of
    ``max_batch_size`` copies of the cube's first tile: their ratio is the most batching can gain on the model's
    part of a request (``batch_gain_ceiling``)."""
    import torch

    from hsivar.models.var import GREEDY

    try:  # numpy / scipy's BLAS too, as OMP_NUM_THREADS does in a replica
        from threadpoolctl import threadpool_limits
    except ImportError:  # not installed: torch's threads only
        threadpool_limits = None
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    limits = threadpool_limits(max(1, threads)) if threadpool_limits is not None else None
    try:
        restorer = load_restorer(model, device=device)
        restorer.restore(cube)
        times = call_times(lambda: restorer.restore(cube), repeats, device)
        prep = restorer.prepare(cube, restorer.tile // 4)
        task = restorer.resolve_task(prep, "auto")
        tile, est = prep.tiles(0, 1), prep.estimate_tiles(0, 1)
        per_tile = {}
        for b in dict.fromkeys((1, max_batch_size)):
            tiles, ests = tile.repeat(b, 1, 1, 1), None if est is None else est.repeat(b, 1, 1, 1)
            restorer.forward(tiles, task, GREEDY, estimate01=ests)
            run = partial(restorer.forward, tiles, task, GREEDY, estimate01=ests)
            per_tile[b] = percentile(call_times(run, max(3, repeats // 3), device), 50) / b
    finally:
        torch.set_num_threads(before)
        if limits is not None:
            limits.restore_original_limits()
    return {"p50_s": percentile(times, 50), "min_s": min(times), "threads": max(1, threads),
            "forward_per_tile_s": per_tile[1], "forward_per_tile_batched_s": per_tile[max_batch_size],
            "batch_gain_ceiling": per_tile[1] / per_tile[max_batch_size]}


def replica_stats(base: str) -> dict[str, int]:
    """The replica's counters from ``GET /v1/model`` (requests, tiles, forward passes, largest batch)."""
    return httpx.get(f"{base}/v1/model", timeout=60).json()["stats"]


def measure_level(base: str, body: bytes, tiles: int, concurrency: int, seconds: float, timeout_s: float,
                  counters: bool = True) -> dict[str, Any]:
    """One concurrency level against the app at ``base``; → its figures, with where its CPU went
    (:func:`cpu_per_request`). ``counters``: read the replica's counters before and after (``tiles_per_forward``;
    only with one model replica: the counters are per replica and ``/v1/model`` reaches any one of them)."""
    before = replica_stats(base) if counters else None
    cpu_before = process_cpu_seconds()
    res = asyncio.run(load(f"{base}/v1/restore", body, concurrency, seconds, timeout_s))
    cpu = cpu_per_request(cpu_before, process_cpu_seconds(), len(res["latencies"]), res["wall_s"])
    lat, n = res["latencies"], len(res["latencies"])
    d_tiles = d_batches = 0
    if before is not None:
        after = replica_stats(base)
        d_tiles, d_batches = after["tiles"] - before["tiles"], after["batches"] - before["batches"]
    return {
        "requests": n, "errors": res["errors"], "wall_s": res["wall_s"],
        "requests_per_s": n / res["wall_s"], "tiles_per_s": n * tiles / res["wall_s"],
        "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95), "p99_s": percentile(lat, 99),
        "mean_s": float(np.mean(lat)) if lat else float("nan"),
        "tiles_per_forward": d_tiles / d_batches if d_batches else float("nan"),
        "server_timing_p50_ms": {name: percentile(v, 50) for name, v in res["phases"].items()},
        "cpu": cpu,
    }


def print_level(label: str, c: int, fig: dict[str, Any]) -> None:
    """Two human-readable lines for a level: its figures, then where its CPU went."""
    err = f", errors {fig['errors']}" if fig["errors"] else ""
    ms = {k: fig[k] * 1e3 for k in ("p50_s", "p95_s", "p99_s")}
    forward = "" if math.isnan(fig["tiles_per_forward"]) else f", {fig['tiles_per_forward']:.2f} tiles/forward"
    print(f"  {label:<14} concurrency {c:>3}: {fig['requests_per_s']:7.2f} req/s {fig['tiles_per_s']:7.2f} "
          f"tiles/s  p50 {ms['p50_s']:8.1f} ms  p95 {ms['p95_s']:8.1f} ms  p99 {ms['p99_s']:8.1f} ms  "
          f"({fig['requests']} requests{forward}{err})")
    cpu = fig["cpu"]
    print(f"  {'':<14} CPU per request {cpu['total_ms_per_request']:.1f} ms, {cpu['cores_busy']:.2f} cores busy: "
          + ", ".join(f"{role} {v:.1f}" for role, v in cpu["ms_per_request"].items() if v >= 1.0))


def main() -> None:
    """Parse arguments, run the benchmark, print the figures and one JSON line."""
    ap = bench_parser(__doc__, model_option=True)
    ap.add_argument("--size", type=int, default=None, help="H = W of the request cube (default: the model's tile)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma list of concurrent clients")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of load per level and mode")
    ap.add_argument("--batching", default="on,off", help="modes to run: on, off or on,off")
    ap.add_argument("--replicas", type=int, default=1,
                    help="fixed model replica count (the HTTP gateway: one light replica)")
    ap.add_argument("--cpus-per-replica", type=float, default=1.0)
    ap.add_argument("--max-batch-size", type=int, default=None, help="tiles per forward with batching on "
                    "(default: the app's)")
    ap.add_argument("--warmup", type=int, default=3, help="sequential requests before each mode is measured")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    ap.add_argument("--own-repeats", type=int, default=30, help="calls timing the model's own time per request")
    ap.add_argument("--floors", action="store_true", help="also measure two apps that restore nothing (the body "
                    "answered back, by the ingress alone and through a handle call): what Ray Serve's path costs")
    ap.add_argument("--direct-ingress", action="store_true", help="Ray Serve's direct ingress "
                    "(RAY_SERVE_ENABLE_DIRECT_INGRESS=1): each app's ingress replica answers HTTP itself on a port of "
                    "its own, no proxy hop")
    ap.add_argument("--degradation", default="gaussian:30", help="FAMILY:LEVEL applied to the request cube (a demo "
                    "cube, seed 0), or none (the clean cube: blind auto mode then treats it as blurred)")
    args = ap.parse_args()
    check_device(args.device)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    modes = [m.strip() for m in args.batching.split(",") if m.strip()]
    if not levels or min(levels) < 1:
        ap.error("--concurrency takes positive integers, e.g. 1,8,32")
    if not modes or any(m not in MODES for m in modes):
        ap.error("--batching takes on, off or on,off")
    logging.basicConfig(level=logging.WARNING)

    with temp_dir("hsivar-bench-serve-", keep=False) as tmp:
        model = args.model or publish_fresh_model(args.preset, args.bands, Path(tmp) / "model")
        cfg, _ = read_config(resolve_model(model))
        bands, tile = cfg.vqvae.bands, cfg.vqvae.image_size
        size = args.size or tile
        cube = synthesize(0, size, bands).cube
        if args.degradation != "none":
            fam, _, level = args.degradation.partition(":")
            value = int(level) if level.isdigit() else float(level)
            cube = np.asarray(degrade(cube, fam, value, np.random.default_rng(0))[0], np.float32)
        body = npy_bytes(cube)
        tiles = len(tile_grid(size, size, tile, tile // 4))
        defaults = ServeSettings(model=model)
        changes = {"on": {"max_batch_size": args.max_batch_size} if args.max_batch_size else {}, "off": OFF}
        report: dict[str, Any] = {
            "bench": "serve", "preset": cfg.name, "model": args.model or "fresh", "device": args.device,
            "degradation": args.degradation,
            "cube_shape": [bands, size, size], "tiles_per_request": tiles, "request_bytes": len(body),
            "replicas": args.replicas, "seconds_per_level": args.seconds, "concurrency": levels,
            "direct_ingress": args.direct_ingress,
            "max_batch_size": args.max_batch_size or defaults.max_batch_size,
            "batch_wait_timeout_s": defaults.batch_wait_timeout_s, "unit_latency": "s",
        }
        print(f"model {model} ({cfg.name}, {bands} bands, {tile}×{tile} tiles); request {bands}×{size}×{size} "
              f"float32 ({len(body)} bytes, {tiles} tile(s)); {args.replicas} replica(s) × {args.cpus_per_replica} "
              f"CPU{' + 1 GPU' if args.device == 'cuda' else ''}; {args.seconds:g} s per level")

        max_batch = args.max_batch_size or defaults.max_batch_size
        own = own_time(model, cube, args.device, int(args.cpus_per_replica), args.own_repeats, max_batch)
        report["model_own_time"] = own
        print(f"model's own time per request (Restorer.restore, {own['threads']} torch thread(s)): "
              f"p50 {own['p50_s'] * 1e3:.1f} ms, min {own['min_s'] * 1e3:.1f} ms; forward per tile "
              f"{own['forward_per_tile_s'] * 1e3:.1f} ms alone, {own['forward_per_tile_batched_s'] * 1e3:.1f} ms in "
              f"batches of {max_batch} (batching can gain at most {own['batch_gain_ceiling']:.2f}× on the forward)")

        if args.direct_ingress:  # read by every Serve process when it starts: set before Ray starts them
            os.environ.update(DIRECT_INGRESS_ENV)
        init_ray()
        import ray
        from ray import serve

        port = free_port()
        base = f"http://{HOST}:{port}"
        results: dict[str, Any] = {m: {} for m in modes}
        urls: dict[str, str] = {}  # app (mode or floor) → its base URL

        def deploy(app: Any, name: str) -> str:
            """Run ``app`` as ``{APP}-{name}`` at ``/{name}`` and warm it up; → its base URL (through Ray's proxy, or
            its own port with ``--direct-ingress``)."""
            serve.run(app, name=f"{APP}-{name}", route_prefix=f"/{name}", logging_config={"log_level": "WARNING"})
            url = direct_url(f"{APP}-{name}", f"/{name}", HOST) if args.direct_ingress else f"{base}/{name}"
            for _ in range(args.warmup):
                httpx.post(f"{url}/v1/restore", content=body, headers={"content-type": "application/x-npy"},
                           timeout=args.timeout)
            return url

        try:
            serve.start(http_options={"host": HOST, "port": port}, logging_config={"log_level": "WARNING"})
            # Both modes deployed side by side (an idle replica costs no CPU) and measured alternately per
            # level, so that drifting background load on a shared machine hits both alike.
            for mode in modes:
                settings = ServeSettings(model=model, device=args.device, **changes[mode])
                actor = {"num_cpus": args.cpus_per_replica, "num_gpus": 1 if args.device == "cuda" else 0}
                urls[mode] = deploy(build_app(settings, num_replicas=args.replicas, ray_actor_options=actor), mode)
                print(f"batching {mode}: max_batch_size {settings.max_batch_size}, "
                      f"batch_wait_timeout_s {settings.batch_wait_timeout_s:g}, {urls[mode]}")
            floors = FLOORS if args.floors else ()
            for kind in floors:
                urls[kind] = deploy(floor_app(kind), f"floor-{kind}")
            for c in levels:
                for mode in modes:
                    fig = measure_level(urls[mode], body, tiles, c, args.seconds, args.timeout,
                                        counters=args.replicas == 1)
                    results[mode][str(c)] = fig
                    print_level(f"batching {mode}", c, fig)
                for kind in floors:
                    fig = measure_level(urls[kind], body, tiles, c, args.seconds, args.timeout,
                                        counters=False)
                    report.setdefault("floors", {}).setdefault(kind, {})[str(c)] = fig
                    print_level(f"floor {kind}", c, fig)
        finally:
            serve.shutdown()
            ray.shutdown()
        report["batching"] = results
        for mode in results:
            if "1" in results[mode]:
                over = results[mode]["1"]["p50_s"] - own["p50_s"]
                report.setdefault("serve_overhead_p50_s", {})[mode] = over
                timing = results[mode]["1"]["server_timing_p50_ms"]
                print(f"batching {mode}: concurrency-1 p50 − model's own time = {over * 1e3:+.1f} ms; Server-Timing "
                      "p50 (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
        for kind, figs in report.get("floors", {}).items():
            if "1" in figs:  # what Serve's path costs with nothing to restore: the part of the overhead it sets
                print(f"floor {kind}: concurrency-1 p50 {figs['1']['p50_s'] * 1e3:.1f} ms (the body answered back"
                      f"{' through a handle call' if kind == 'handle' else ''}, nothing restored)")
        if "on" in results and "off" in results:
            report["throughput_ratio_on_vs_off"] = {
                c: results["on"][c]["requests_per_s"] / results["off"][c]["requests_per_s"]
                if results["off"][c]["requests_per_s"] else float("nan") for c in results["on"]}
            # With every core busy, throughput goes as 1 / CPU per request: batching gains the CPU a request costs
            # with it off over that cost less what it saves, at best the whole forward pass (the model's own figures).
            forward, batched = own["forward_per_tile_s"] * tiles, own["forward_per_tile_batched_s"] * tiles
            report["cpu_bound_batching"] = {}
            for c in results["off"] if args.device == "cpu" and own["threads"] == 1 else ():
                # the forward's wall time on one thread is its CPU time; the rest of the machine left out
                cpu = results["off"][c]["cpu"]
                cost = (cpu["total_ms_per_request"] - cpu["ms_per_request"].get("other", 0.0)) / 1e3
                if cost > forward:
                    report["cpu_bound_batching"][c] = {
                        "cpu_per_request_off_s": cost, "forward_s": forward,
                        "ratio_full_passes": cost / (cost - forward + batched),
                        "ratio_free_forward": cost / (cost - forward)}
            print("throughput batching on / off: " + ", ".join(
                f"c={c} {v:.2f}×" for c, v in report["throughput_ratio_on_vs_off"].items()))
            for c, b in report["cpu_bound_batching"].items():
                print(f"  c={c}: CPU per request with batching off {b['cpu_per_request_off_s'] * 1e3:.1f} ms, of which "
                      f"the forward {b['forward_s'] * 1e3:.1f}; with every core busy, full passes would gain "
                      f"{b['ratio_full_passes']:.2f}×, a forward costing nothing {b['ratio_free_forward']:.2f}×")
        report["machine"] = machine_info(args.device)
    print(json_line(report))


if __name__ == "__main__":
    main()
