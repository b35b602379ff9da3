"""A work queue keyed by job, with the semantics of client-go's (k8s.io/client-go/util/workqueue)
that controller-runtime reconciles from.

- An event only marks its key dirty; a key already waiting is not queued twice.
- A key being processed is never handed to a second worker; if it was marked meanwhile it is
  queued once more when its worker is done, so the latest change is always seen.
- Keys are handed out first in, first out: a busy job cannot starve the others.
- `add_after` queues a key later (a backoff ends, a progress scrape is due); of several delays
  for one key the earliest wins. `add_rate_limited` retries a failed key after a delay that
  doubles per consecutive failure, until `forget`.

Pure asyncio: no Kubernetes here, so every rule is unit-tested without a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pretrain_operator import metrics

K = TypeVar("K", bound=Hashable)

# controller-runtime's default per-item limiter: 5 ms doubling per failure, at most 1000 s.
RETRY_BASE_SECONDS = 0.005
RETRY_MAX_SECONDS = 1000.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reconcile of a key asks of the queue."""

    requeue_after: float | None = None  # look again in this many seconds (None: on change only)
    failed: bool = False  # retry with a growing delay


class ShutDownError(Exception):
    """The queue was shut down: workers stop."""


class WorkQueue(Generic[K]):
    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._ready: asyncio.Queue[K | None] = asyncio.Queue()
        self._dirty: set[K] = set()
        self._processing: dict[K, float] = {}  # key -> when its worker took it
        self._queued_at: dict[K, float] = {}
        self._later: dict[K, tuple[float, asyncio.TimerHandle]] = {}  # key -> (due, timer)
        self._failures: dict[K, int] = {}
        self._shut_down = False
        self._metrics = metrics.WorkQueueMetrics(name, self._unfinished, self._longest)

    def __len__(self) -> int:
        """Keys waiting for a worker (the depth)."""
        return len(self._dirty) - len(self._dirty & self._processing.keys())

    def add(self, key: K) -> None:
        if self._shut_down or key in self._dirty:
            return
        self._metrics.adds.inc()
        self._dirty.add(key)
        if key in self._processing:
            return  # queued again by done()
        self._enqueue(key)

    def add_after(self, key: K, delay: float) -> None:
        if self._shut_down:
            return
        if delay <= 0:
            self.add(key)
            return
        due = self._clock() + delay
        waiting = self._later.get(key)
        if waiting is not None:
            if waiting[0] <= due:
                return  # an earlier look is planned already
            waiting[1].cancel()

        def fire() -> None:
            self._later.pop(key, None)
            self.add(key)

        self._later[key] = (due, asyncio.get_running_loop().call_later(delay, fire))

    def add_rate_limited(self, key: K) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self._metrics.retries.inc()
        self.add_after(key, min(RETRY_BASE_SECONDS * 2**failures, RETRY_MAX_SECONDS))

    def forget(self, key: K) -> None:
        """Stop counting `key`'s failures (it succeeded, or it is gone)."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def discard(self, key: K) -> None:
        """The object is gone: drop its planned looks and its failures (a queued key stays and
        finds nothing to do)."""
        self.forget(key)
        waiting = self._later.pop(key, None)
        if waiting is not None:
            waiting[1].cancel()

    async def get(self) -> K:
        key = await self._ready.get()
        if key is None or self._shut_down:
            self._ready.put_nowait(None)  # wake the next worker too
            raise ShutDownError
        now = self._clock()
        self._metrics.queue_seconds.observe(now - self._queued_at.pop(key, now))
        self._dirty.discard(key)
        self._processing[key] = now
        self._metrics.depth.set(len(self))
        return key

    def done(self, key: K) -> None:
        started = self._processing.pop(key, None)
        if started is not None:
            self._metrics.work_seconds.observe(self._clock() - started)
        if key in self._dirty and not self._shut_down:
            self._enqueue(key)

    def shut_down(self) -> None:
        self._shut_down = True
        for _, timer in self._later.values():
            timer.cancel()
        self._later.clear()
        self._ready.put_nowait(None)

    def _enqueue(self, key: K) -> None:
        self._queued_at[key] = self._clock()
        self._ready.put_nowait(key)
        self._metrics.depth.set(len(self))

    def _unfinished(self) -> float:
        now = self._clock()
        return sum(now - started for started in self._processing.values())

    def _longest(self) -> float:
        now = self._clock()
        return max((now - started for started in self._processing.values()), default=0.0)


def start_workers(
    queue: WorkQueue[K],
    count: int,
    reconcile: Callable[[K], Awaitable[Outcome]],
    logger: logging.Logger,
) -> list[asyncio.Task[None]]:
    """`count` workers, each taking one key at a time: at most `count` reconciles run at once,
    never two of one key."""

    async def work() -> None:
        while True:
            try:
                key = await queue.get()
            except ShutDownError:
                return
            try:
                outcome = await reconcile(key)
            except Exception:  # a bug in a reconcile must not stop its worker
                logger.exception("reconcile of %s raised", key)
                outcome = Outcome(failed=True)
            finally:
                queue.done(key)
            if outcome.failed:
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
            if outcome.requeue_after is not None:
                queue.add_after(key, outcome.requeue_after)
            # A reconcile that made no API call never gave the loop up, and the queue's get does
            # not when a key is waiting: yield, or a job requeued at once would starve the
            # watches that fill the indexes (and so never see what would end its loop).
            await asyncio.sleep(0)

    return [asyncio.create_task(work(), name=f"{queue.name}-worker-{n}") for n in range(count)]
