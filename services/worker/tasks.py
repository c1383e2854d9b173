"""The worker's arq tasks and the arq Worker that runs them.

Each task has arq's shape, ``async def task(ctx, *args)``: it validates its arguments (and the
job's spec, in the runner) first; clients are created at worker start-up and closed at
shutdown; payloads are JSON, not pickle.

Crash safety comes from arq: a job stays in arq's queue until a worker finishes it; a worker
that starts it sets an in-progress key with a time to live, and when the worker dies the key
expires and any worker takes the job again. arq sets that lease to the job timeout + 10 s and
never renews it; here a running task renews it every ``lease_s / 3`` with a ``lease_s`` time to
live (:func:`lease`), so a shard whose worker was killed is taken again within ``lease_s``
however long shards may run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from arq import Worker
from arq.constants import in_progress_key_prefix
from arq.worker import Retry, func
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.worker.embeddings import EmbeddingModelError
from services.worker.inputs import InputError
from services.worker.runner import JobRunner
from services.worker.runtime import WorkerRuntime
from services.worker.settings import WorkerSettings
from services.worker.stages.base import JobStopped
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.job_schemas import JOB_ID_PATTERN
from shared.jobs_store import FINISH_TASK, PLAN_TASK, SHARD_TASK, TRAIN_TASK, JobStore, connect

logger = logging.getLogger(__name__)

PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    InputError,
    EmbeddingModelError,
    InvalidRequest,
    Conflict,  # a trained model's name was registered by another job meanwhile
)
"""Retrying cannot help: the job fails at once with the reason."""


class StageArgs(BaseModel):
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    stage: int = Field(ge=0, le=63)


class ShardArgs(StageArgs):
    shard: int = Field(ge=0)


def _runner(ctx: dict[str, Any]) -> JobRunner:
    runner: JobRunner = ctx["runner"]
    return runner


@contextlib.asynccontextmanager
async def lease(ctx: dict[str, Any]) -> AsyncIterator[None]:
    """Keep arq's in-progress key alive while the task runs, with a short time to live."""
    settings: WorkerSettings = ctx["settings"]
    if not settings.lease_s:
        yield
        return
    key = in_progress_key_prefix + ctx["job_id"]
    ttl_ms = int(settings.lease_s * 1000)

    async def renew() -> None:
        while True:
            try:
                await ctx["redis"].pexpire(key, ttl_ms)
            except Exception as exc:  # a Redis blip: try again next round
                logger.warning("lease renewal of %s failed: %s", key, exc)
            await asyncio.sleep(settings.lease_s / 3)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _guarded(
    ctx: dict[str, Any], job_id: str, stage: int, shard: int | None, what: str, coro: Any
) -> str:
    """Run a step: permanent errors fail the job at once; others are retried with backoff
    (arq's Retry) until ``max_shard_attempts``, then fail the job with the last reason."""
    runner = _runner(ctx)
    attempt = int(ctx.get("job_try", 1))
    if shard is None and attempt > runner.rt.settings.max_shard_attempts:
        coro.close()  # a step whose worker died on its last attempt: give up with the reason
        await runner.give_up(job_id, stage, what, attempt)
        return "failed"
    try:
        async with lease(ctx):
            result: str = await coro
            return result
    except JobStopped:
        await runner.stopped(job_id)
        return "job not active"
    except NotFound:
        logger.warning("%s of %s: the job no longer exists", what, job_id)
        return "job gone"
    except PERMANENT_ERRORS as exc:
        reason = getattr(exc, "message", None) or str(exc)
        await runner.fail(job_id, f"{what} failed: {reason}", stage=stage)
        return "failed"
    except Exception as exc:
        logger.warning("%s of job %s failed (attempt %d): %r", what, job_id, attempt, exc)
        again = await runner.attempt_failed(job_id, stage, what, attempt, exc)
        if not again:
            return "failed"
        defer = runner.rt.settings.retry_backoff_s * 2 ** (attempt - 1)
        raise Retry(defer=defer) from exc


async def plan_stage(ctx: dict[str, Any], job_id: str, stage: int) -> str:
    """Plan stage ``stage`` of a job and queue its shards."""
    args = StageArgs(job_id=job_id, stage=stage)
    runner = _runner(ctx)
    return await _guarded(
        ctx, args.job_id, args.stage, None, "planning", runner.plan_stage(args.job_id, args.stage)
    )


