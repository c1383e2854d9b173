"""What a running gateway holds: settings, upstream clients, metrics, admission control and
the searches in flight."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.traces import TraceStore
from gateway.upstreams import Upstreams
from shared.errors import NotFound, ServiceUnavailable


class Limiter:
    """Admission control: at most ``limit`` searches run at once and at most ``queue`` wait
    for a slot. A request that finds the queue full is refused at once, and one that waited
    ``queue_timeout_s`` without a slot is refused then: 503 with ``Retry-After``, estimated
    from how long searches take lately and how many are ahead. A refused request has cost no
    model work; an admitted one is never cut short by load (its own deadline applies)."""

    def __init__(self, limit: int, queue_timeout_s: float, queue: int | None = None) -> None:
        self.limit = limit
        self.queue = limit * 2 if queue is None else queue
        self.queue_timeout_s = queue_timeout_s
        self._sem = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0
        self._mean_s = 10.0  # a prior for the first Retry-After, replaced as searches end

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free for a new request (at least 1)."""
        ahead = self.waiting + 1
        return max(1, math.ceil(self._mean_s * ahead / self.limit))

    def _busy(self, why: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"gateway busy: {why} ({self.running} searches running, {self.waiting} waiting); "
            "retry later",
            retry_after=self.retry_after_s(),
        )

    async def acquire(self) -> float:
        """Wait for a slot; returns the admission time, for :meth:`release`."""
        if self._sem.locked() and self.waiting >= self.queue:
            raise self._busy(f"the queue of {self.queue} is full")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self._sem.acquire()
        except TimeoutError as exc:
            raise self._busy(f"no slot freed within {self.queue_timeout_s:g} s") from exc
        finally:
            self.waiting -= 1
        self.running += 1
        return time.monotonic()

    def release(self, admitted: float) -> None:
        # an exponential moving average of how long a slot is held
        self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - admitted)
        self.running -= 1
        self._sem.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        admitted = await self.acquire()
        try:
            yield
        finally:
            self.release(admitted)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


CancelOutcome = Literal["cancelled", "already_cancelled"]


@dataclass
class Searches:
    """The searches in flight by id (the request id; a chat completion's id is
    ``chatcmpl-<request id>``), so that another connection can cancel one.

    Cancelling an id that is running stops it (``cancelled``); cancelling it again, while it
    winds down or after it ended, is a no-op (``already_cancelled``, still 200); an id that
    is unknown, or that finished without being cancelled, is a NotFound (404). The ids of
    the last ``remember`` cancelled searches are kept for that answer.
    """

    remember: int = 1024
    _running: dict[str, Cancellable] = field(default_factory=dict)
    _cancelled: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def add(self, search_id: str | None, search: Cancellable) -> Callable[[], None]:
        """Make ``search`` cancellable by ``search_id`` until the returned function is called
        (idempotent). An id already in use by a running search, or none, leaves it
        cancellable by disconnect only."""
        if search_id is None or search_id in self._running:
            return lambda: None

        def remove() -> None:
            if self._running.get(search_id) is search:
                del self._running[search_id]

        self._running[search_id] = search
        return remove

    @contextlib.contextmanager
    def register(self, search_id: str | None, search: Cancellable) -> Iterator[None]:
        """:meth:`add` for the duration of the block."""
        remove = self.add(search_id, search)
        try:
            yield
        finally:
            remove()

    def cancel(self, search_id: str) -> CancelOutcome:
        if search_id in self._cancelled:
            return "already_cancelled"
        search = self._running.get(search_id)
        if search is None:
            raise NotFound(f"no search {search_id!r} is running", field="id")
        search.cancel()
        self._cancelled[search_id] = None
        while len(self._cancelled) > self.remember:
            self._cancelled.popitem(last=False)
        return "cancelled"


@dataclass
class GatewayState:
    """The typed container on ``app.state.gateway`` that routes reach through deps."""

    settings: GatewaySettings
    upstreams: Upstreams
    metrics: GatewayMetrics
    limiter: Limiter
    searches: Searches = field(default_factory=Searches)
    traces: TraceStore = field(default_factory=TraceStore)
