"""The ``hsivar`` command line: one entry point for the model library's tasks.

``hsivar info``         parameters, tokens and counted FLOPs of a preset
``hsivar convert-var``  start a model from the released VAR checkpoints (local files)
``hsivar data …``       the embedded demo dataset
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hsivar.config import PRESETS, preset
from hsivar.data.cli import app as data_app

app = typer.Typer(help="HSI-VAR: all-in-one hyperspectral restoration by next-scale prediction.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(data_app, name="data")


def _check_preset(name: str) -> str:
    if name not in PRESETS:
        raise typer.BadParameter(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return name


@app.command()
def info(
    preset_name: Annotated[
        str, typer.Option("--preset", callback=_check_preset, help="tiny, small or paper")
    ] = "paper",
    bands: Annotated[int, typer.Option(min=1, help="spectral bands C")] = 31,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Parameter counts per component, tokens per scale and counted forward TFLOPs per cube."""
    from hsivar.info import model_info

    data = model_info(preset(preset_name, bands=bands))
    if as_json:
        typer.echo(json.dumps(data))
        return
    typer.echo(f"preset {data['preset']}: cube {data['cube_shape']} (C, H, W)")
    for name, n in data["params"].items():
        typer.echo(f"  {name:<18} {n / 1e6:10.3f} M")
    typer.echo(f"tokens per scale {data['tokens_per_scale']} = {data['tokens']} "
               f"(+{data['condition_tokens']} condition tokens)")
    typer.echo(f"forward TFLOPs per cube (greedy restoration): {data['tflops_per_cube']:.4f}")
    for name, t in data["tflops_by_part"].items():
        typer.echo(f"  {name:<18} {t:10.4f}")


@app.command("convert-var")
def convert_var(
    out: Annotated[Path, typer.Option(help="directory to publish the initial model into")],
    vae: Annotated[Path | None, typer.Option(help="local vae_ch160v4096z32.pth")] = None,
    var: Annotated[Path | None, typer.Option(help="local var_d16.pth")] = None,
    preset_name: Annotated[str, typer.Option("--preset", callback=_check_preset)] = "paper",
    bands: Annotated[int, typer.Option(min=1)] = 31,
) -> None:
    """Initialise a model from the released VAR checkpoints (adapting the band convs) and publish it."""
    from hsivar.models.convert import init_from_var
    from hsivar.models.hsivar import HSIVAR
    from hsivar.publish import save_published

    if vae is None and var is None:
        raise typer.BadParameter("give --vae and/or --var")
    model = HSIVAR(preset(preset_name, bands=bands))
    report = init_from_var(model, vae, var)
    save_published(model, out, stage="init", metadata={"from_var": {"vae": str(vae), "var": str(var)}})
    typer.echo(f"loaded {len(report.loaded)}, adapted {len(report.adapted)}, dropped {len(report.dropped)}, "
               f"fresh {len(report.fresh)} tensors; published to {out}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
