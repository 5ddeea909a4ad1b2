"""``WriteLane``: the threads a streamed message's writes run on, apart from everything else.

Why a lane of its own, and not the store's pool:

* **The writes before an upstream call never queue behind chunk writes.** Creating a
  conversation, storing the user message and opening the reply's writer decide when a client
  sees its first event; chunk writes and seals only decide how far storing runs behind. On one
  first-in first-out pool, 200 streams' chunk writes put every new request's writes at the back
  of a queue seconds long (and with a stalled disk, many seconds).
* **Fewer hand-offs per write.** A worker takes every job waiting when it wakes (up to
  ``max_batch``), runs them one after the other, and hands all their results back to the event
  loop at once: one ``call_soon_threadsafe`` (one wake-up of the loop through its self-pipe)
  per batch, not per job, and a busy lane wakes no thread at all. Under load that is most of
  what a chunk write costs the event loop, and it keeps the number of threads contending for
  the GIL with the loop down to the few that have work.

Each job runs whole on one thread, in the submitter's ``contextvars`` context, exactly as a
``run_in_executor`` job would; a job's result or exception is its future's. Jobs of one writer
never run concurrently (a writer awaits each before the next), so a batch needs no ordering
beyond first-in first-out. Durability is the job's own: a chunk job in ``chunk`` mode returns
only once its chunk is durable, so a future resolved by the lane is a durable chunk.

Threads are started on demand, when a job waits and no worker is idle: at once up to
``eager_workers`` (4), and beyond that, up to ``max_workers``, only once the oldest waiting job
has waited ``grow_after`` (20 ms). A healthy disk is served by the few: in the relay benchmark
(200 streams, 2 cores) four threads stored more per second than sixteen, which only add
threads contending for the GIL with the event loop. A disk that stalls every ``fsync`` makes
jobs wait, and the lane grows to keep ``max_workers`` writes in flight (the kernel batches
concurrent syncs into one journal commit).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from ._exceptions import InvalidArgument

__all__ = ["DEFAULT_LANE_WORKERS", "WriteLane"]

T = TypeVar("T")

#: Threads of a lane at most: writes in flight at once when the disk is slow (fsync-bound, so
#: not tied to the core count).
DEFAULT_LANE_WORKERS = 16
#: Threads started as soon as a job waits with no idle worker; more only once jobs wait long.
DEFAULT_EAGER_WORKERS = 4
#: How long the oldest job must have waited before a thread beyond the eager ones starts.
DEFAULT_GROW_AFTER_S = 0.02
#: Jobs a worker takes per wake-up: bounds how long the first result of a batch waits for the
#: last one (each job is one chunk write: tens to hundreds of microseconds).
DEFAULT_MAX_BATCH = 32

_Job = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
    float,  # when it was submitted (time.monotonic)
]


class WriteLane:
    """A small pool of threads that runs blocking jobs in batches; see the module docstring."""

    def __init__(
        self,
        max_workers: int = DEFAULT_LANE_WORKERS,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        eager_workers: int = DEFAULT_EAGER_WORKERS,
        grow_after: float = DEFAULT_GROW_AFTER_S,
        name: str = "chunkstore-lane",
    ) -> None:
        for label, value in (
            ("max_workers", max_workers),
            ("max_batch", max_batch),
            ("eager_workers", eager_workers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{label} must be an integer >= 1, got {value!r}")
        if isinstance(grow_after, bool) or not isinstance(grow_after, int | float):
            raise InvalidArgument(f"grow_after must be a number of seconds, got {grow_after!r}")
        if not grow_after >= 0:  # NaN too
            raise InvalidArgument(f"grow_after must be >= 0, got {grow_after!r}")
        self._max_workers = max_workers
        self._eager = min(eager_workers, max_workers)
        self._grow_after = float(grow_after)
        self._max_batch = max_batch
        self._name = name
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._idle = 0  # workers waiting for a job
        self._shutdown = False

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def submit(self, func: Callable[..., T], /, *args: Any) -> asyncio.Future[T]:
        """Queue ``func(*args)``; its future (of the running loop) resolves when it has run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job: _Job = (loop, future, contextvars.copy_context(), func, args, time.monotonic())
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new jobs after shutdown")
            self._jobs.append(job)
            if self._idle:
                self._cond.notify()
            elif self._should_grow():
                self._start_worker()
        return future

    def _should_grow(self) -> bool:
        """Whether to start a worker for the waiting jobs (none idle). Caller holds the lock."""
        started = len(self._threads)
        if started >= self._max_workers or self._shutdown:
            return False
        if started < self._eager:
            return True
        return time.monotonic() - self._jobs[0][5] >= self._grow_after

    async def run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await lane.run(func, *args, **kwargs)``: one job, like ``run_in_executor``."""
        if kwargs:
            return await self.submit(lambda: func(*args, **kwargs))
        return await self.submit(func, *args)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new jobs; the workers finish the queued ones, then stop (joined if ``wait``)."""
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()

    def _start_worker(self) -> None:
        # Caller holds the condition's lock.
        thread = threading.Thread(
            target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        cond = self._cond
        jobs = self._jobs
        while True:
            with cond:
                while not jobs:
                    if self._shutdown:
                        return
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                take = min(len(jobs), self._max_batch)
                batch = [jobs.popleft() for _ in range(take)]
                if jobs:
                    # More waiting than this batch takes: another worker takes them now rather
                    # than after this batch (with a stalled disk, many seconds later).
                    if self._idle:
                        cond.notify()
                    elif self._should_grow():
                        self._start_worker()
            self._run_batch(batch)

    @staticmethod
    def _run_batch(batch: list[_Job]) -> None:
        # Results grouped per loop (a lane may serve several), each group handed back at once.
        done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for loop, future, context, func, args, _ in batch:
            if future.cancelled():
                continue  # read without the loop's lock: at worst the job runs for nothing
            try:
                outcome: tuple[asyncio.Future[Any], bool, Any] = (
                    future,
                    True,
                    context.run(func, *args),
                )
            except BaseException as exc:  # handed to the awaiting coroutine, as an executor does
                outcome = (future, False, exc)
            done.setdefault(loop, []).append(outcome)
        for loop, outcomes in done.items():
            try:
                loop.call_soon_threadsafe(_deliver, outcomes)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to await these futures


def _deliver(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the loop: resolve a batch's futures (those not cancelled meanwhile)."""
    for future, ok, value in outcomes:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        elif isinstance(value, StopIteration):
            # A future refuses StopIteration (it would end the awaiting coroutine's generator).
            future.set_exception(RuntimeError(f"the job raised {value!r}"))
        else:
            future.set_exception(value)
