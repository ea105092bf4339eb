"""``hsivar serve``: the Ray Serve HTTP app (``POST /v1/restore``, ``GET /v1/model``, ``GET /healthz``)."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from hsivar_platform.cli.options import MODEL, RAY_ADDRESS, setup
from hsivar_platform.locations import default_work_dir

_TOKEN = "env var holding the bearer token; auth is required when it is set"


def _connected() -> bool:
    """Whether this process is already connected to a Ray (then Serve lives as long as that Ray)."""
    import ray

    return ray.is_initialized()


def serve(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL)],
    host: Annotated[str, typer.Option(help="HTTP host of the Serve proxy")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port of the Serve proxy")] = 8000,
    route_prefix: Annotated[str, typer.Option(help="URL prefix of the app")] = "/",
    name: Annotated[str, typer.Option(help="Serve application name")] = "hsivar",
    replicas: Annotated[int | None, typer.Option(min=1, help="fixed model replica count (default: autoscaling; "
                                                   "the HTTP gateway is one light replica)")] = None,
    min_replicas: Annotated[int, typer.Option(min=0)] = 1,
    max_replicas: Annotated[int, typer.Option(min=1)] = 2,
    target_ongoing_requests: Annotated[float, typer.Option(min=0.1)] = 4.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    gpus_per_replica: Annotated[float, typer.Option(min=0)] = 0.0,
    cpus_per_replica: Annotated[float, typer.Option(min=0.01)] = 1.0,
    max_request_mb: Annotated[float, typer.Option(min=0.001, help="largest request body (413 above)")] = 64.0,
    compiled: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="on a GPU, replay each greedy restoration from a CUDA graph (each replica's "
        "first request of a batch size records it; sampling stays eager); on a CPU, decode through compiled "
        "steps")] = False,
    token_env: Annotated[str, typer.Option(help=_TOKEN)] = "HSIVAR_SERVE_TOKEN",
    ray_address: Annotated[str | None, typer.Option(help=RAY_ADDRESS)] = None,
    blocking: Annotated[bool, typer.Option(help="keep running until Ctrl-C (--no-blocking: deploy to a running "
                                           "cluster and return)")] = True,
    log_dir: Annotated[str | None, typer.Option(help="where Ray's and the libraries' log lines go; default "
                                                "<$HSIVAR_WORK_DIR, else work>/logs")] = None,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Serve POST /v1/restore, GET /v1/model and GET /healthz over HTTP with Ray Serve."""
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address == "local":
        address = None
    if not blocking and not address and not _connected():
        # A local Ray started by this process dies with it: --no-blocking would print a URL that refuses
        # every connection a moment later.
        typer.echo("error: --no-blocking needs a running Ray cluster to deploy to (set RAY_ADDRESS or --ray-address, "
                   "e.g. after scripts/local_stack.sh start); without one, run in the foreground", err=True)
        raise typer.Exit(2)
    log_dir = log_dir or str(Path(default_work_dir()) / "logs")
    setup(log_level, log_dir)
    from ray import serve as ray_serve

    from hsivar_platform import ray_runtime
    from hsivar_platform.serve import GATEWAY_OPTIONS, ServeSettings, build_app

    settings = ServeSettings(model=model, device=device, max_request_bytes=int(max_request_mb * 2**20),
                             auth_token_env=token_env or None, compiled=compiled)
    # The replicas get this shell's S3 / MLflow locations and, when it is set here, the bearer token:
    # auth must not silently turn off because the cluster was started from another shell.
    token = {token_env: os.environ[token_env]} if token_env and os.environ.get(token_env) else None
    actor_options: dict = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    env = ray_runtime.runtime_env(token)
    if env:
        actor_options["runtime_env"] = env
    # The options scale the model deployment; the light gateway (HTTP, auth) needs the same environment: it
    # checks the token and reads the model's config.json from the same location.
    options: dict = {"ray_actor_options": actor_options}
    gateway_options = copy.deepcopy(GATEWAY_OPTIONS)
    if env:
        gateway_options["ray_actor_options"]["runtime_env"] = env
    if replicas is not None:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": target_ongoing_requests}
    ray_runtime.init(address, log_dir=log_dir)
    ray_runtime.redirect_ray_logs(log_dir)  # importing Serve gave its logger a console handler
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(build_app(settings, gateway_options, **options), name=name, route_prefix=route_prefix)
    base = f"http://{host}:{port}{route_prefix.rstrip('/')}"
    typer.echo(f"serving {model} at {base}/v1/restore (health: {base}/healthz)")
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            ray_serve.delete(name)
            typer.echo("stopped")
