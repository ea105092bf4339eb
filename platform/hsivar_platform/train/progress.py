"""Training progress from rank 0 to the driver's console, through a Ray queue.

Worker output stays in Ray's session logs (the console shows no Ray internals); what the user should
see travels as small events: ``{"step": n, "logs": {...}}`` (at most every ``min_interval_s`` and at
logging steps) and ``{"message": text}`` (resumed, validation, published). The driver pumps them into
a :class:`~hsivar_platform.console.StageProgress` while ``trainer.fit()`` runs. A lost event only
delays a progress line; the queue never blocks training.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hsivar_platform.console import StageProgress, metrics_text

log = logging.getLogger(__name__)


class ProgressReporter:
    """Rank 0's side: sends step and message events (other ranks send nothing); also logs each line."""

    def __init__(self, queue: Any, stage: str, rank: int, min_interval_s: float = 0.5) -> None:
        """Report on ``queue`` (a :class:`ray.util.queue.Queue`, or None: log only) for ``stage``."""
        self.queue, self.stage, self.rank, self.min_interval_s = queue, stage, rank, min_interval_s
        self.t_last = 0.0

    def _send(self, event: dict[str, Any]) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(event)
        except Exception:  # full or gone: progress is best effort
            pass

    def step(self, step: int, logs: Mapping[str, Any], force: bool = False) -> None:
        """Step ``step`` finished with these metrics; sent when ``force`` or ``min_interval_s`` passed."""
        if self.rank != 0:
            return
        now = time.perf_counter()
        if force or now - self.t_last >= self.min_interval_s:
            self._send({"step": int(step), "logs": {k: float(v) for k, v in logs.items()}})
            self.t_last = now
        if force:
            log.info("[train %s] step %d %s", self.stage, step, metrics_text(logs))

    def message(self, text: str) -> None:
        """A line for the user (and the worker's log)."""
        if self.rank != 0:
            return
        log.info("[train %s] %s", self.stage, text)
        self._send({"message": text})


def drain(queue: Any, progress: StageProgress, timeout_s: float = 0.0) -> int:
    """Move every waiting event of ``queue`` into ``progress``; → how many."""
    from ray.util.queue import Empty

    n = 0
    while True:
        try:
            event = queue.get(block=timeout_s > 0 and n == 0, timeout=timeout_s or None)
        except Empty:
            return n
        n += 1
        if "message" in event:
            progress.message(event["message"])
        else:
            progress.update(event["step"], event["logs"])


@contextmanager
def pumping(progress: StageProgress) -> Iterator[Any]:
    """A Ray queue for the workers' events, pumped into ``progress`` by a thread while the block runs; → the queue."""
    from ray.util.queue import Queue

    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    stop = threading.Event()

    def pump() -> None:
        failures = 0
        while not stop.is_set() and failures < 20:
            try:
                drain(queue, progress, timeout_s=0.5)
                failures = 0
            except Exception:  # a malformed event or an unreachable queue: progress is best effort
                failures += 1
                time.sleep(0.5)

    thread = threading.Thread(target=pump, name="hsivar-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            drain(queue, progress)
            queue.shutdown()
        except Exception:  # never mask the stage's own outcome
            log.debug("progress queue shutdown failed", exc_info=True)
