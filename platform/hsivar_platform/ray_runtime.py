"""The one way the platform reaches Ray: connect to a cluster, or start a local Ray.

Every job (training, evaluation, batch restoration, Serve, the demo) calls :func:`init`:

* an address (the job's option, else ``RAY_ADDRESS``, which ``ray job submit`` and
  ``scripts/local_stack.sh env`` set) → connect to that cluster;
* no address → start a local Ray (``address="local"``, so a stale cluster file never hijacks it) with
  more logical CPUs than cores (training workers and Ray Data tasks must not starve each other on a
  laptop), a capped object store and no dashboard.

Ray's driver-side log lines (start-up banners, Ray Data's execution plans) go to ``<log_dir>/ray.log``
instead of the console when a log folder is given; the workers' output still reaches the driver
(``log_to_driver``), where :func:`hsivar_platform.console.filter_ray_lines` sends it to the same file.

Workers see the driver's storage and tracking locations: :func:`runtime_env` forwards the
:data:`FORWARDED_ENV` variables (endpoints, never credentials).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORWARDED_ENV: tuple[str, ...] = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EC2_METADATA_DISABLED",
    "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "HSIVAR_S3_CONNECT_TIMEOUT_S", "HSIVAR_S3_READ_TIMEOUT_S",
    "HSIVAR_S3_MAX_ATTEMPTS",
)
"""Where-to-find-things variables the driver passes to its Ray workers (no credentials: those come from
the cluster's own environment, so they never appear in job metadata)."""

RAY_LOGGERS: tuple[str, ...] = ("ray", "ray.data", "ray.train", "ray.serve", "ray.tune")
"""Ray's Python loggers, sent to the log file by :func:`init` when it is given a log folder."""


def default_num_cpus() -> int:
    """Logical CPUs of a local Ray: max(4, 2 × cores), so 2 train workers plus Ray Data tasks fit on 2 cores."""
    return max(4, 2 * (os.cpu_count() or 1))


def forwarded_env() -> dict[str, str]:
    """The :data:`FORWARDED_ENV` variables set in this process."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def runtime_env(extra: dict[str, str] | None = None) -> dict[str, Any] | None:
    """A Ray ``runtime_env`` carrying :func:`forwarded_env` (plus ``extra`` variables), or None when empty."""
    env = {**forwarded_env(), **(extra or {})}
    return {"env_vars": env} if env else None


def redirect_ray_logs(log_dir: str | os.PathLike) -> Path:
    """Send Ray's Python loggers to ``<log_dir>/ray.log`` (not the console); → the file's path."""
    path = Path(log_dir) / "ray.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = None
    for name in RAY_LOGGERS:
        lg = logging.getLogger(name)
        for old in [h for h in lg.handlers if isinstance(h, logging.StreamHandler)
                    and not isinstance(h, logging.FileHandler)]:
            lg.removeHandler(old)
        mine = [h for h in lg.handlers if isinstance(h, logging.FileHandler)
                and Path(h.baseFilename) == path.absolute()]
        if mine:
            handler = handler or mine[0]
            continue
        if handler is None:
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        lg.addHandler(handler)
        lg.propagate = False
    return path


def init(address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int = 1024,
         log_dir: str | os.PathLike | None = None, temp_dir: str | os.PathLike | None = None,
         worker_output: bool = True) -> bool:
    """Connect to Ray or start a local one (see the module docstring).

    Args:
        address: cluster address; default ``$RAY_ADDRESS``; neither, or ``"local"`` → a new local Ray.
        num_cpus: logical CPUs of a local Ray (default :func:`default_num_cpus`).
        object_store_mb: object store of a local Ray, MiB.
        log_dir: where Ray's log lines go (``ray.log``) instead of the console; None keeps Ray's defaults.
        temp_dir: session folder of a local Ray (default Ray's, ``/tmp/ray``).
        worker_output: print the workers' output on the driver (``log_to_driver``; benchmarks turn it off).
    Returns:
        True when this call initialised Ray (the caller may ``ray.shutdown()`` when done), False when
        this process was already connected.
    """
    import ray

    if log_dir is not None:
        redirect_ray_logs(log_dir)
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING if log_dir is None else logging.INFO, "log_to_driver": worker_output}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        ray.init(address=address, **quiet)
    else:
        os.environ.setdefault("RAY_ACCEPT_CLOUD_OBJECT_STORE_MEMORY_LIMIT", "1")
        ray.init(address="local", num_cpus=num_cpus or default_num_cpus(),
                 object_store_memory=object_store_mb * 1024**2, include_dashboard=False,
                 _temp_dir=str(temp_dir) if temp_dir is not None else None, **quiet)
    if log_dir is not None:
        redirect_ray_logs(log_dir)  # ray.init configures its loggers again
        logging.getLogger("ray").info("the session's full logs (every process): %s/logs", _session_dir())
    quiet_ray_data()
    return True


def quiet_ray_data() -> None:
    """Ray Data without its console progress bars and execution banners (the platform prints its own progress)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _session_dir() -> str:
    """The local Ray session's folder (its full logs are under ``logs/``), or ``?`` when unknown."""
    try:
        from ray._private import worker

        return str(worker._global_node.get_session_dir_path())
    except Exception:  # only informative
        return "?"
