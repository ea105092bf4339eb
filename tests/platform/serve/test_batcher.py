"""The Serve model replica's adaptive tile batcher: no wait when idle, shared passes under load (pure asyncio)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hsivar_platform.serve.batcher import AdaptiveBatcher


class Model:
    """A batched function that records its batches and takes ``seconds`` per pass (in the executor thread)."""

    def __init__(self, seconds: float = 0.0, fail_on: object = None) -> None:
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[list[int]] = []
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        time.sleep(self.seconds)
        if self.fail_on in items:
            raise RuntimeError(f"bad item {self.fail_on}")
        return [10 * i for i in items]


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def test_an_idle_model_runs_a_lone_request_at_once(executor) -> None:
    model = Model()
    batcher = AdaptiveBatcher(model, executor, max_batch_size=8)

    async def main() -> float:
        t = time.perf_counter()
        assert await batcher.submit([1]) == [10]
        return time.perf_counter() - t

    assert asyncio.run(main()) < 0.05  # no batch window paid (Ray's @serve.batch default would wait 10 ms+)
    assert model.batches == [[1]]


def test_tiles_of_one_request_share_a_pass_and_arrivals_during_a_pass_form_the_next(executor) -> None:
    model = Model(seconds=0.2)
    batcher = AdaptiveBatcher(model, executor, max_batch_size=8)

    async def main() -> tuple[list[int], list[list[int]]]:
        first = asyncio.create_task(batcher.submit([1, 2, 3]))
        await asyncio.to_thread(model.started.wait)  # the first pass runs: later requests queue
        rest = [asyncio.create_task(batcher.submit([i])) for i in range(4, 9)]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert first == [10, 20, 30] and rest == [[40], [50], [60], [70], [80]]
    assert model.batches == [[1, 2, 3], [4, 5, 6, 7, 8]]


def test_batches_never_exceed_the_maximum_and_keep_order(executor) -> None:
    model = Model()
    batcher = AdaptiveBatcher(model, executor, max_batch_size=3)
    out = asyncio.run(batcher.submit(list(range(8))))
    assert out == [10 * i for i in range(8)]
    assert [len(b) for b in model.batches] == [3, 3, 2]


def test_a_fill_window_waits_for_more_when_asked(executor) -> None:
    model = Model()
    batcher = AdaptiveBatcher(model, executor, max_batch_size=4, wait_s=0.2)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, batcher.submit([2]))

    asyncio.run(main())
    assert model.batches == [[1, 2]]


def test_a_failing_pass_fails_only_its_own_requests_and_the_batcher_goes_on(executor) -> None:
    model = Model(seconds=0.1, fail_on=2)
    batcher = AdaptiveBatcher(model, executor, max_batch_size=8)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="bad item 2"):
            await batcher.submit([1, 2])
        assert await batcher.submit([3]) == [30]

    asyncio.run(main())


def test_a_cancelled_request_is_not_run(executor) -> None:
    model = Model(seconds=0.2)
    batcher = AdaptiveBatcher(model, executor, max_batch_size=8)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.to_thread(model.started.wait)
        doomed = asyncio.create_task(batcher.submit([2]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert await first == [10]
        assert await batcher.submit([3]) == [30]

    asyncio.run(main())
    assert model.batches == [[1], [3]]


def test_bad_settings_are_refused(executor) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        AdaptiveBatcher(Model(), executor, max_batch_size=0)
    with pytest.raises(ValueError, match="wait_s"):
        AdaptiveBatcher(Model(), executor, max_batch_size=1, wait_s=-1)
