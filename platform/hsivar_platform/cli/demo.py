"""``hsivar demo``: the whole product on this machine (``make demo``); see :mod:`hsivar_platform.demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hsivar_platform.cli.options import setup
from hsivar_platform.locations import default_work_dir


def demo(
    out: Annotated[Path | None, typer.Option(help="work directory: bucket, MLflow store, checkpoints, evaluation, "
                                             "report, logs; default <$HSIVAR_WORK_DIR, else work>/demo")] = None,
    quick: Annotated[bool, typer.Option(help="a few steps per stage and one small held-out cube "
                                        "(minutes; what CI runs)")] = False,
    bucket: Annotated[str | None, typer.Option(help="data and restored files: a folder or s3://bucket/prefix "
                                               "(endpoint from AWS_ENDPOINT_URL); default OUT/bucket")] = None,
    config: Annotated[Path | None, typer.Option(help="pipeline YAML (default: the repository's "
                                                "configs/tiny.yaml)")] = None,
) -> None:
    """Demo data → train on local Ray (MLflow) → evaluate → batch-restore → serve over HTTP → REPORT.md."""
    out = out or Path(default_work_dir()) / "demo"
    setup("INFO", out / "logs")
    from hsivar_platform.demo import run_demo
    from hsivar_platform.pipeline_config import ConfigError

    try:
        run_demo(out, quick=quick, bucket=bucket, config=config, echo=typer.echo)
    except (FileNotFoundError, ConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
