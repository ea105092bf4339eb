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

    python bench/serve.py                                     # tiny, CPU, concurrency 1, 8, 32, 5 s each
    python bench/serve.py --preset paper --device cuda --seconds 20
Human-readable lines first; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import asyncio
import io
import logging
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
from hsivar_platform.demo.http_check import free_port
from hsivar_platform.model_uri import load_restorer, resolve_model
from hsivar_platform.serve import ServeSettings, build_app

from hsivar.degrade.protocol import degrade
from hsivar.publish import read_config
from hsivar.synth import synthesize
from hsivar.tiling import tile_grid

APP = "hsivar-bench"
"""Application name prefix; one app per batching mode (``hsivar-bench-on`` at ``/on``, …)."""
MODES = ("on", "off")
OFF = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
"""ServeSettings of batching off (on: the app's defaults, or ``--max-batch-size``)."""


def npy_bytes(cube: np.ndarray) -> bytes:
    """``cube`` as ``.npy`` file bytes (the request body)."""
    buf = io.BytesIO()
    np.save(buf, cube, allow_pickle=False)
    return buf.getvalue()


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
                  one_replica: bool = True) -> dict[str, Any]:
    """One concurrency level against the app at ``base``; → its figures (``tiles_per_forward`` only with
    ``one_replica``: the counters are per replica and ``/v1/model`` reaches any one of them)."""
    before = replica_stats(base) if one_replica else None
    res = asyncio.run(load(f"{base}/v1/restore", body, concurrency, seconds, timeout_s))
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
    }


def print_level(mode: str, c: int, fig: dict[str, Any]) -> None:
    """One human-readable line for a level."""
    err = f", errors {fig['errors']}" if fig["errors"] else ""
    ms = {k: fig[k] * 1e3 for k in ("p50_s", "p95_s", "p99_s")}
    print(f"  batching {mode:<3} concurrency {c:>3}: {fig['requests_per_s']:7.2f} req/s {fig['tiles_per_s']:7.2f} "
          f"tiles/s  p50 {ms['p50_s']:8.1f} ms  p95 {ms['p95_s']:8.1f} ms  p99 {ms['p99_s']:8.1f} ms  "
          f"({fig['requests']} requests, {fig['tiles_per_forward']:.2f} tiles/forward{err})")


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

        init_ray()
        import ray
        from ray import serve

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        results: dict[str, Any] = {m: {} for m in modes}
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
            # Both modes deployed side by side (an idle replica costs no CPU) and measured alternately per
            # level, so that drifting background load on a shared machine hits both alike.
            for mode in modes:
                settings = ServeSettings(model=model, device=args.device, **changes[mode])
                actor = {"num_cpus": args.cpus_per_replica, "num_gpus": 1 if args.device == "cuda" else 0}
                serve.run(build_app(settings, num_replicas=args.replicas, ray_actor_options=actor),
                          name=f"{APP}-{mode}", route_prefix=f"/{mode}", logging_config={"log_level": "WARNING"})
                print(f"batching {mode}: max_batch_size {settings.max_batch_size}, "
                      f"batch_wait_timeout_s {settings.batch_wait_timeout_s:g}, route /{mode}")
                for _ in range(args.warmup):
                    httpx.post(f"{base}/{mode}/v1/restore", content=body,
                               headers={"content-type": "application/x-npy"}, timeout=args.timeout)
            for c in levels:
                for mode in modes:
                    fig = measure_level(f"{base}/{mode}", body, tiles, c, args.seconds, args.timeout,
                                        one_replica=args.replicas == 1)
                    results[mode][str(c)] = fig
                    print_level(mode, c, fig)
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
        if "on" in results and "off" in results:
            report["throughput_ratio_on_vs_off"] = {
                c: results["on"][c]["requests_per_s"] / results["off"][c]["requests_per_s"]
                if results["off"][c]["requests_per_s"] else float("nan") for c in results["on"]}
            print("throughput batching on / off: " + ", ".join(
                f"c={c} {v:.2f}×" for c, v in report["throughput_ratio_on_vs_off"].items()))
        report["machine"] = machine_info(args.device)
    print(json_line(report))


if __name__ == "__main__":
    main()