async def run_shard(ctx: dict[str, Any], job_id: str, stage: int, shard: int) -> str:
    """Process one shard (skipped when its output is already on disk)."""
    args = ShardArgs(job_id=job_id, stage=stage, shard=shard)
    runner = _runner(ctx)
    attempt = int(ctx.get("job_try", 1))
    return await _guarded(
        ctx,
        args.job_id,
        args.stage,
        args.shard,
        f"shard {args.shard}",
        runner.run_shard(args.job_id, args.stage, args.shard, attempt),
    )


async def finish_stage(ctx: dict[str, Any], job_id: str, stage: int) -> str:
    """Merge a stage's shards and move the job on."""
    args = StageArgs(job_id=job_id, stage=stage)
    runner = _runner(ctx)
    return await _guarded(
        ctx, args.job_id, args.stage, None, "merging", runner.finish_stage(args.job_id, args.stage)
    )


REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
"""What a Redis that is restarting, or briefly unreachable, raises."""


class ResilientWorker(Worker):
    """arq's Worker, kept alive while Redis is away.

    arq's polling loop lets the first Redis error escape, and the worker process exits: a
    Redis restart (a deploy, a crash, a failover) would stop every worker at once. Here a poll
    that finds Redis unreachable is logged once and tried again after ``poll_delay``; shards
    running meanwhile fail on their own Redis calls and, their leases expiring, are taken again
    once Redis is back (a shard whose output is on disk is only counted then, not redone).
    """

    _redis_down_since: float | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        try:
            await super().start_jobs(job_ids)
        except REDIS_DOWN:
            # arq took a slot for the job it was starting (its semaphore and counter) and
            # gives it back only when the job's task ends; no task was made for this one.
            self._release_sem_dec_counter_on_complete()
            raise

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as exc:
            if self._redis_down_since is None:
                self._redis_down_since = time.monotonic()
                logger.warning("Redis is unreachable; waiting for it (%s)", exc)
            return
        if self._redis_down_since is not None:
            logger.info(
                "Redis is reachable again after %.1f s", time.monotonic() - self._redis_down_since
            )
            self._redis_down_since = None


def build_worker(
    settings: WorkerSettings, *, burst: bool = False, handle_signals: bool = True
) -> Worker:
    """An arq Worker for the three tasks; clients are built at start-up, closed at shutdown."""

    async def startup(ctx: dict[str, Any]) -> None:
        store = JobStore(ctx["redis"], settings.artifacts_dir, redis_url=settings.redis_url)
        runtime = WorkerRuntime.build(settings, store)
        ctx["runtime"] = runtime
        ctx["runner"] = JobRunner(runtime)
        logger.info(
            "worker %s up: queue=%s artifacts=%s agent=%s scorer=%s concurrency=%d",
            runtime.name,
            settings.queue_name,
            settings.artifacts_dir,
            settings.agent_url,
            settings.scorer_url,
            settings.concurrency,
        )
        if settings.recover_on_start:
            n = await ctx["runner"].recover()
            if n:
                logger.info("recovered %d job(s) from the artifacts root", n)

    async def shutdown(ctx: dict[str, Any]) -> None:
        runtime: WorkerRuntime | None = ctx.get("runtime")
        if runtime is not None:
            await runtime.aclose()

    tries = settings.max_shard_attempts + 1  # the last try only records the failure
    functions = [
        func(plan_stage, name=PLAN_TASK, max_tries=tries, timeout=settings.shard_timeout_s),
        func(run_shard, name=SHARD_TASK, max_tries=tries, timeout=settings.shard_timeout_s),
        func(run_shard, name=TRAIN_TASK, max_tries=tries, timeout=settings.train_timeout_s),
        func(finish_stage, name=FINISH_TASK, max_tries=tries, timeout=settings.shard_timeout_s),
    ]
    return ResilientWorker(
        functions,
        redis_pool=connect(settings),
        queue_name=settings.queue_name,
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=settings.concurrency,
        job_timeout=settings.shard_timeout_s,
        keep_result=0,
        poll_delay=settings.poll_delay_s,
        max_tries=tries,
        burst=burst,
        handle_signals=handle_signals,
        ctx={"settings": settings},
        job_serializer=lambda obj: json.dumps(obj).encode(),
        job_deserializer=json.loads,
        log_results=False,
    )


def run_worker(settings: WorkerSettings) -> None:
    """Run a worker until SIGINT/SIGTERM (in-flight shards are cancelled and re-queued)."""
    from shared.logging import configure_logging

    configure_logging(settings.log_level, json_logs=settings.log_json)
    worker = build_worker(settings)
    worker.run()
