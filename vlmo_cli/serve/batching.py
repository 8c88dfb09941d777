"""Dynamic batching: concurrent requests wait a few milliseconds so that one forward pass serves them all.

A :class:`DynamicBatcher` runs on the server's event loop. :meth:`DynamicBatcher.submit` queues one item and
awaits its result; a worker task takes the first waiting item, collects more for up to ``max_wait`` seconds (or
until ``max_batch`` items), and runs ``fn(items) -> results`` once in the model thread (one thread shared by every
batcher, so forward passes never compete for the CPU or the GPU). An exception in ``fn`` fails the items of that
batch only; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


@dataclass
class BatchStats:
    """Forward passes run and items served: ``items / calls`` is the mean batch size."""

    calls: int = 0
    items: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, float]:
        mean = self.items / self.calls if self.calls else 0.0
        return {"calls": self.calls, "items": self.items, "largest": self.largest, "mean_batch": round(mean, 2)}


class DynamicBatcher:
    """Batches the items submitted concurrently; see the module docstring.

    Args:
        fn: computes the results of a list of items, in order (runs in ``executor``).
        executor: where ``fn`` runs (the model thread).
        max_batch: the most items one call of ``fn`` gets.
        max_wait: seconds the first item of a batch waits for company.
    """

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], executor: Executor, *, max_batch: int = 32,
                 max_wait: float = 0.005) -> None:
        self.fn = fn
        self.executor = executor
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, item: Any) -> Any:
        """The result of ``item``, computed in a batch with the items submitted around the same time."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(item, fut) for item, fut in await self._collect() if not fut.cancelled()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests, which report it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.stats.calls += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
