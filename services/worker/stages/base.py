"""What every stage shares: the shard's context, per-record outcomes, counting, and merging.

A stage turns the records of one shard into rows of one or more output streams (``output``
first). Each record ends as kept, dropped (with a reason) or failed (with an error, sampled
into the job's status); nothing is dropped silently. A model service that is down or times out
is not a record failure: it aborts the shard, which is retried with backoff.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from services.worker.artifacts import StagePaths, atomic_open, iter_jsonl
from services.worker.inputs import RawRecord
from shared.errors import ServiceUnavailable, UpstreamTimeout
from shared.job_schemas import InputSpec, JobKind, JobStage, RecordError

if TYPE_CHECKING:
    from services.worker.runtime import WorkerRuntime

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ServiceUnavailable, UpstreamTimeout)
"""Failures of a model service rather than of a record: the shard is retried."""

MAX_ERRORS_PER_SHARD = 5


class RecordFailure(Exception):
    """A record cannot be processed (missing field, unparsable model output)."""


class JobStopped(Exception):
    """The job was cancelled or failed elsewhere: abandon the shard without output."""


@dataclass
class StageContext:
    """What processing one shard needs."""

    job_id: str
    stage_index: int
    shard: int
    runtime: WorkerRuntime
    input: InputSpec
    extras: dict[str, Any]
    """Computed once when the stage was planned (e.g. the prefilter's centroid)."""
    check_active: Callable[[], Awaitable[None]]
    """Raises :class:`JobStopped` once the job is no longer running."""
    folder: Path | None = None
    """The stage's folder (``<artifacts>/<job id>/<stage folder>``)."""


@dataclass
class Outcome:
    status: Literal["kept", "dropped", "failed"]
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reason: str | None = None
    error_type: str | None = None
    error: str | None = None
    record_id: str | None = None


@dataclass
class ShardResult:
    streams: dict[str, list[dict[str, Any]]]
    counts: Counter[str]
    drop_reasons: Counter[str]
    errors: list[RecordError]
    errors_total: int
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "drop_reasons": dict(self.drop_reasons),
            "errors": [e.model_dump() for e in self.errors],
            "errors_total": self.errors_total,
            "stats": self.stats,
        }


def record_id(data: dict[str, Any], index: int, id_field: str | None) -> str:
    """The record's own id (``id_field``, else ``id``) or its position in the stage's input."""
    for key in (id_field, "id"):
        if key and data.get(key) not in (None, ""):
            return str(data[key])
    return f"r{index:07d}"


def require_text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise RecordFailure(f"record has no text field {key!r}")
    return value


def collect(
    stage: JobKind, shard: int, records: list[RawRecord], outcomes: list[Outcome]
) -> ShardResult:
    """Count outcomes, gather rows per stream in record order, and sample errors."""
    streams: dict[str, list[dict[str, Any]]] = {}
    counts: Counter[str] = Counter(records=len(records), **{"in": len(records)})
    reasons: Counter[str] = Counter()
    errors: list[RecordError] = []
    failed = 0
    for rec, out in zip(records, outcomes, strict=True):
        counts[out.status] += 1
        for name, rows in out.rows.items():
            streams.setdefault(name, []).extend(rows)
        if out.status == "dropped":
            reasons[out.reason or "dropped"] += 1
        if out.status == "failed":
            failed += 1
            if len(errors) < MAX_ERRORS_PER_SHARD:
                errors.append(
                    RecordError(
                        stage=stage.value,
                        shard=shard,
                        record_id=out.record_id or f"r{rec.index:07d}",
                        type=out.error_type or "error",
                        message=(out.error or "")[:500],
                        at=time.time(),
                    )
                )
    counts["out"] = len(streams.get("output", []))
    for key in ("kept", "dropped", "failed"):
        counts.setdefault(key, 0)
    return ShardResult(streams, counts, reasons, errors, failed)


async def map_records(
    records: list[RawRecord],
    ctx: StageContext,
    fn: Callable[[RawRecord], Awaitable[Outcome]],
    *,
    concurrency: int,
) -> list[Outcome]:
    """Run ``fn`` on each record, ``concurrency`` at a time, checking for cancellation before
    each. A transient model-service failure aborts the whole shard (it propagates); any other
    exception fails only its record."""
    sem = asyncio.Semaphore(concurrency)

    async def one(rec: RawRecord) -> Outcome:
        if rec.data is None:
            return Outcome("failed", error_type="parse_error", error=rec.error)
        async with sem:
            await ctx.check_active()
            try:
                return await fn(rec)
            except TRANSIENT_ERRORS:
                raise
            except RecordFailure as exc:
                return Outcome("failed", error_type="record_error", error=str(exc))
            except Exception as exc:
                return Outcome(
                    "failed",
                    error_type=getattr(exc, "type", type(exc).__name__),
                    error=str(exc) or type(exc).__name__,
                )

    try:
        async with asyncio.TaskGroup() as tg:  # the first abort cancels the other records
            tasks = [tg.create_task(one(rec)) for rec in records]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    outcomes = [t.result() for t in tasks]
    for rec, out in zip(records, outcomes, strict=True):
        if out.record_id is None and rec.data is not None:
            out.record_id = record_id(rec.data, rec.index, ctx.input.id_field)
    return outcomes


def concat_streams(paths: StagePaths, n_shards: int, stream: str) -> int:
    """Merge one stream's shard files, in shard order, into ``<stream>.jsonl``."""
    n = 0
    with atomic_open(paths.stream(stream)) as out:
        for i in range(n_shards):
            part = paths.shard_stream(i, stream)
            if not part.exists():
                continue
            with open(part, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        out.write(line if line.endswith("\n") else line + "\n")
                        n += 1
    return n


class Stage(ABC):
    """One step of the pipeline, configured by its options."""

    kind: JobKind
    streams: tuple[str, ...] = ("output",)
    single_shard: bool = False
    """All records in one shard (training), and a stage without records fails the job."""

    def __init__(
        self, options: BaseModel, stage: JobStage | None = None, job_spec: Any = None
    ) -> None:
        """``stage``: where the stage sits in its job (its folder; for TriPosT's stages the
        model it uses); ``job_spec``: the whole job's spec."""
        self.options = options
        self.stage = stage or JobStage(self.kind, self.kind.value)
        self.job_spec = job_spec

    @property
    def input_under_artifacts(self) -> bool:
        """Stage 0 reads files under the artifacts root that the worker chose (files it wrote
        when planning, a data job's), not the job's input inside the data roots."""
        return False

    def planned_input(self, artifacts_dir: Path, job_id: str) -> InputSpec | None:
        """The stage's input when it chooses it itself (writing it when planned, the same
        file every time); None: the job's input, or the previous stage's output."""
        return None

    async def prepare(self, runtime: WorkerRuntime) -> dict[str, Any]:
        """Computed once per stage when it is planned; every shard gets it as ``extras``."""
        return {}

    @abstractmethod
    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        """Turn one shard's records into rows."""

    def finish(
        self, paths: StagePaths, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Merge the shard files into the stage's outputs; returns summary fields."""
        for stream in self.streams:
            concat_streams(paths, n_shards, stream)
        return {}

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        """What the job's status shows of the stage's summary once it is done (kept small: it
        travels with every status): why records were dropped, and the stage's own findings."""
        return {"drop_reasons": summary.get("drop_reasons", {})}


def read_rows(path: Any) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))
