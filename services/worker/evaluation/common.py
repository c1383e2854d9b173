"""Pieces both runners share: the progress hook, the request pool, file writes."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from services.worker.evaluation.store import JsonlStore

J = TypeVar("J")


class ProgressHook(Protocol):
    """Told about the plan, then about each finished example (the CLI draws a bar)."""

    def planned(self, total: int, done: int) -> None: ...

    def completed(self, record: dict[str, Any]) -> None: ...


class NoProgress:
    def planned(self, total: int, done: int) -> None:
        pass

    def completed(self, record: dict[str, Any]) -> None:
        pass


async def run_pool(
    jobs: Sequence[J],
    run_one: Callable[[J], Awaitable[dict[str, Any]]],
    store: JsonlStore,
    concurrency: int,
    progress: ProgressHook,
) -> None:
    """Run ``jobs`` with at most ``concurrency`` in flight; each record is appended to the
    open ``store`` as soon as it is made. ``run_one`` turns request failures into records;
    anything it raises stops the pool (the records written so far stay)."""
    queue: asyncio.Queue[J] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            record = await run_one(job)
            store.append(record)
            progress.completed(record)

    workers = max(1, min(concurrency, len(jobs)))
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(worker())
    except BaseExceptionGroup as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        raise exc from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8"
    ) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
        os.fchmod(f.fileno(), 0o644)
    os.replace(f.name, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


class RunFiles(BaseModel):
    """What a run (accuracy or step selection) did and where its files are."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    out_dir: Path
    results_path: Path
    report_path: Path
    summary_path: Path
    chart_path: Path | None
    planned: int
    skipped: int
    """Examples already done by an earlier run."""
    requested: int
    """Requests this run sent to the gateway."""
    errors: int
    """Requests of this run that failed (retried by the next run)."""
