"""Where local outputs go: the work directory, and never Ray's temporary copy of a job's working directory.

``ray job submit --working-dir .`` uploads the directory and runs the job in an unpacked copy of it,
``<ray temp>/session_*/runtime_resources/working_dir_files/<package>/`` (Ray 2.60,
``ray/_private/runtime_env/working_dir.py``). Ray deletes that copy when it is no longer used, so a relative
path written by a job — checkpoints, published weights, a SQLite MLflow store, evaluation tables, batch
outputs — would be lost, and a later submission could not resume from it.

* :func:`default_work_dir` is ``$HSIVAR_WORK_DIR`` (an absolute path set in the cluster's environment;
  ``scripts/local_stack.sh`` sets it for its Ray head) or ``work`` (relative to the current directory).
* :func:`check_outlives_job` refuses a local path that must outlive the job when it lands inside the copy,
  with a message naming the setting, where it would go and what to set instead. Outside a job's copy it
  accepts everything, and relative paths resolve against the current directory as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

WORK_DIR_ENV = "HSIVAR_WORK_DIR"
"""Environment variable holding the default work directory (an absolute path) of every job and command."""

DEFAULT_WORK_DIR = "work"
"""The work directory when :data:`WORK_DIR_ENV` is unset or empty (relative to the current directory)."""

# The path parts of Ray's unpacked working directories: <session>/runtime_resources/working_dir_files/<pkg>.
_RESOURCES_DIR = "runtime_resources"
_WORKING_DIR_FILES = "working_dir_files"

JOB_FIX = (f"set {WORK_DIR_ENV}=/absolute/path in the cluster's environment (scripts/local_stack.sh sets it), "
           "or pass --set run.work_dir=/absolute/path, or --set run.storage_path=s3://… with a tracking server "
           "(MLFLOW_TRACKING_URI)")
"""What to set when the training job's outputs would land in the job's copy (the default advice)."""


def job_working_copy(cwd: str | os.PathLike | None = None) -> Path | None:
    """The root of the Ray job working-directory copy that ``cwd`` (default: the current directory) lies in,
    or None when it lies in none (a plain shell, a local Ray, a ``local://`` working directory Ray does not
    delete)."""
    path = Path(cwd if cwd is not None else os.getcwd()).absolute()
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i] == _RESOURCES_DIR and parts[i + 1] == _WORKING_DIR_FILES:
            return Path(*parts[: i + 3])
    return None


def default_work_dir() -> str:
    """The default work directory: ``$HSIVAR_WORK_DIR`` when set and non-empty, else ``work``."""
    return os.environ.get(WORK_DIR_ENV, "").strip() or DEFAULT_WORK_DIR


def local_path(uri: str | os.PathLike) -> Path | None:
    """The local file system path a location names, absolute (against the current directory), or None for a
    remote one: ``s3://…`` and other URLs → None; ``file://X``, ``sqlite:///X`` (SQLite's relative form;
    ``sqlite:////abs`` is absolute) and plain paths → X."""
    s = str(uri)
    for prefix in ("sqlite:///", "file://", "file:"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    else:
        if "://" in s:
            return None
    return Path(s).absolute()


def check_outlives_job(setting: str, value: str | os.PathLike, what: str, fix: str = JOB_FIX) -> None:
    """Refuse a location that must outlive this job when it is a local path inside the job's working copy.

    Args:
        setting: the option or config field the user sets (``run.work_dir``, ``--out``), named in the message.
        value: the location (path, ``file://``, ``sqlite:///``; remote URIs always pass).
        what: what would be written there, e.g. ``checkpoints and published weights``.
        fix: what to set instead (default: :data:`JOB_FIX`, the training job's options).
    Raises:
        ValueError: ``value`` resolves inside :func:`job_working_copy`; the message names ``setting``, the
            resolved path, that Ray deletes the copy, and ``fix``.
    """
    path = inside_job_copy(value)
    if path is not None:
        raise ValueError(
            f"{setting}: {str(value)!r} resolves to {path} ({what}), inside the temporary copy of the working "
            f"directory this Ray job runs in ({job_working_copy()}); Ray deletes that copy, and whatever is "
            f"written there is lost. To keep it: {fix}")


def inside_job_copy(value: str | os.PathLike) -> Path | None:
    """The absolute local path ``value`` names when it lies inside this process's job working-directory copy
    (:func:`job_working_copy`), else None (remote URIs, paths elsewhere, or not inside a job's copy)."""
    copy = job_working_copy()
    path = local_path(value)
    if copy is None or path is None or not path.resolve().is_relative_to(copy.resolve()):
        return None
    return path
