"""What a person sees on the console: the platform's own progress, nothing of Ray's internals.

* :func:`setup_logging` — the platform's loggers (``hsivar_platform.*``) print short lines to stderr;
  Ray's and the libraries' loggers (mlflow, alembic, urllib3, …) go to ``<log_dir>/platform.log``.
  Together with :func:`hsivar_platform.ray_runtime.init` (Ray's log lines to ``ray.log``, worker output
  kept in Ray's session folder) the console shows only what the job itself says.
* :class:`StageProgress` — one training stage's progress from the events its rank-0 worker sends
  (:mod:`hsivar_platform.train.progress`): a live bar with step, loss and ETA on a terminal; on a pipe
  or in a log file one line every ``interval_s`` seconds and one at the end, so logs stay readable.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

Echo = Callable[[str], None]

QUIET_LOGGERS: tuple[str, ...] = ("mlflow", "alembic", "urllib3", "botocore", "s3fs", "aiobotocore", "filelock",
                                  "httpx", "fsspec", "werkzeug", "ray")
"""Third-party loggers whose lines go to the log file, not the console."""

SHOWN_KEYS: tuple[str, ...] = ("loss", "psnr", "ce", "acc", "refiner_l1", "task_acc")
"""Step metrics shown on the progress line (those the stage reports)."""


def setup_logging(level: str = "INFO", log_dir: str | os.PathLike | None = None) -> Path | None:
    """Platform loggers to stderr at ``level``; third-party loggers to ``<log_dir>/platform.log`` (or WARNING).

    Returns:
        The log file's path, or None without ``log_dir``.
    """
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    if not any(getattr(h, "_hsivar", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        console.addFilter(lambda record: record.name.startswith(("hsivar_platform", "hsivar")))
        console._hsivar = True  # type: ignore[attr-defined]
        root.addHandler(console)
    root.setLevel(logging.WARNING)
    logging.getLogger("hsivar_platform").setLevel(getattr(logging, level.upper(), logging.INFO))
    if log_dir is None:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        return None
    path = Path(log_dir) / "platform.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(fmt)
    for name in QUIET_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if isinstance(h, logging.FileHandler)]
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    return path


RAY_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|autoscaler|gcs_server|pid=\d+|[\w:.\-]+ pid=\d+)[^)]*\)")
"""A line Ray's driver prints for another process (``(raylet) …``, ``(RayTrainWorker pid=12) …``)."""


class RayLineFilter:
    """A text stream that passes every line through but those of :data:`RAY_LINE`, which go to a log file.

    Ray's driver prints the raylet's errors and (with ``log_to_driver``) the workers' output on the
    process's stdout / stderr from background threads; this keeps them off the console.
    """

    def __init__(self, stream: TextIO, log_path: Path) -> None:
        """Filter ``stream``; diverted lines are appended to ``log_path``."""
        self.stream, self.log_path, self._buf = stream, log_path, ""

    def write(self, text: str) -> int:
        """Write ``text``; complete lines of Ray's are diverted, everything else goes to the stream."""
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if RAY_LINE.match(line):
                with open(self.log_path, "a") as f:
                    f.write(line + "\n")
            else:
                self.stream.write(line + "\n")
        if self._buf and not self._buf.startswith(("\x1b", "(")):  # a partial line that is not Ray's (a bar)
            self.stream.write(self._buf)
            self._buf = ""
        return len(text)

    def flush(self) -> None:
        """Flush the underlying stream."""
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def filter_ray_lines(log_dir: str | os.PathLike) -> Path:
    """Divert Ray's per-process lines from this process's stdout and stderr to ``<log_dir>/ray.log``; → that path."""
    path = Path(log_dir) / "ray.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, RayLineFilter):
            setattr(sys, name, RayLineFilter(stream, path))
    return path


def _duration(seconds: float) -> str:
    """``75`` → ``1m15s``; ``3700`` → ``1h01m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def metrics_text(logs: Mapping[str, Any]) -> str:
    """The :data:`SHOWN_KEYS` of a step's metrics as ``loss 0.1234 psnr 25.1``."""
    return " ".join(f"{k} {float(logs[k]):.4g}" for k in SHOWN_KEYS if k in logs)


class StageProgress:
    """Progress of one training stage: steps ``initial..total``, the last metrics and an ETA.

    Use as a context manager; call :meth:`update` with each step event and :meth:`message` with the
    worker's other lines (resumed, validation, published).
    """

    def __init__(self, stage: str, total: int, echo: Echo = print, *, stream: TextIO | None = None,
                 interval_s: float = 30.0) -> None:
        """Progress of stage ``stage`` with ``total`` steps; ``echo`` prints lines, ``stream`` holds the bar."""
        self.stage, self.total, self.echo, self.interval_s = stage, total, echo, interval_s
        self.stream = stream or sys.stderr
        self.step = self.first = 0
        self.logs: dict[str, Any] = {}
        self.t0 = self.t_first = time.perf_counter()
        self.t_line = 0.0
        self.bar: Any = None

    def __enter__(self) -> StageProgress:
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=f"train {self.stage}", unit="step", file=self.stream,
                            dynamic_ncols=True, leave=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.step > self.first:
            self._line()

    def _eta(self) -> float | None:
        done = self.step - self.first
        if done <= 1:
            return None
        rate = (time.perf_counter() - self.t_first) / done
        return rate * (self.total - self.step)

    def _line(self) -> None:
        eta = self._eta()
        tail = f", ETA {_duration(eta)}" if eta is not None and self.step < self.total else ""
        self.echo(f"[train {self.stage}] step {self.step}/{self.total} {metrics_text(self.logs)} "
                  f"({_duration(time.perf_counter() - self.t0)}{tail})")
        self.t_line = time.perf_counter()

    def update(self, step: int, logs: Mapping[str, Any]) -> None:
        """Record step ``step`` (1-based) with its metrics."""
        if not self.step:
            self.first, self.t_first = step - 1, time.perf_counter()
            if self.bar is not None:
                self.bar.n = self.first
        self.logs = dict(logs)
        if self.bar is not None:
            self.bar.update(max(step - self.bar.n, 0))
            self.bar.set_postfix_str(metrics_text(logs), refresh=False)
        self.step = step
        if self.bar is None and (step == self.first + 1 or time.perf_counter() - self.t_line >= self.interval_s):
            self._line()

    def message(self, text: str) -> None:
        """A line from the stage (printed above the bar on a terminal)."""
        line = f"[train {self.stage}] {text}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.echo(line)
