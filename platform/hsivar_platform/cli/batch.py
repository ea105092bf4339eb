"""``hsivar restore``: batch restoration of a prefix (also ``jobs/restore_batch.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hsivar.tasks import TASKS
from hsivar_platform.cli.options import MODEL, RAY_ADDRESS, setup
from hsivar_platform.locations import default_work_dir

_INPUT = ("input prefix (folder, file://, s3://), one cube file, or a STAC Item / Collection / ItemCollection JSON "
          "whose assets are restored")
_OUTPUT = "output prefix (gets the outputs and _manifest.parquet)"
_TASK = f"auto, a task family ({' '.join(TASKS)}) or a mixture gaussian:0.7,blur:0.3"


def restore(
    input: Annotated[str, typer.Option("--input", "-i", help=_INPUT)],  # noqa: A002
    output: Annotated[str, typer.Option("--output", "-o", help=_OUTPUT)],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL)],
    task: Annotated[str, typer.Option(help=_TASK)] = "auto",
    tile: Annotated[int | None, typer.Option(help="tile side; must equal the model's (default: the model's)")] = None,
    overlap: Annotated[int | None, typer.Option(min=0, help="tile overlap in pixels (default: tile/4)")] = None,
    samples: Annotated[int, typer.Option(min=1, help="decodings per cube (>1: seeded top-p sampling)")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the first sample")] = 0,
    value_range: Annotated[str | None, typer.Option(
        help="LO,HI: input units mapped to [0, 1], e.g. 0,1 for reflectance (default: each cube's min–max; "
        "an image's dtype range, 0,255 for 8 bits)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="tiles per forward pass")] = 8,
    compiled: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="on a GPU, replay each greedy restoration from a CUDA graph (each model "
        "actor records one per batch size; sampling stays eager); on a CPU, decode through compiled steps")] = False,
    uncertainty: Annotated[bool, typer.Option(help="also write <stem>.std<ext>: the calibrated error bar of a "
                                              "calibrated model (any --samples), else the std over --samples ≥ 2"
                                              )] = False,
    kept_mask: Annotated[bool, typer.Option(help="write <stem>.kept<ext>: 1 where an entry was kept exactly as "
                                            "observed, 0 where it was synthesised")] = True,
    output_dtype: Annotated[str, typer.Option(help="source (the input's dtype) or float32")] = "source",
    asset: Annotated[list[str] | None, typer.Option(
        "--asset", help="with a STAC input: an asset key to restore from every item (repeatable; default: the "
        "assets with the role 'data')")] = None,
    stac: Annotated[bool, typer.Option(help="write a STAC Item beside every output (<name>.stac.json) and "
                                             "<output>/collection.json linking them")] = True,
    actors: Annotated[int, typer.Option(min=1, help="model actors (pool maximum)")] = 1,
    min_actors: Annotated[int | None, typer.Option(min=1, help="pool minimum (default: --actors)")] = None,
    gpus_per_actor: Annotated[float | None, typer.Option(min=0, help="default: 1 when the cluster has GPUs")] = None,
    cpus_per_actor: Annotated[float, typer.Option(min=0.01)] = 1.0,
    memory_per_actor_gb: Annotated[float, typer.Option(min=0.01, help="memory reserved per model actor")] = 1.0,
    fused: Annotated[bool | None, typer.Option(
        "--fused/--split", help="read, restore and write in the model actors, or read and write on CPU tasks around "
        "them (default: fused when the actors have no GPU)", show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="restore everything again, ignoring the manifest")] = False,
    fail_on_error: Annotated[bool, typer.Option(help="exit with status 1 when any input failed")] = False,
    manifest_interval_s: Annotated[float, typer.Option(min=0, help="least seconds between manifest rewrites")] = 2.0,
    progress_interval_s: Annotated[float, typer.Option(min=0, help="least seconds between progress lines")] = 5.0,
    ray_address: Annotated[str | None, typer.Option(help=RAY_ADDRESS)] = None,
    log_dir: Annotated[str | None, typer.Option(help="where Ray's and the libraries' log lines go; default "
                                                "<$HSIVAR_WORK_DIR, else work>/logs")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Restore every cube under --input into --output (resumable; see _manifest.parquet)."""
    from pydantic import ValidationError

    from hsivar.restore import parse_value_range
    from hsivar_platform.batch import BatchOptions, run_batch

    log_dir = log_dir or str(Path(default_work_dir()) / "logs")
    setup(log_level, log_dir)
    try:
        vrange = parse_value_range(value_range)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--value-range") from None
    try:
        options = BatchOptions(
            input=input, output=output, model=model, task=task, tile=tile, overlap=overlap, samples=samples,
            seed=seed, value_range=vrange, batch_size=batch_size, compiled=compiled, uncertainty=uncertainty,
            kept_mask=kept_mask, assets=asset or None, stac=stac,
            output_dtype=output_dtype, actors=actors, min_actors=min_actors, gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor, memory_per_actor_gb=memory_per_actor_gb, fused=fused, force=force,
            fail_on_error=fail_on_error, manifest_interval_s=manifest_interval_s,
            progress_interval_s=progress_interval_s,
        )
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise typer.BadParameter("; ".join(problems)) from None
    try:
        report = run_batch(options, ray_address=ray_address, log_dir=log_dir)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        typer.echo(f"{report.ok} ok, {report.failed} failed, {report.skipped} skipped of {report.total} "
                   f"({report.processed} processed in this run, {report.cubes_per_s:.2f} cubes/s; model "
                   f"{report.model}, version {report.model_version}); manifest {report.manifest}")
        for _, error in report.failures:
            typer.echo(f"  failed: {error}", err=True)
    if options.fail_on_error and report.failed:
        raise typer.Exit(1)
