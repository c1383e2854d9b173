"""What a running gateway holds: settings, upstream clients, metrics, the concurrency limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.upstreams import Upstreams
from shared.errors import ServiceUnavailable


class Limiter:
    """At most ``limit`` searches at once; a request waits up to ``queue_timeout_s`` for a
    slot, then gets 503 (the gateway is saturated, not broken)."""

    def __init__(self, limit: int, queue_timeout_s: float) -> None:
        self.limit = limit
        self.queue_timeout_s = queue_timeout_s
        self._sem = asyncio.Semaphore(limit)

    async def acquire(self) -> None:
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self._sem.acquire()
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"gateway busy: {self.limit} searches running and no slot freed within "
                f"{self.queue_timeout_s:g} s; retry later"
            ) from exc

    def release(self) -> None:
        self._sem.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


@dataclass
class GatewayState:
    """The typed container on ``app.state.gateway`` that routes reach through deps."""

    settings: GatewaySettings
    upstreams: Upstreams
    metrics: GatewayMetrics
    limiter: Limiter
