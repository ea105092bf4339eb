"""``hsivar serve --direct-ingress``: the app's gateway answers HTTP on the command's port itself, with no Ray proxy
in between (Ray Serve's direct ingress). Serve's processes read the setting when they start, so the command runs as
a user runs it, in its own process with the local Ray it starts (not the test session's Ray), over real HTTP."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from hsivar.restore import Restorer

NPY = {"content-type": "application/x-npy"}
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _npy(cube: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, cube, allow_pickle=False)
    return buf.getvalue()


def _wait_healthy(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hsivar serve exited with {proc.returncode}:\n{proc.stdout.read()}"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"hsivar serve --direct-ingress did not answer {base}/healthz within {START_TIMEOUT_S} s")


@pytest.mark.slow
def test_direct_ingress_serves_on_the_port_itself_and_stops_on_ctrl_c(published_tiny: Path, tmp_path: Path) -> None:
    """The gateway itself listens on --port (no proxy process holds it), restores a cube as the Restorer does,
    answers a bad body 400 and stays up, and Ctrl-C stops the app and the command cleanly."""
    import psutil

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).with_name("hsivar")), "serve", "--model", str(published_tiny), "--port", str(port),
           "--replicas", "1", "--cpus-per-replica", "0.5", "--direct-ingress", "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        # who listens on the port: a Serve replica of the gateway, not Ray's proxy
        owners = {psutil.Process(c.pid).cmdline()[0] for c in psutil.net_connections("tcp")
                  if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}
        assert owners == {"ray::ServeReplica:hsivar:HSIVARService"}, owners

        cube = np.random.default_rng(3).random((8, 32, 32)).astype(np.float32)
        with httpx.Client(base_url=base, timeout=120) as c:
            r = c.post("/v1/restore", params={"task": "gaussian"}, content=_npy(cube), headers=NPY)
            assert r.status_code == 200, r.text
            assert "read;dur=" in r.headers["server-timing"]
            got = np.load(io.BytesIO(r.content), allow_pickle=False)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as in the replica
            try:
                want = Restorer.from_published(published_tiny).restore(cube, task="gaussian").cube
            finally:
                torch.set_num_threads(threads)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(want.max() - want.min()))
            bad = c.post("/v1/restore", content=b"not a cube", headers=NPY)
            assert bad.status_code == 400 and "npy" in bad.json()["error"]
            assert c.get("/healthz").json()["status"] == "ok"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the command deletes the app and returns
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert f"serving {published_tiny} at {base}/v1/restore" in out and out.rstrip().endswith("stopped")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=5)


def test_direct_ingress_refuses_a_running_ray() -> None:
    """Serve's processes read the setting when they start: with a cluster address the command refuses (exit 2)
    and says how to start a cluster with it, before it connects to anything."""
    from hsivar_platform.cli import build_app
    from typer.testing import CliRunner

    result = CliRunner().invoke(build_app(), ["serve", "--model", "unused", "--direct-ingress",
                                              "--ray-address", "ray://nowhere.invalid:10001"])
    assert result.exit_code == 2
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS=1" in result.output
