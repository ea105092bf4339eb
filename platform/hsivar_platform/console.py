"""What a person sees on the console: the platform's own progress, nothing of Ray's internals.

* :func:`setup_logging` — the platform's loggers (``hsivar_platform.*``) print short lines to stderr;
  the libraries' loggers (mlflow, alembic, urllib3, …) go to ``<log_dir>/platform.log``.
* :func:`filter_ray_lines` — the lines Ray prints for its other processes (workers' output, raylet
  errors) go to ``<log_dir>/ray.log``, but the platform's own worker lines (:data:`WORKER_TAG`).
  With :func:`hsivar_platform.ray_runtime.init` (Ray's driver-side loggers to ``ray.log``) the console
  shows only what the job itself says.
* :class:`StageProgress` — one training stage's progress from the events its rank-0 worker sends
  (:mod:`hsivar_platform.train.progress`): a live bar with step, loss and ETA on a terminal; on a pipe
  or in a log file one line every ``interval_s`` seconds and one at the end, so logs stay readable.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
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


class _Stderr(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _file_handler(path: Path, fmt: logging.Formatter) -> logging.FileHandler:
    """The file handler for ``path``, created once per process."""
    key = str(path.absolute())
    if key not in _FILE_HANDLERS:
        handler = logging.FileHandler(path)
        handler.setFormatter(fmt)
        _FILE_HANDLERS[key] = handler
    return _FILE_HANDLERS[key]


_FILE_HANDLERS: dict[str, logging.FileHandler] = {}


def setup_logging(level: str = "INFO", log_dir: str | os.PathLike | None = None) -> Path | None:
    """Platform loggers to stderr at ``level``; third-party loggers to ``<log_dir>/platform.log`` (or WARNING).

    Calling it again (another command in the same process) adds no handler twice.

    Returns:
        The log file's path, or None without ``log_dir``.
    """
    if log_dir is not None:  # MLflow would put its own console handler on its loggers when imported
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        console = _Stderr()
        console.setFormatter(fmt)
        console.addFilter(lambda record: record.name.startswith(("hsivar_platform", "hsivar")))
        root.addHandler(console)
    root.setLevel(logging.WARNING)
    logging.getLogger("hsivar_platform").setLevel(getattr(logging, level.upper(), logging.INFO))
    if log_dir is None:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        return None
    path = Path(log_dir) / "platform.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _file_handler(path, fmt)
    for name in QUIET_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if not isinstance(h, logging.StreamHandler)
                       or isinstance(h, logging.FileHandler)]
        if handler not in lg.handlers:
            lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    return path


WORKER_TAG = "[hsivar]"
"""Starts the platform's own lines logged inside Ray workers (skipped files, failed baselines): the console
shows them although Ray prints them with its per-process prefix."""

RAY_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|autoscaler|gcs_server|(?:[^\n]*?\s)?pid=\d+(?:,[^)\n]*)?)\)")
"""A line Ray's driver prints for another process: ``(raylet) …``, ``(RayTrainWorker pid=12) …``,
``(MapBatches(read_and_tile) pid=7, ip=…) …``."""


class RayLineFilter:
    """A text stream that passes every line through but Ray's per-process lines (:data:`RAY_LINE`), which are
    appended to a log file — unless they carry :data:`WORKER_TAG`.

    Ray's driver prints the raylet's errors and the workers' output on this process's stdout / stderr from
    background threads, a line in several writes: text is buffered per thread until its newline, and a
    partial line that cannot be Ray's (a progress bar's ``\r`` frame, a prompt) is passed through at once.
    """

    def __init__(self, stream: TextIO, log_path: Path) -> None:
        """Filter ``stream``; diverted lines are appended to ``log_path``."""
        self.stream, self.log_path = stream, log_path
        self._local = threading.local()
        self._lock = threading.Lock()

    def _line(self, line: str) -> None:
        if RAY_LINE.match(line) and WORKER_TAG not in line:
            with open(self.log_path, "a") as f:
                f.write(line + "\n")
        else:
            self.stream.write(line + "\n")

    def write(self, text: str) -> int:
        """Write ``text``; complete lines of Ray's are diverted, everything else goes to the stream."""
        with self._lock:
            buf = getattr(self._local, "buf", "") + text
            *lines, buf = buf.split("\n")
            for line in lines:
                self._line(line)
            if buf and not buf.startswith(("\x1b", "(")):
                self.stream.write(buf)
                buf = ""
            self._local.buf = buf
        return len(text)

    def writelines(self, lines: Any) -> None:
        """Write each of ``lines``."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Write out this thread's held partial line (it is not Ray's: Ray ends its lines) and flush."""
        with self._lock:
            buf = getattr(self._local, "buf", "")
            if buf:
                self.stream.write(buf)
                self._local.buf = ""
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def filter_ray_lines(log_dir: str | os.PathLike) -> Path:
    """Divert Ray's per-process lines from this process's stdout and stderr to ``<log_dir>/ray.log``; → that path."""
    path = Path(log_dir) / "ray.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    for native in _NATIVE:
        native.log_path = path
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


GLOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWEF] \d+ \d+\] ")
"""A line Ray's C++ core writes straight to this process's stderr (file descriptor 2), glog style."""


class NativeStderrFilter:
    """File descriptor 2 through a pipe: Ray's C++ log lines (:data:`GLOG_LINE`) go to a log file, the rest to
    the original stderr. Python's ``sys.stderr`` is pointed at the original stderr directly, so the
    platform's own lines keep their order with stdout. For the ``hsivar`` command's own process only (it
    replaces fd 2)."""

    def __init__(self) -> None:
        """Install the pipe on fd 2, point ``sys.stderr`` at the original, start the thread that reads the pipe."""
        self.log_path: Path | None = None
        self.saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        sys.stderr.flush()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.python_stderr = sys.stderr
        sys.stderr = open(os.dup(self.saved), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None),
                          errors="backslashreplace")
        self.thread = threading.Thread(target=self._pump, name="hsivar-stderr", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        buf = b""
        while chunk := os.read(self.read_fd, 65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if GLOG_LINE.match(line) and self.log_path is not None:
                    with open(self.log_path, "ab") as f:
                        f.write(line + b"\n")
                else:
                    os.write(self.saved, line + b"\n")
            if buf and not (buf.startswith(b"[") and len(buf) < 40):  # cannot be (the start of) a C++ line
                os.write(self.saved, buf)
                buf = b""
        if buf:
            os.write(self.saved, buf)

    def close(self) -> None:
        """Put the original stderr back on fd 2 and let the reader write out what is left."""
        try:
            sys.stderr.flush()
        except Exception:  # a closed stream at exit
            pass
        sys.stderr = self.python_stderr
        os.dup2(self.saved, 2)  # the pipe's last write end closes: the reader sees EOF
        self.thread.join(timeout=5)


_NATIVE: list[NativeStderrFilter] = []


def filter_native_stderr() -> None:
    """Install :class:`NativeStderrFilter` on this process once (undone at exit); its log file is set by
    :func:`filter_ray_lines` (``<log_dir>/ray.log``), and until then nothing is diverted."""
    if _NATIVE:
        return
    import atexit

    filt = NativeStderrFilter()
    _NATIVE.append(filt)
    atexit.register(filt.close)
