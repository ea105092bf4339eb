"""Faults of the Serve app on real local Ray, over real HTTP: the model replica's process killed under load."""

from __future__ import annotations

import io
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

NPY = {"content-type": "application/x-npy"}
APP, PREFIX = "faults", "/faults"
CLIENTS = 4  # concurrent clients, each POSTing in a loop
WARMUP_S, AFTER_KILL_S = 4.0, 12.0  # load before the kill, and after it
RECOVERY_LIMIT_S = 60.0
CONSECUTIVE = 10  # requests that must all succeed once the model replica is back


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_replica_pids(app: str, deployment: str) -> list[int]:
    """Process ids of the live replicas of ``deployment`` in Serve application ``app`` (Ray's actor table)."""
    import ray

    name = f"ServeReplica:{app}:{deployment}"
    return [a["Pid"] for a in ray._private.state.actors().values()
            if a["ActorClassName"] == name
            and a["State"] == "ALIVE"]


def test_what_counts_as_a_lost_model_replica() -> None:
    """A dead or unreachable model replica (also as Ray and Serve wrap it) is a lost replica, answered 503 with
    Retry-After; a fault raised inside the model step is not (503 without Retry-After, logged)."""
    from hsivar_platform.serve.app import _lost_model_replica
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
    from ray.serve.exceptions import RayServeException

    wrapped = RayServeException("upstream actor died")
    wrapped.__cause__ = ActorDiedError()
    for exc in (ActorDiedError(), ActorUnavailableError("unreachable", None), wrapped,
                RayTaskError("restore_tile", "traceback", ActorDiedError())):
        assert _lost_model_replica(exc), exc
    for exc in (RuntimeError("injected fault"), RayTaskError("restore_tile", "traceback", RuntimeError("x")),
                RayServeException("other")):
        assert not _lost_model_replica(exc), exc


@pytest.fixture(scope="module")
def faults_url(ray_cluster: None, published_tiny: Path) -> str:
    """The app under its own name and route prefix, HTTP on a free 127.0.0.1 port; Serve shut down after."""
    from hsivar_platform.serve import ServeSettings, build_app
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = ServeSettings(model=str(published_tiny), batch_wait_timeout_s=0.01)
    serve.run(build_app(settings, ray_actor_options={"num_cpus": 0.5}), name=APP, route_prefix=PREFIX)
    yield f"http://127.0.0.1:{port}{PREFIX}"
    serve.delete(APP)
    serve.shutdown()


@pytest.mark.slow
def test_killing_the_model_replica_under_load_answers_503_with_retry_after_and_recovers(faults_url: str) -> None:
    """SIGKILL of the model replica's process while 4 clients POST cubes: every answer is a 200 or a JSON 503 with
    Retry-After (no 500, no hang), the gateway counts the 503s as errors, and once Serve has restarted the model
    replica every request succeeds."""
    from hsivar_platform.serve import MODEL_DEPLOYMENT_NAME

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).random((8, 64, 64)).astype(np.float32))  # 9 tiles of the tiny model
    body = buf.getvalue()
    with httpx.Client(base_url=faults_url, timeout=60) as c:
        assert c.post("/v1/restore", content=body, headers=NPY).status_code == 200  # warm
        errors_before = c.get("/v1/model").json()["stats"]["errors"]

    lock = threading.Lock()
    outcomes: Counter = Counter()
    bad: list[str] = []  # anything but a 200 or a well-formed 503
    finished: list[tuple[float, float, int]] = []  # (start, end, status) of every request, perf_counter seconds
    in_flight = 0
    stop = threading.Event()

    def client() -> None:
        nonlocal in_flight
        with httpx.Client(base_url=faults_url, timeout=60) as c:
            while not stop.is_set():
                with lock:
                    in_flight += 1
                t = time.perf_counter()
                try:
                    r = c.post("/v1/restore", content=body, headers=NPY)
                    status = r.status_code
                    if status == 503:
                        ok = (r.headers.get("content-type") == "application/json" and r.json()["status"] == 503
                              and r.headers.get("retry-after", "").isdigit())
                        if not ok:
                            bad.append(f"503 {r.headers.get('retry-after')!r} {r.text[:200]}")
                    elif status != 200:
                        bad.append(f"{status} {r.text[:200]}")
                except Exception as exc:  # a timeout or a dropped connection: the failure this test is about
                    status = -1
                    bad.append(f"{type(exc).__name__}: {exc}")
                with lock:
                    in_flight -= 1
                    outcomes[status] += 1
                    finished.append((t, time.perf_counter(), status))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for th in threads:
        th.start()
    time.sleep(WARMUP_S)
    (pid,) = _model_replica_pids(APP, MODEL_DEPLOYMENT_NAME)
    with lock:  # the kill while requests are in flight (the clients loop without pause)
        in_flight_at_kill = in_flight
        os.kill(pid, signal.SIGKILL)
        t_kill = time.perf_counter()
    time.sleep(AFTER_KILL_S)
    stop.set()
    for th in threads:
        th.join(timeout=90)
    assert not any(th.is_alive() for th in threads), "a client hung"

    with httpx.Client(base_url=faults_url, timeout=60) as c:
        # recovered: the first success of a request started after the kill (from the load, else polled)
        after = [end for start, end, status in finished if start > t_kill and status == 200]
        deadline = time.perf_counter() + RECOVERY_LIMIT_S
        while not after and time.perf_counter() < deadline:
            r = c.post("/v1/restore", content=body, headers=NPY)
            if r.status_code == 200:
                after.append(time.perf_counter())
            else:
                time.sleep(0.5)
        assert after, f"no request succeeded within {RECOVERY_LIMIT_S} s of the kill"
        recovered_s = min(after) - t_kill
        statuses = [c.post("/v1/restore", content=body, headers=NPY).status_code for _ in range(CONSECUTIVE)]
        errors = c.get("/v1/model").json()["stats"]["errors"] - errors_before

    total, n503 = sum(outcomes.values()), outcomes[503]
    print(f"[fault] serve: {total} requests, {n503} 503, recovered in {recovered_s:.1f} s "
          f"({in_flight_at_kill} in flight at the kill; outcomes {dict(outcomes)})")
    assert not bad, bad[:5]
    assert set(outcomes) <= {200, 503}
    assert in_flight_at_kill >= 1, "no request in flight at the kill: the test shows nothing"
    assert n503 >= 1, "the kill failed no request: the model replica was idle"
    assert statuses == [200] * CONSECUTIVE, statuses
    assert errors == n503  # the gateway counted each 503 as an error (and nothing else failed)
    assert _model_replica_pids(APP, MODEL_DEPLOYMENT_NAME) != [pid]  # a new process serves
