"""``hsivar data …`` commands (mounted by the main CLI; usable alone as ``app``)."""

from __future__ import annotations

from typing import Annotated

import typer

from hsivar.data.synth import FORMAT_EXTENSIONS, SENSORS

app = typer.Typer(
    help="Data utilities: synthetic demo datasets built from real spectra and real photographs.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """Data utilities (keeps ``make-demo`` a sub-command even while it is the only one)."""


@app.command("make-demo")
def make_demo(
    out_uri: Annotated[str, typer.Argument(help="Output folder or URI (local path, file://, s3://...).")],
    bands: Annotated[
        int | None, typer.Option("--bands", min=1, help="Bands evenly spaced over 400-700 nm (default 31).")
    ] = None,
    sensor: Annotated[
        str | None, typer.Option("--sensor", help=f"Sensor preset instead of --bands: {', '.join(SENSORS)}.")
    ] = None,
    n_train: Annotated[int, typer.Option("--n-train", min=0, help="Training cubes.")] = 8,
    n_val: Annotated[int, typer.Option("--n-val", min=0, help="Validation cubes.")] = 2,
    n_test: Annotated[int, typer.Option("--n-test", min=0, help="Test cubes.")] = 2,
    size: Annotated[int, typer.Option("--size", min=8, help="Cube height = width in pixels.")] = 64,
    fmt: Annotated[str, typer.Option("--format", help=f"File format: {', '.join(FORMAT_EXTENSIONS)}.")] = "npy",
    seed: Annotated[int, typer.Option("--seed", help="Dataset seed (same seed, same cubes).")] = 0,
) -> None:
    """Write OUT_URI/{train,val,test}/cube_XXXX.<ext> and OUT_URI/manifest.json.

    Cubes are (C, H, W) float32 in [0, 1] mixing measured reflectance spectra over real photographs.
    """
    from hsivar.data.synth import make_demo_dataset

    if bands is not None and sensor is not None:
        raise typer.BadParameter("give either --bands or --sensor, not both", param_hint="--sensor")
    if sensor is not None and sensor.lower() not in SENSORS:
        raise typer.BadParameter(f"unknown sensor {sensor!r}; choose from {', '.join(SENSORS)}", param_hint="--sensor")
    if fmt.lower() not in FORMAT_EXTENSIONS:
        raise typer.BadParameter(
            f"unknown format {fmt!r}; choose from {', '.join(FORMAT_EXTENSIONS)}", param_hint="--format"
        )
    written = make_demo_dataset(
        out_uri,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        size=size,
        bands=bands,
        sensor=sensor.lower() if sensor else None,
        format=fmt.lower(),
        seed=seed,
    )
    n_cubes = len(written) - 1
    desc = f"sensor {sensor}" if sensor else f"{bands or 31} bands"
    typer.echo(
        f"wrote {n_cubes} cube(s) ({n_train} train / {n_val} val / {n_test} test, {size}x{size}, {desc}, "
        f"{fmt.lower()}) under {out_uri}; manifest: {written[-1]}"
    )
