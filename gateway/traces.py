"""Past responses by id: ``GET /v1/traces/{id}``, for the /ui page and anyone who wants a trace
back after the fact.

Every finished search's :class:`ReasonResponse` is kept under its id (the request id; a chat
completion's ``chatcmpl-<id>`` names it too): the last ``trace_memory`` in memory, and, with
``trace_ttl_s`` > 0, in the Redis of ``redis_url`` for that long, so that every gateway replica
(and a restarted one) finds them. Redis is a convenience here, never a dependency of a search:
a write that fails is logged and skipped (and Redis is left alone for a while); a read that
cannot reach it answers from memory, or 503 naming the trace store when the id is not there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from fastapi import APIRouter, Request

from shared.errors import NotFound, ServiceUnavailable
from shared.gateway_schemas import ReasonResponse
from shared.http import error_responses
from shared.jobs_store import redacted_url

logger = logging.getLogger(__name__)

KEY_PREFIX = "rationalyst:trace:"
RETRY_AFTER_FAILURE_S = 30.0
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def trace_key(trace_id: str) -> str:
    """The id a trace is stored under: a chat completion's id names its search's."""
    return trace_id.removeprefix("chatcmpl-")


class TraceStore:
    """The last ``memory`` responses in memory, and in Redis for ``ttl_s`` when ``redis_url``
    is given and ``ttl_s`` > 0."""

    def __init__(
        self,
        memory: int = 200,
        *,
        redis_url: str | None = None,
        ttl_s: float = 0.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.memory = memory
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, str] = OrderedDict()
        self._url = redis_url or ""
        self._redis: Any = None
        if redis_url and ttl_s > 0:
            self._redis = aioredis.from_url(
                redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
            )
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def _redis_usable(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._down_until

    def _redis_failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S
        logger.warning(
            "trace store: Redis at %s unreachable (%s); memory only for %.0f s",
            redacted_url(self._url),
            exc,
            RETRY_AFTER_FAILURE_S,
        )

    def put(self, response: ReasonResponse) -> None:
        """Keep a response (no-op without an id). The Redis write runs in the background."""
        if response.id is None:
            return
        key = trace_key(response.id)
        data = response.model_dump_json()
        if self.memory > 0:
            self._items[key] = data
            self._items.move_to_end(key)
            while len(self._items) > self.memory:
                self._items.popitem(last=False)
        if self._redis_usable():
            task = asyncio.get_running_loop().create_task(self._write(key, data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, key: str, data: str) -> None:
        try:
            await self._redis.set(KEY_PREFIX + key, data, ex=max(1, round(self.ttl_s)))
        except _REDIS_ERRORS as exc:
            self._redis_failed(exc)

    async def get(self, trace_id: str) -> ReasonResponse:
        key = trace_key(trace_id)
        data = self._items.get(key)
        if data is None and self._redis is not None:
            try:
                raw = await self._redis.get(KEY_PREFIX + key)
            except _REDIS_ERRORS as exc:
                self._redis_failed(exc)
                raise ServiceUnavailable(
                    f"trace {trace_id!r} is not in memory and the trace store (Redis at "
                    f"{redacted_url(self._url)}) is unreachable: {exc}"
                ) from exc
            data = raw.decode() if isinstance(raw, bytes) else raw
        if data is None:
            raise NotFound(
                f"no trace {trace_id!r}: unknown, or older than the last {self.memory} kept "
                f"(and the Redis TTL of {self.ttl_s:g} s)",
                field="trace_id",
            )
        return ReasonResponse.model_validate_json(data)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()


def get_traces(request: Request) -> TraceStore:
    state = getattr(request.app.state, "gateway", None)
    if state is None:
        raise ServiceUnavailable("the gateway is starting")
    store: TraceStore = state.traces
    return store


router = APIRouter(tags=["traces"])


@router.get(
    "/v1/traces/{trace_id}",
    response_model=ReasonResponse,
    responses=error_responses(
        401,
        404,
        422,
        503,
        notes={
            404: "No response with this id is kept (unknown, or expired).",
            503: "The id is not in memory and the trace store (Redis) is unreachable.",
        },
    ),
)
async def get_trace(trace_id: str, request: Request) -> ReasonResponse:
    """A past search's response by its id (the response's `id`, its X-Request-Id, or a chat
    completion's `chatcmpl-...` id)."""
    return await get_traces(request).get(trace_id)
