"""The ``hsivar`` console script: the model library's commands and the Ray platform's, in one Typer app.

:func:`build_app` assembles it explicitly (no import side effects): the library's commands from
:func:`hsivar.cli.add_commands` (info, convert-var, data) and the platform's — train, evaluate, calibrate,
restore, serve, demo. ``jobs/*.py`` run one command each through :func:`job_app`, so a job and the CLI take the
same flags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from hsivar import cli as library_cli
from hsivar_platform.cli.batch import restore
from hsivar_platform.cli.calibrate import calibrate
from hsivar_platform.cli.demo import demo
from hsivar_platform.cli.serve import serve
from hsivar_platform.cli.train import evaluate, train

_EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def build_app() -> typer.Typer:
    """The ``hsivar`` Typer app with every command."""
    app = typer.Typer(help="HSI-VAR: all-in-one hyperspectral restoration by next-scale prediction, on Ray.",
                      no_args_is_help=True, add_completion=False)
    library_cli.add_commands(app)
    app.command(context_settings=_EXTRA_ARGS)(train)
    app.command()(evaluate)
    app.command()(calibrate)
    app.command()(restore)
    app.command()(serve)
    app.command()(demo)
    return app


def job_app(command: Callable[..., Any], extra_args: bool = False) -> typer.Typer:
    """A Typer app whose only command is ``command`` (``jobs/*.py``); ``extra_args`` passes unknown options on."""
    app = typer.Typer(add_completion=False)
    app.command(context_settings=_EXTRA_ARGS if extra_args else None)(command)
    return app


def run_job(command: Callable[..., Any], prog_name: str, extra_args: bool = False) -> None:
    """Run ``command`` as the whole program ``prog_name`` (``jobs/*.py``), with the console of :func:`main`."""
    from hsivar_platform.console import filter_native_stderr

    filter_native_stderr()
    job_app(command, extra_args)(prog_name=prog_name)


def main() -> None:
    """Console-script entry point (``hsivar``): Ray's C++ log lines on this process's stderr go to the
    command's log folder (:func:`hsivar_platform.console.filter_native_stderr`)."""
    from hsivar_platform.console import filter_native_stderr

    filter_native_stderr()
    build_app()()


__all__ = ["build_app", "calibrate", "evaluate", "job_app", "main", "restore", "run_job", "serve", "train"]
