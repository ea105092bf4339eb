"""The demo's online step: serve the model with Ray Serve on 127.0.0.1 and restore one cube over HTTP."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from hsivar.tasks import TASKS
from hsivar_platform.console import Echo
from hsivar_platform.demo.archive import ArchiveItem, normalise01, read
from hsivar_platform.ray_runtime import redirect_ray_logs


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_round_trip(model_uri: str, item: ArchiveItem, echo: Echo, log_dir: Path | None = None) -> dict[str, Any]:
    """Serve ``model_uri`` on 127.0.0.1, restore ``item``'s degraded cube over HTTP, check it, stop Serve.

    The answer must be a cube of the input's shape, finite, with a known task header, and equal
    (to 1e-4 of its value span) to :meth:`Restorer.restore` of the same cube in this process. ``log_dir``:
    where Ray's log lines go (Serve's driver-side lines included).

    Returns:
        ``url``, ``status``, ``shape``, ``task`` (the ``auto`` decision), ``seconds`` (request round trip),
        ``max_abs_diff`` vs the local restoration, ``psnr_degraded`` / ``psnr_restored`` (dB).
    Raises:
        RuntimeError: any check failed (the message says which).
    """
    import io

    import httpx
    import torch
    from ray import serve

    from hsivar.metrics import evaluate_record
    from hsivar_platform.model_uri import load_restorer
    from hsivar_platform.serve import ServeSettings, build_app

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cube = read(item.degraded_uri)
    buf = io.BytesIO()
    np.save(buf, cube)
    echo(f"[demo] starting Ray Serve on {url} with {model_uri}")
    if log_dir is not None:  # importing Serve gave its logger a console handler
        redirect_ray_logs(log_dir)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(ServeSettings(model=model_uri, device="cpu"), num_replicas=1,
                            ray_actor_options={"num_cpus": 1}), name="hsivar-demo", route_prefix="/")
        with httpx.Client(base_url=url, timeout=300) as client:
            health = client.get("/healthz")
            info = client.get("/v1/model").json()
            t0 = time.perf_counter()
            resp = client.post("/v1/restore", params={"task": "auto", "value_range": "0,1"}, content=buf.getvalue(),
                               headers={"content-type": "application/x-npy"})
            seconds = time.perf_counter() - t0
    finally:
        serve.shutdown()
    if health.status_code != 200 or resp.status_code != 200:
        raise RuntimeError(f"HTTP round trip failed: /healthz {health.status_code}, /v1/restore {resp.status_code} "
                           f"{resp.text[:300]}")
    restored = np.load(io.BytesIO(resp.content), allow_pickle=False)
    task = resp.headers.get("x-hsivar-task", "")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the replica, so the float sums are the same
    try:
        local = load_restorer(model_uri).restore(cube, value_range=(0.0, 1.0)).cube
    finally:
        torch.set_num_threads(threads)
    diff = float(np.abs(restored - local).max()) if restored.shape == local.shape else float("inf")
    span = float(local.max() - local.min()) or 1.0
    problems = [p for p, bad in (
        (f"shape {restored.shape} != {cube.shape}", restored.shape != cube.shape),
        ("non-finite values", not np.isfinite(restored).all()),
        (f"task header {task!r}", task not in TASKS),
        (f"/v1/model reports {info.get('bands')} bands", info.get("bands") != cube.shape[0]),
        (f"differs from Restorer.restore by {diff:.3g} (span {span:.3g})", not diff <= 1e-4 * span),
    ) if bad]
    if problems:
        raise RuntimeError("HTTP answer failed its checks: " + "; ".join(problems))
    clean = normalise01(read(item.clean_uri))
    result = {"url": f"{url}/v1/restore?task=auto&value_range=0,1", "status": resp.status_code,
              "cube": item.degraded_uri,
              "shape": list(restored.shape), "task": task, "true_task": item.task, "seconds": round(seconds, 3),
              "max_abs_diff": diff, "psnr_degraded": evaluate_record(cube, clean, item.record).psnr,
              "psnr_restored": evaluate_record(restored, clean, item.record).psnr}
    echo(f"[demo] POST /v1/restore → {resp.status_code}, {restored.shape} float32, task {task} "
         f"(true: {item.task}); PSNR {result['psnr_degraded']:.2f} → {result['psnr_restored']:.2f} dB; "
         f"equals Restorer.restore (max |diff| {diff:.2g}); {seconds:.2f} s")
    return result
