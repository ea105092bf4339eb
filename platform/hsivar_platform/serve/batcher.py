"""Adaptive batching of tiles for the Serve model replica: no wait when the model is idle, shared passes under load.

Ray Serve's ``@serve.batch`` waits ``batch_wait_timeout_s`` after the first item for more to arrive, so a lone
request pays the whole window with nothing to batch; with a zero window it cuts a batch of one and queues it
behind the running pass, while the items that arrive in the meantime wait for a batch of their own.
:class:`AdaptiveBatcher` instead forms each batch when the model becomes free::

    model idle   → the queued items go at once (one request's tiles, submitted together, share that pass)
    model busy   → items queue; when the pass ends, everything queued (up to max_batch_size) is the next pass

so the batch size follows the load: 1 at low concurrency with no added latency, full batches when requests
arrive faster than the model runs. ``wait_s > 0`` restores a fill window (an idle model waits up to that long
for a batch to fill), for models whose pass costs little more for more items (GPUs at small batches).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class AdaptiveBatcher(Generic[J, R]):
    """Runs ``run(items) -> results`` (same length and order) on ``executor``, one batch at a time, for items
    submitted from any number of concurrent coroutines of one event loop."""

    def __init__(self, run: Callable[[list[J]], list[R]], executor: Executor, max_batch_size: int,
                 wait_s: float = 0.0) -> None:
        """``run``: the batched function (called in ``executor``, never on the event loop); ``max_batch_size``:
        most items per call; ``wait_s``: how long an idle model waits for a batch to fill (0: go at once)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be ≥ 1, got {max_batch_size}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be ≥ 0, got {wait_s}")
        self.run, self.executor = run, executor
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self._queue: asyncio.Queue[tuple[J, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[J]) -> list[R]:
        """Queue ``items`` together (they share a pass when they fit in one) and wait for their results.

        Raises:
            Exception: whatever ``run`` raised for a batch holding one of ``items`` (the first such).
        """
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._dispatch(), name="hsivar-adaptive-batcher")
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for f in futures:  # a cancelled request: its queued items are dropped, not run
                f.cancel()
            raise

    async def _dispatch(self) -> None:
        """The one loop that forms batches and runs them in turn (the next batch forms while one runs)."""
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            if self.wait_s > 0:
                deadline = loop.time() + self.wait_s
                while len(batch) < self.max_batch_size and (left := deadline - loop.time()) > 0:
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), left))
                    except asyncio.TimeoutError:
                        break
            while len(batch) < self.max_batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(item, future) for item, future in batch if not future.done()]  # cancelled meanwhile
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batched function returned {len(results)} results for {len(batch)} items")
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)


__all__ = ["AdaptiveBatcher"]
