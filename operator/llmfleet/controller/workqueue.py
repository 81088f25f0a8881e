"""A deduplicating work queue with per-key exponential backoff.

Watch events only say "look at this object again"; many events for one object
collapse into one reconcile, and one object is never reconciled by two workers at
once (the controller-runtime pattern).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


class Requeue(Exception):
    """Raised by a reconciler to look again after `after` seconds (no error)."""

    def __init__(self, after: float) -> None:
        super().__init__(f"requeue after {after}s")
        self.after = after


class WorkQueue(Generic[K]):
    def __init__(
        self,
        reconcile: Callable[[K], Awaitable[float | None]],
        *,
        workers: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
    ) -> None:
        self._reconcile = reconcile
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._workers_n = workers
        self._base, self._max = base_delay, max_delay
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}")
                       for i in range(self._workers_n)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)  # reconcile again when the running one ends
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            if old.when() <= asyncio.get_running_loop().time() + delay:
                self._timers[key] = old  # an earlier retry is already planned
                return
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        return self._queue.qsize()

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                after = await self._reconcile(key)
                self._failures.pop(key, None)
                if after:
                    self.add_after(key, after)
            except Requeue as rq:
                self.add_after(key, rq.after)
            except asyncio.CancelledError:
                raise
            except Exception:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                delay = min(self._max, self._base * 2 ** (n - 1))
                log.exception("reconcile of %s failed (attempt %d); retrying in %.1fs", key, n, delay)
                self.add_after(key, delay)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
