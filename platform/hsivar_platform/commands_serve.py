"""``hsivar restore`` (batch restoration of a prefix) and ``hsivar serve`` (the Ray Serve HTTP app).

:func:`register` adds both to the ``hsivar`` console script; ``jobs/restore_batch.py`` runs
:func:`restore_command` alone (:func:`restore_app`), so the job and the CLI take the same flags.
Ray is imported inside the commands only, so ``hsivar info`` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated

import typer

_INPUT = "input prefix (folder, file://, s3://) or one cube file"
_OUTPUT = "output prefix (gets the outputs and _manifest.parquet)"
_MODEL = "published model: dir, s3:// prefix, models:/NAME/VERSION or models:/NAME@ALIAS"
_TASK = "auto, a task family (gaussian complex blur sr inpaint bandmiss) or a mixture gaussian:0.7,blur:0.3"
_RAY = "Ray address (default: RAY_ADDRESS, a running cluster or a new local one)"
_TOKEN = "env var holding the bearer token; auth is required when it is set"


def _setup_logging(level: str) -> None:
    """Our progress lines at ``level``; other libraries' loggers at WARNING."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hsivar_platform").setLevel(getattr(logging, level.upper(), logging.INFO))


def restore_command(
    input: Annotated[str, typer.Option("--input", "-i", help=_INPUT)],  # noqa: A002
    output: Annotated[str, typer.Option("--output", "-o", help=_OUTPUT)],
    model: Annotated[str, typer.Option("--model", "-m", help=_MODEL)],
    task: Annotated[str, typer.Option(help=_TASK)] = "auto",
    tile: Annotated[int | None, typer.Option(help="tile side; must equal the model's (default: the model's)")] = None,
    overlap: Annotated[int | None, typer.Option(min=0, help="tile overlap in pixels (default: tile/4)")] = None,
    samples: Annotated[int, typer.Option(min=1, help="decodings per cube (>1: seeded top-p sampling)")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the first sample")] = 0,
    value_range: Annotated[str | None, typer.Option(
        help="LO,HI: input units mapped to [0, 1], e.g. 0,1 for reflectance (default: each cube's min–max)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="tiles per forward pass")] = 8,
    uncertainty: Annotated[bool, typer.Option(help="also write <stem>.std<ext> (needs --samples ≥ 2)")] = False,
    output_dtype: Annotated[str, typer.Option(help="source (the input's dtype) or float32")] = "source",
    actors: Annotated[int, typer.Option(min=1, help="model actors (pool maximum)")] = 1,
    min_actors: Annotated[int | None, typer.Option(min=1, help="pool minimum (default: --actors)")] = None,
    gpus_per_actor: Annotated[float | None, typer.Option(min=0, help="default: 1 when the cluster has GPUs")] = None,
    cpus_per_actor: Annotated[float, typer.Option(min=0.01)] = 1.0,
    memory_per_actor_gb: Annotated[float, typer.Option(min=0.01, help="memory reserved per model actor")] = 1.0,
    force: Annotated[bool, typer.Option(help="restore everything again, ignoring the manifest")] = False,
    fail_on_error: Annotated[bool, typer.Option(help="exit with status 1 when any input failed")] = False,
    manifest_interval_s: Annotated[float, typer.Option(min=0, help="least seconds between manifest rewrites")] = 2.0,
    progress_interval_s: Annotated[float, typer.Option(min=0, help="least seconds between progress lines")] = 5.0,
    ray_address: Annotated[str | None, typer.Option(help=_RAY)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Restore every cube under --input into --output (resumable; see _manifest.parquet)."""
    from pydantic import ValidationError

    from hsivar_platform.batch import BatchOptions, parse_value_range, run_batch

    _setup_logging(log_level)
    try:
        vrange = parse_value_range(value_range)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--value-range") from None
    try:
        options = BatchOptions(
            input=input, output=output, model=model, task=task, tile=tile, overlap=overlap, samples=samples,
            seed=seed, value_range=vrange, batch_size=batch_size, uncertainty=uncertainty,
            output_dtype=output_dtype, actors=actors,
            min_actors=min_actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
            memory_per_actor_gb=memory_per_actor_gb, force=force,
            fail_on_error=fail_on_error, manifest_interval_s=manifest_interval_s,
            progress_interval_s=progress_interval_s,
        )
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise typer.BadParameter("; ".join(problems)) from None
    try:
        report = run_batch(options, ray_address=ray_address)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        typer.echo(f"{report.ok} ok, {report.failed} failed, {report.skipped} skipped of {report.total} "
                   f"({report.processed} processed in this run, {report.cubes_per_s:.2f} cubes/s); "
                   f"manifest {report.manifest}")
        for _, error in report.failures:
            typer.echo(f"  failed: {error}", err=True)
    if options.fail_on_error and report.failed:
        raise typer.Exit(1)


def serve_command(
    model: Annotated[str, typer.Option("--model", "-m", help=_MODEL)],
    host: Annotated[str, typer.Option(help="HTTP host of the Serve proxy")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port of the Serve proxy")] = 8000,
    route_prefix: Annotated[str, typer.Option(help="URL prefix of the app")] = "/",
    name: Annotated[str, typer.Option(help="Serve application name")] = "hsivar",
    replicas: Annotated[int | None, typer.Option(min=1, help="fixed replica count (default: autoscaling)")] = None,
    min_replicas: Annotated[int, typer.Option(min=0)] = 1,
    max_replicas: Annotated[int, typer.Option(min=1)] = 2,
    target_ongoing_requests: Annotated[float, typer.Option(min=0.1)] = 4.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    gpus_per_replica: Annotated[float, typer.Option(min=0)] = 0.0,
    cpus_per_replica: Annotated[float, typer.Option(min=0.01)] = 1.0,
    max_request_mb: Annotated[float, typer.Option(min=0.001, help="largest request body (413 above)")] = 64.0,
    token_env: Annotated[str, typer.Option(help=_TOKEN)] = "HSIVAR_SERVE_TOKEN",
    ray_address: Annotated[str | None, typer.Option(help=_RAY)] = None,
    blocking: Annotated[bool, typer.Option(help="keep running until Ctrl-C (--no-blocking: deploy and return)")] = True,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Serve POST /v1/restore, GET /v1/model and GET /healthz over HTTP with Ray Serve."""
    from hsivar_platform.batch import ensure_ray, forwarded_env
    from hsivar_platform.serve import ServeSettings, build_app

    _setup_logging(log_level)
    from ray import serve

    settings = ServeSettings(model=model, device=device, max_request_bytes=int(max_request_mb * 2**20),
                             auth_token_env=token_env or None)
    # The replicas get this shell's S3 / MLflow locations and, when it is set here, the bearer token:
    # auth must not silently turn off because the cluster was started from another shell.
    env = forwarded_env()
    if token_env and os.environ.get(token_env):
        env[token_env] = os.environ[token_env]
    actor_options: dict = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    if env:
        actor_options["runtime_env"] = {"env_vars": env}
    options: dict = {"ray_actor_options": actor_options}
    if replicas is not None:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": target_ongoing_requests}
    ensure_ray(ray_address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings, **options), name=name, route_prefix=route_prefix)
    base = f"http://{host}:{port}{route_prefix.rstrip('/')}"
    typer.echo(f"serving {model} at {base}/v1/restore (health: {base}/healthz)")
    if blocking:
        import time

        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.delete(name)
            typer.echo("stopped")


def restore_app() -> typer.Typer:
    """A Typer app whose only command is :func:`restore_command` (``jobs/restore_batch.py``)."""
    app = typer.Typer(add_completion=False)
    app.command()(restore_command)
    return app


def register(app: typer.Typer) -> None:
    """Add ``restore`` and ``serve`` to the ``hsivar`` console script."""
    app.command("restore")(restore_command)
    app.command("serve")(serve_command)
