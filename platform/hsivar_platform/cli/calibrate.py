"""``hsivar calibrate``: fit a published model's calibrated uncertainty (and the blur width its sharp validation cubes
read) on validation cubes and publish a copy (:func:`hsivar_platform.calibration.calibrate_published`)."""

from __future__ import annotations

from typing import Annotated

import typer

from hsivar_platform.cli.options import MODEL


def calibrate(
    model: Annotated[str, typer.Option(help=MODEL)],
    data: Annotated[str, typer.Option(help="prefix of clean validation cubes (never the test cubes)")],
    out: Annotated[str, typer.Option(help="where to publish the calibrated copy (dir or s3:// prefix)")],
    levels: Annotated[str, typer.Option(help="all (every level of the model's families; 19 cases per cube for "
                                              "the default six) or middle (one per family)")] = "all",
    max_cubes: Annotated[int, typer.Option(min=0, help="first N cubes only (0: all)")] = 0,
    crop: Annotated[int, typer.Option(min=0, help="centre crop side in pixels (0: whole cubes)")] = 0,
    fit_trust: Annotated[bool, typer.Option(help="fit the trust in the learned correction again too")] = False,
) -> None:
    """Calibrate the uncertainty (|error| ≤ 2σ for ≈95 % of synthesised entries) of a published model on clean
    validation cubes degraded by the seeded protocol, measure the blur width the clean cubes read (which blind
    deblurring takes off the width it reads), and publish the calibrated copy at --out."""
    if levels not in ("all", "middle"):
        raise typer.BadParameter("expected all or middle", param_hint="--levels")
    from hsivar_platform.calibration import calibrate_published

    try:
        calibrate_published(model, data, out, levels=levels, max_cubes=max_cubes or None, crop=crop or None,
                            fit_trust=fit_trust, echo=typer.echo)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
