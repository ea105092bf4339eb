"""Deployment assets checked offline: Serve config schema, KubeRay manifests, Dockerfile pins, the local stack."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomllib
import typer
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = {
    "deploy/kuberay/rayservice.yaml": "RayService",
    "deploy/kuberay/rayjob-train.yaml": "RayJob",
    "deploy/kuberay/rayjob-restore.yaml": "RayJob",
    "deploy/kuberay/raycluster.yaml": "RayCluster",
}


def _pins() -> dict[str, str]:
    """Versions the assets must agree with: ray (pyproject range + constraints pin), python, package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_spec = next(d for d in project["optional-dependencies"]["platform"] if d.startswith("ray["))
    locked = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    low, high = re.search(r">=([\d.]+),<([\d.]+)", ray_spec).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(locked) < as_tuple(high), (ray_spec, locked)
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    return {"ray": locked, "python": py, "version": project["version"], "base": f"rayproject/ray:{locked}-py{py}-gpu",
            "image": f"hsivar:{project['version']}-ray{locked}-py{py}-gpu"}


def _check_serve_config(config: dict) -> None:
    """Validate with Serve's own schema, import the app builder and build the app from the args."""
    from hsivar_platform.serve import DEPLOYMENT_NAME, MODEL_DEPLOYMENT_NAME, ServeSettings
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    assert len(schema.applications) == 1
    app = schema.applications[0]
    module, _, attr = app.import_path.partition(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    ServeSettings.model_validate(app.args)
    assert isinstance(builder(app.args), Application)
    # the model deployment scales; the HTTP gateway (a separate process: 503 + Retry-After on a lost model
    # replica) has a fixed replica count
    deployments = {d.name: d for d in app.deployments}
    assert sorted(deployments) == sorted([DEPLOYMENT_NAME, MODEL_DEPLOYMENT_NAME])
    scaling = deployments[MODEL_DEPLOYMENT_NAME].autoscaling_config
    assert scaling["min_replicas"] >= 1 and scaling["max_replicas"] >= scaling["min_replicas"]
    assert scaling["target_ongoing_requests"] > 0
    gateway = deployments[DEPLOYMENT_NAME]
    assert "autoscaling_config" not in gateway.model_fields_set and gateway.num_replicas >= 1


def test_serve_yaml_validates_and_builds() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    _check_serve_config(config)
    assert config["http_options"]["host"] == "127.0.0.1"  # the local stack stays on loopback


def _pod_images(template: dict) -> list[str]:
    return [c["image"] for c in template["spec"]["containers"]]


def _check_cluster_spec(spec: dict, pins: dict[str, str]) -> None:
    assert spec["rayVersion"] == pins["ray"]
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and _pod_images(head["template"]) == [pins["image"]]
    assert spec["workerGroupSpecs"], "no worker groups"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert _pod_images(group["template"]) == [pins["image"]]


@pytest.mark.parametrize("path", sorted(MANIFESTS))
def test_kuberay_manifests_have_the_required_fields_and_pins(path: str) -> None:
    pins = _pins()
    (doc,) = list(yaml.safe_load_all((ROOT / path).read_text()))
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == MANIFESTS[path]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    assert doc["metadata"]["annotations"]["hsivar.io/base-image"] == pins["base"]
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        _check_cluster_spec(spec, pins)
    elif doc["kind"] == "RayService":
        _check_cluster_spec(spec["rayClusterConfig"], pins)
        _check_serve_config(yaml.safe_load(spec["serveConfigV2"]))
    else:
        _check_cluster_spec(spec["rayClusterSpec"], pins)
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "python" and (ROOT / argv[1]).is_file(), argv
        if argv[1] == "jobs/restore_batch.py":
            from hsivar_platform.cli import job_app, restore

            command = typer.main.get_command(job_app(restore))
            command.make_context("restore_batch.py", argv[2:])  # every flag exists and parses
        else:
            assert spec["entrypoint"] == "python jobs/train_var.py --config configs/paper.yaml"
            assert (ROOT / "configs" / "paper.yaml").is_file()


def test_dockerfile_builds_from_the_pinned_ray_image_with_the_lock_file() -> None:
    pins = _pins()
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert re.findall(r"^FROM\s+(\S+)", text, re.M) == [pins["base"]]
    install = [line for line in text.splitlines() if "pip install" in line]
    assert install and all("-c constraints.txt" in line for line in install)
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        sources = [s for s in line.split()[:-1] if not s.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    ignore = (ROOT / "deploy" / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and "work" in ignore


# ------------------------------------------------------------------------------------------ local stack


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _session_alive(sid: int) -> bool:
    """Whether any process is left in session ``sid`` (each stack service runs in its own session)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    return True
            except (ProcessLookupError, PermissionError):
                continue
    return False


@pytest.mark.slow
def test_local_stack_starts_serves_a_job_and_stops(tmp_path: Path) -> None:
    """scripts/local_stack.sh: Ray head, S3 server and MLflow on loopback; `ray job submit`; a clean stop."""
    ray_port, dash, client, agent, metrics, s3, mlflow = _free_ports(7)
    ray_tmp = tempfile.mkdtemp(prefix="hs", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "HSIVAR_STACK_DIR": str(tmp_path / "stack"), "HSIVAR_STACK_RAY_PORT": str(ray_port),
           "HSIVAR_STACK_DASHBOARD_PORT": str(dash), "HSIVAR_STACK_CLIENT_PORT": str(client),
           "HSIVAR_STACK_AGENT_PORT": str(agent), "HSIVAR_STACK_METRICS_PORT": str(metrics),
           "HSIVAR_STACK_S3_PORT": str(s3), "HSIVAR_STACK_MLFLOW_PORT": str(mlflow), "HSIVAR_STACK_RAY_CPUS": "1",
           "HSIVAR_STACK_OBJECT_STORE_BYTES": str(150 * 2**20), "HSIVAR_STACK_RAY_TMP": f"{ray_tmp}/ray",
           "HSIVAR_STACK_WORK_DIR": str(tmp_path / "work")}
    script = [str(ROOT / "scripts" / "local_stack.sh")]
    stack = tmp_path / "stack"
    try:
        started = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr
        pids = {name: int((stack / f"{name}.pid").read_text()) for name in ("s3", "mlflow", "ray")}
        exports = dict(re.findall(r"^export (\w+)=(.*)$", (stack / "env.sh").read_text(), re.M))
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{s3}"
        assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{mlflow}"
        assert exports["RAY_ADDRESS"] == f"127.0.0.1:{ray_port}" and exports["RAY_AUTH_MODE"] == "token"
        assert exports["HSIVAR_WORK_DIR"] == str(tmp_path / "work")
        assert subprocess.run([*script, "status"], env=env, capture_output=True, timeout=30).returncode == 0

        import boto3

        buckets = boto3.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                               aws_secret_access_key="testing", region_name="us-east-1").list_buckets()
        assert "hsivar" in [b["Name"] for b in buckets["Buckets"]]
        assert urllib.request.urlopen(f"http://127.0.0.1:{mlflow}/health", timeout=10).status == 200
        try:  # the dashboard answers (401 without Ray's auth token)
            status = urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=10).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status in (200, 401)

        # The cluster workflow: a job submitted to the stack's Ray sees the stack's S3, MLflow and work dir
        # (from the head's environment: the submitting shell's is not passed on).
        job_env = {**os.environ, **exports, "HSIVAR_WORK_DIR": "/elsewhere"}
        probe = ("import os, ray; ray.init(); print('PROBE', os.environ['AWS_ENDPOINT_URL'], "
                 "ray.cluster_resources()['CPU'], os.environ['HSIVAR_WORK_DIR'])")
        ray_cli = str(Path(sys.executable).parent / "ray")
        job = subprocess.run([ray_cli, "job", "submit", "--", "python", "-c", probe], env=job_env,
                             capture_output=True, text=True, timeout=180)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert f"PROBE http://127.0.0.1:{s3} 1.0 {tmp_path / 'work'}" in job.stdout
    finally:
        stopped = subprocess.run([*script, "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_session_alive(p) for p in pids.values()):
        time.sleep(0.5)
    assert not any(_session_alive(p) for p in pids.values()), "processes of the stack are still running"
    assert not any(_open(p) for p in (s3, mlflow, dash, ray_port))
    assert not list(stack.glob("*.pid"))
    assert subprocess.run([*script, "status"], env=env, capture_output=True, timeout=30).returncode == 3
