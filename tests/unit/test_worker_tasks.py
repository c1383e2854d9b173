"""The worker's arq Worker while Redis is away: it waits instead of exiting, and a job it
could not start gives its slot back."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.worker.settings import WorkerSettings
from services.worker.tasks import ResilientWorker, build_worker

pytestmark = pytest.mark.unit


class RedisAway:
    """Every Redis call fails as a restarting Redis makes it fail."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379")

        if name == "pipeline":
            return lambda **kw: self
        return fail

    async def __aenter__(self) -> RedisAway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def worker(concurrency: int = 1) -> ResilientWorker:
    settings = WorkerSettings(redis_url="redis://127.0.0.1:1/0", concurrency=concurrency)
    w = build_worker(settings, handle_signals=False)
    assert isinstance(w, ResilientWorker)
    w._pool = RedisAway()  # type: ignore[assignment]
    return w


async def test_worker_a_poll_without_redis_is_survived() -> None:
    w = worker()
    for _ in range(3):
        await w._poll_iteration()  # raises nothing: the loop goes on and tries again
    assert w._redis_down_since is not None


async def test_worker_a_job_that_could_not_start_gives_its_slot_back() -> None:
    w = worker(concurrency=1)
    for _ in range(3):
        with pytest.raises(RedisConnectionError):
            await w.start_jobs([b"job-1:s0:shard00000"])
    assert w.job_counter == 0  # arq starts no job while this counter is at max_jobs
