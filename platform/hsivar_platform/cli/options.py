"""What the platform's commands share: help texts and the console set-up."""

from __future__ import annotations

import os
from pathlib import Path

from hsivar_platform.console import filter_ray_lines, setup_logging

MODEL = "published model: dir, s3:// prefix, models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS"
RAY_ADDRESS = "Ray address (default: RAY_ADDRESS, else a new local Ray)"


def setup(log_level: str, log_dir: str | os.PathLike | None, ray_lines_to_file: bool = True) -> None:
    """The console of a command: our progress at ``log_level``; the libraries' lines and (when
    ``ray_lines_to_file``) Ray's per-process lines in ``log_dir``."""
    setup_logging(log_level, Path(log_dir) if log_dir is not None else None)
    if log_dir is not None and ray_lines_to_file:
        filter_ray_lines(log_dir)
