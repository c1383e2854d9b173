"""Job state in Redis and the artifacts layout on disk, shared by the gateway's job API and the
worker.

What lives where:

* Redis (the queue and a cache of progress): one hash per job ``rationalyst:job:<id>`` (spec,
  state, per-stage counters), a set of finished shards per stage, a hash of running shards, a
  capped list of sampled errors, and a sorted set of job ids by creation time. The queue itself
  is arq's (``enqueue_job`` with deterministic job ids, so enqueueing twice is a no-op).
* Disk (the source of truth for what is done):
  ``<artifacts>/<job id>/<stage>/shards/NNNNN.done.json`` exists only once the shard's output
  was written atomically; a stage's ``done.json`` only once its outputs were merged. Counters in
  Redis are rebuilt from these files when a stage finishes.

Nothing here imports torch; redis errors become :class:`shared.errors.ServiceUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import redis.exceptions
from arq.connections import ArqRedis
from pydantic import Field, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio import ConnectionPool

from shared.data_roots import DataRoots, OutsideDataRoots, default_data_dirs
from shared.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from shared.file_store import FileStore
from shared.job_schemas import (
    JOB_ID_PATTERN,
    LONG_RUNNING_KINDS,
    ArtifactInfo,
    JobKind,
    JobSpec,
    JobStage,
    JobState,
    JobStatus,
    PrmLabelsSpec,
    Progress,
    RecordCounts,
    RecordError,
    StageState,
    StageStatus,
    Timings,
    TrainingProgress,
    TrainOrmSpec,
    TrainPrmSpec,
    TrainRationalystSpec,
    TrainTripostSpec,
    TripostSpec,
    job_stages,
    named_file_ids,
    named_model_folders,
    named_paths,
    stage_kinds,
)
from shared.model_registry import ModelRegistry
from shared.settings import default_cache_dir, models_dir

logger = logging.getLogger(__name__)

KEY_PREFIX = "rationalyst:"
JOBS_INDEX = KEY_PREFIX + "jobs"
MAX_SAMPLED_ERRORS = 20

# arq task names (the worker registers functions under these names)
PLAN_TASK = "plan_stage"
SHARD_TASK = "run_shard"
TRAIN_TASK = "run_training_shard"
"""The same step as SHARD_TASK for LONG_RUNNING_KINDS, under the training timeout."""
FINISH_TASK = "finish_stage"

JOB_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpec)
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)


class JobStoreSettings(BaseSettings):
    """What the gateway's job API and the worker both need. Subclasses set the env prefix."""

    model_config = SettingsConfigDict(extra="ignore", env_file=None)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis holding the job queue and job state (credentials are never logged).",
    )
    artifacts_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "artifacts",
        description="Artifacts root shared by gateway and workers; one folder per job.",
    )
    queue_name: str = Field(default="rationalyst:queue", description="arq queue of the shards.")
    redis_timeout_s: float = Field(
        default=5.0, gt=0, description="Connect and socket timeout of each Redis call."
    )
    data_dirs: Annotated[list[Path] | None, NoDecode] = Field(
        default=None,
        description="Comma-separated folders that jobs may read inputs from (`input.paths`, "
        "`reference.input.paths`, `data.train`, `data.dev`); a relative input path is taken "
        "relative to the first. Unset: the artifacts root and the sample data shipped with "
        "the project (services/worker/sample_corpus). Gateway and workers must agree.",
    )

    @field_validator("data_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, v: object) -> object:
        if isinstance(v, str):
            if v.strip().startswith("["):
                v = json.loads(v)
            else:
                v = [d.strip() for d in v.split(",") if d.strip()]
        return v or None

    prm_max_solutions: int = Field(
        default=16,
        ge=1,
        le=64,
        description="prm_labels: the most solutions per problem (`n_solutions`) a job may ask "
        "for; more is a 422 at submit.",
    )
    prm_max_rollouts: int = Field(
        default=16,
        ge=1,
        le=64,
        description="prm_labels: the most rollouts per probed prefix (`n_rollouts`) a job may "
        "ask for; more is a 422 at submit.",
    )

    def data_roots(self) -> DataRoots:
        """The folders job inputs must lie in (see :mod:`shared.data_roots`)."""
        return DataRoots.of(self.data_dirs or default_data_dirs(self.artifacts_dir))

    def model_roots(self) -> DataRoots:
        """Where a model folder that a job names by path may lie: the data roots and the
        models cache."""
        return self.data_roots() + DataRoots.of([models_dir()])


# --------------------------------------------------------------------------------------------
# Artifacts layout


def training_data_files(root: Path, job_id: str) -> tuple[Path, Path]:
    """Where a finished sft_data (or rationale_pipeline) job keeps its train and dev rows."""
    folder = stage_dir(root, job_id, JobKind.sft_data)
    return folder / "train.jsonl", folder / "dev.jsonl"


def reward_data_file(root: Path, job_id: str, kind: JobKind | str) -> Path:
    """Where a finished prm_labels job keeps the rows a reward training reads: stepwise rows
    for ``train_prm``, outcome rows for ``train_orm`` (in its stage folder, else its own)."""
    name = "stepwise.jsonl" if JobKind(kind) is JobKind.train_prm else "outcome.jsonl"
    in_stage = stage_dir(root, job_id, JobKind.prm_labels) / name
    if in_stage.is_file():
        return in_stage
    top = job_dir(root, job_id) / name
    return top if top.is_file() else in_stage


def job_dir(root: Path, job_id: str) -> Path:
    return root / check_job_id(job_id)


STAGE_FOLDER_RE = re.compile(r"^[a-z0-9_]+(-[a-z0-9]+)?$")
"""A stage's folder: its kind, and for a repeated stage a tag (``tripost_collect-2``)."""


def stage_dir(root: Path, job_id: str, stage: JobKind | str) -> Path:
    """The folder of a stage of a job: a kind, or a stage's folder name."""
    folder = stage.value if isinstance(stage, JobKind) else str(stage)
    if not STAGE_FOLDER_RE.match(folder):
        raise ValueError(f"invalid stage folder {folder!r}")
    return job_dir(root, job_id) / folder


def tripost_samples_file(root: Path, job_id: str, spec: Any, path: str | None) -> Path:
    """Where a finished tripost_collect or tripost job (its validated ``spec``) keeps the
    samples to train on: ``path`` inside its folder, or its (last) collection's output."""
    if path is None:
        folders = [s.folder for s in job_stages(spec) if s.kind is JobKind.tripost_collect]
        path = f"{folders[-1] if folders else JobKind.tripost_collect.value}/output.jsonl"
    return job_dir(root, job_id) / path


def parse_spec(raw: str | None) -> Any:
    """A stored spec (JSON) validated, or None when it is missing or no longer valid."""
    if not raw:
        return None
    try:
        return JOB_SPEC_ADAPTER.validate_json(raw)
    except ValidationError:
        return None


def stages_of(kind: JobKind | str, spec: Any) -> list[JobStage]:
    """The stages of a job from its validated spec, or from its kind alone."""
    if spec is not None:
        return job_stages(spec)
    if JobKind(kind) is JobKind.tripost:  # an invalid spec: its stages cannot be named
        return [JobStage(JobKind.tripost, JobKind.tripost.value)]
    return [JobStage(k, k.value) for k in stage_kinds(kind)]


def check_job_id(job_id: str) -> str:
    if not _JOB_ID_RE.match(job_id):
        raise NotFound(f"no job {job_id!r}")
    return job_id


def is_temporary(path: Path) -> bool:
    return ".tmp" in path.name


def list_artifacts(root: Path, job_id: str, *, include_shards: bool = True) -> list[ArtifactInfo]:
    """Every finished file of a job (temporary files of writes in flight left out)."""
    base = job_dir(root, job_id)
    if not base.is_dir():
        return []
    out: list[ArtifactInfo] = []
    for path in sorted(base.rglob("*")):
        if not path.is_file() or is_temporary(path):
            continue
        rel = path.relative_to(base)
        if not include_shards and "shards" in rel.parts:
            continue
        st = path.stat()
        out.append(
            ArtifactInfo(
                name=rel.as_posix(),
                path=str(path.resolve()),
                size=st.st_size,
                modified_at=st.st_mtime,
            )
        )
    return out


def artifact_path(root: Path, job_id: str, name: str) -> Path:
    """The file ``name`` of a job; NotFound for anything outside the job's folder."""
    base = job_dir(root, job_id).resolve()
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise NotFound(f"no artifact {name!r} in job {job_id}")
    path = (base / name).resolve()
    if not path.is_relative_to(base) or not path.is_file() or is_temporary(path):
        raise NotFound(f"no artifact {name!r} in job {job_id}")
    return path


# --------------------------------------------------------------------------------------------
# Redis


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def connect(settings: JobStoreSettings) -> ArqRedis:
    """An arq Redis client (JSON payloads, not pickle). Connects lazily, so a Redis that is
    down shows as 503 on the first call rather than at start-up."""
    pool = ConnectionPool.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    return ArqRedis(
        pool,
        job_serializer=_json_dumps,
        job_deserializer=json.loads,
        default_queue_name=settings.queue_name,
    )


def redacted_url(url: str) -> str:
    """``redis://:secret@host`` -> ``redis://***@host`` for messages and logs."""
    return re.sub(r"//[^@/]*@", "//***@", url)


@contextlib.asynccontextmanager
async def redis_errors(url: str) -> AsyncIterator[None]:
    """Redis unreachable or timing out -> ServiceUnavailable (503), never a 500 or a hang."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise ServiceUnavailable(
            f"the job store (Redis at {redacted_url(url)}) is unreachable: {exc}"
        ) from exc


_SHARD_DONE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[2]) == 1 then
  local p = 's' .. ARGV[1] .. ':'
  redis.call('HINCRBY', KEYS[1], p .. 'shards_done', 1)
  redis.call('HINCRBY', KEYS[1], p .. 'records_done', ARGV[3])
  redis.call('HINCRBY', KEYS[1], p .. 'in', ARGV[4])
  redis.call('HINCRBY', KEYS[1], p .. 'kept', ARGV[5])
  redis.call('HINCRBY', KEYS[1], p .. 'dropped', ARGV[6])
  redis.call('HINCRBY', KEYS[1], p .. 'failed', ARGV[7])
  redis.call('HINCRBY', KEYS[1], p .. 'out', ARGV[8])
  redis.call('HINCRBYFLOAT', KEYS[1], p .. 'busy_s', ARGV[9])
end
return redis.call('SCARD', KEYS[2])
"""

_SET_STATE_IF_ACTIVE_LUA = """
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'queued' or s == 'running' then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""


def _num(v: Any, cast: type = int) -> Any:
    if v is None or v == "":
        return None
    return cast(float(v)) if cast is int else cast(v)


class JobStore:
    """Typed access to job state. One per process; share it (it holds a connection pool)."""

    def __init__(
        self,
        redis: ArqRedis,
        artifacts_dir: Path,
        *,
        redis_url: str = "",
        data_roots: DataRoots | None = None,
        prm_max_solutions: int = 16,
        prm_max_rollouts: int = 16,
    ) -> None:
        """``data_roots``: where submitted jobs may read (default: the artifacts root and the
        shipped sample data, as the ``data_dirs`` setting's default); ``prm_max_*``: the
        bounds of prm_labels jobs (settings of the same names)."""
        # redis-py types async results as ``Awaitable[T] | T``; Any keeps call sites readable.
        self.redis: Any = redis
        self.artifacts_dir = Path(artifacts_dir).expanduser()
        self.redis_url = redis_url
        self.data_roots = data_roots or DataRoots.of(default_data_dirs(self.artifacts_dir))
        self.files = FileStore(self.artifacts_dir)
        self.prm_limits = {"n_solutions": prm_max_solutions, "n_rollouts": prm_max_rollouts}
        self._shard_done = redis.register_script(_SHARD_DONE_LUA)
        self._set_if_active = redis.register_script(_SET_STATE_IF_ACTIVE_LUA)

    @classmethod
    def from_settings(cls, settings: JobStoreSettings) -> JobStore:
        return cls(
            connect(settings),
            settings.artifacts_dir,
            redis_url=settings.redis_url,
            data_roots=settings.data_roots(),
            prm_max_solutions=settings.prm_max_solutions,
            prm_max_rollouts=settings.prm_max_rollouts,
        )

    async def aclose(self) -> None:
        await self.redis.aclose()

    # -- keys ----------------------------------------------------------------------------

    @staticmethod
    def job_key(job_id: str) -> str:
        return f"{KEY_PREFIX}job:{job_id}"

    @staticmethod
    def done_key(job_id: str, stage: int) -> str:
        return f"{KEY_PREFIX}job:{job_id}:done:{stage}"

    @staticmethod
    def running_key(job_id: str) -> str:
        return f"{KEY_PREFIX}job:{job_id}:running"

    @staticmethod
    def errors_key(job_id: str) -> str:
        return f"{KEY_PREFIX}job:{job_id}:errors"

    def _keys(self, job_id: str, n_stages: int) -> list[str]:
        keys = [self.job_key(job_id), self.running_key(job_id), self.errors_key(job_id)]
        return keys + [self.done_key(job_id, k) for k in range(n_stages)]

    # -- the API's side ------------------------------------------------------------------

    async def ping(self) -> None:
        async with redis_errors(self.redis_url):
            await self.redis.ping()

    async def create(self, spec: Any, *, job_id: str | None = None) -> JobStatus:
        """Register a job and queue the planning of its first stage."""
        job_id = job_id or f"job-{uuid.uuid4().hex[:16]}"
        check_job_id(job_id)
        await asyncio.to_thread(self.check_inputs, spec)
        if isinstance(spec, TrainRationalystSpec):
            await self.check_training_spec(spec)
        if isinstance(spec, TrainTripostSpec):
            await self.check_tripost_training_spec(spec)
        if isinstance(spec, TripostSpec):
            self.check_tripost_names(spec, job_id)
        if isinstance(spec, PrmLabelsSpec):
            await asyncio.to_thread(self.check_prm_labels_spec, spec)
        if isinstance(spec, TrainPrmSpec | TrainOrmSpec):
            await self.check_reward_training_spec(spec)
        now = time.time()
        stages = job_stages(spec)
        fields = {
            "id": job_id,
            "kind": str(spec.kind.value),
            "name": spec.name or "",
            "spec": spec.model_dump_json(),
            "state": JobState.queued.value,
            "created_at": repr(now),
            "stage_index": "0",
            "n_stages": str(len(stages)),
            "errors_total": "0",
        }
        async with redis_errors(self.redis_url):
            created = await self.redis.hsetnx(self.job_key(job_id), "id", job_id)
            if not created:
                raise Conflict(f"job {job_id} already exists")
            await self.redis.hset(self.job_key(job_id), mapping=fields)
            await self.redis.zadd(JOBS_INDEX, {job_id: now})
            await self.enqueue_plan(job_id, 0)
        logger.info("job %s created: %s", job_id, spec.kind.value)
        return await self.get(job_id)

    def check_inputs(self, spec: Any) -> None:
        """Reject at submit any input outside the data roots (422 naming the field, e.g.
        ``input.paths``) and any uploaded file that does not exist (``input.file_id``). The
        worker checks again before it reads: files may change in between."""
        for field, paths in named_paths(spec):
            for raw in paths:
                try:
                    self.data_roots.resolve(raw)
                except OutsideDataRoots as exc:
                    raise InvalidRequest(f"{field}: {exc}", field=field) from None
        model_roots = self.data_roots + DataRoots.of([models_dir()])
        for field, folder in named_model_folders(spec):
            if not model_roots.contains(Path(folder).expanduser()):
                raise InvalidRequest(
                    f"{field}: {folder} is outside the data roots and the models cache "
                    f"({model_roots.describe()}); name a registered or cached model, or a "
                    "model folder inside them",
                    field=field,
                )
        for field, file_id in named_file_ids(spec):
            try:
                self.files.content_path(file_id)
            except NotFound:
                raise InvalidRequest(
                    f"{field}: no uploaded file {file_id!r} (POST /v1/files, GET /v1/files)",
                    field=field,
                ) from None

    async def data_source(
        self, model_name: str | None, data_job: str | None, kinds: tuple[JobKind, ...], what: str
    ) -> JobStatus | None:
        """The checks every training job shares at submit: its model name is not registered
        yet, and its data job (if it names one) exists, is of one of ``kinds`` (``what`` says
        which rows those make) and has succeeded. Returns that job."""
        if model_name and ModelRegistry(self.artifacts_dir).find(model_name):
            raise InvalidRequest(
                f"model name {model_name!r} is already registered", field="model_name"
            )
        if data_job is None:
            return None
        try:
            source = await self.get(data_job)
        except NotFound:
            raise InvalidRequest(f"no job {data_job!r}", field="data.job") from None
        if source.kind not in kinds:
            names = " or ".join(k.value for k in kinds)
            raise InvalidRequest(
                f"job {source.id} is a {source.kind.value} job; {what} come from {names} jobs",
                field="data.job",
            )
        if source.state is not JobState.succeeded:
            raise InvalidRequest(
                f"job {source.id} has not succeeded (it is {source.state.value})",
                field="data.job",
            )
        return source

    async def check_training_spec(self, spec: TrainRationalystSpec) -> None:
        """Reject at submit what would fail at once: a data job that is unknown, unfinished,
        of another kind or without rows, and a model name that is already registered. (Data
        files named directly live on the workers' file system; a worker checks those.)"""
        kinds = (JobKind.sft_data, JobKind.rationale_pipeline)
        source = await self.data_source(spec.model_name, spec.data.job, kinds, "training data")
        if source is None:
            return
        train, _ = training_data_files(self.artifacts_dir, source.id)
        if not train.is_file() or train.stat().st_size == 0:
            raise InvalidRequest(
                f"job {source.id} produced no training rows ({train} is missing or empty)",
                field="data.job",
            )

    async def check_tripost_training_spec(self, spec: TrainTripostSpec) -> None:
        """As :meth:`check_training_spec`, for TriPosT samples: a data job must be a succeeded
        tripost_collect or tripost job whose samples file has rows."""
        kinds = (JobKind.tripost_collect, JobKind.tripost)
        source = await self.data_source(spec.model_name, spec.data.job, kinds, "TriPosT samples")
        if source is None:
            return
        source_spec = JOB_SPEC_ADAPTER.validate_python(source.spec)
        rows = tripost_samples_file(self.artifacts_dir, source.id, source_spec, spec.data.path)
        if not rows.is_file() or rows.stat().st_size == 0:
            raise InvalidRequest(
                f"job {source.id} has no samples at {rows}",
                field="data.path" if spec.data.path else "data.job",
            )

    def check_prm_labels_spec(self, spec: PrmLabelsSpec) -> None:
        """Reject at submit a prm_labels job over the configured bounds, or on a task that is
        unknown, whose data is missing, or whose first items have no gold answer the task's
        checker can read (nothing could be labelled)."""
        for field, limit in self.prm_limits.items():
            value = int(getattr(spec, field))
            if value > limit:
                raise InvalidRequest(
                    f"{field} must be <= {limit} (setting prm_max_{field.removeprefix('n_')})",
                    field=field,
                )
        if spec.task is None:
            return
        from shared.tasks import DataMissingError, UnknownTaskError, get_task
        from shared.tasks.answers import gold_forms

        try:
            items = get_task(spec.task).items(min(spec.items, 8), seed=spec.seed)
        except (UnknownTaskError, DataMissingError, OSError, ValueError) as exc:
            raise InvalidRequest(f"task: {exc}", field="task") from None
        if not any(gold_forms(item) for item in items):
            raise InvalidRequest(
                f"task {spec.task!r} has no gold answers its checker can read (looked at "
                f"{len(items)} items); prm_labels needs them to label steps",
                field="task",
            )

    async def check_reward_training_spec(self, spec: TrainPrmSpec | TrainOrmSpec) -> None:
        """As :meth:`check_training_spec`, for reward models: a data job must be a succeeded
        prm_labels job whose stepwise (PRM) or outcome (ORM) rows exist."""
        kinds = (JobKind.prm_labels,)
        source = await self.data_source(spec.model_name, spec.data.job, kinds, "reward rows")
        if source is None:
            return
        rows = reward_data_file(self.artifacts_dir, source.id, spec.kind)
        if not rows.is_file() or rows.stat().st_size == 0:
            raise InvalidRequest(f"job {source.id} has no rows at {rows}", field="data.job")

    def check_tripost_names(self, spec: TripostSpec, job_id: str) -> None:
        """Reject at submit a tripost job whose models' names are already registered."""
        registry = ModelRegistry(self.artifacts_dir)
        for stage in spec.stages():
            name = spec.model_for(stage.produces, job_id) if stage.produces else None
            if name and registry.find(name):
                raise InvalidRequest(
                    f"model name {name!r} is already registered; choose another model_name",
                    field="model_name",
                )

    async def get(self, job_id: str) -> JobStatus:
        check_job_id(job_id)
        async with (
            redis_errors(self.redis_url),
            self.redis.pipeline(transaction=False) as pipe,
        ):
            pipe.hgetall(self.job_key(job_id))
            pipe.lrange(self.errors_key(job_id), 0, MAX_SAMPLED_ERRORS - 1)
            pipe.hgetall(self.running_key(job_id))
            raw, errors, running = await pipe.execute()
        if not raw:
            raise NotFound(f"no job {job_id!r}")
        return self._status(_decode(raw), errors, _decode(running))

    async def list_jobs(self, *, limit: int = 50, state: JobState | None = None) -> list[JobStatus]:
        """Newest first."""
        async with redis_errors(self.redis_url):
            ids = await self.redis.zrevrange(JOBS_INDEX, 0, -1 if state else limit - 1)
        out: list[JobStatus] = []
        for raw_id in ids:
            try:
                status = await self.get(raw_id.decode())
            except NotFound:  # expired or deleted between the two calls
                continue
            if state is None or status.state is state:
                out.append(status)
            if len(out) >= limit:
                break
        return out

    async def cancel(self, job_id: str) -> JobStatus:
        """Mark a job cancelled; shards stop at their next check (within one shard)."""
        check_job_id(job_id)
        async with redis_errors(self.redis_url):
            if not await self.redis.exists(self.job_key(job_id)):
                raise NotFound(f"no job {job_id!r}")
            now = repr(time.time())
            changed = await self._set_if_active(
                keys=[self.job_key(job_id)],
                args=["state", JobState.cancelled.value, "finished_at", now],
            )
        status = await self.get(job_id)
        if not changed and status.state is not JobState.cancelled:
            raise Conflict(f"job {job_id} has already {status.state.value}")
        logger.info("job %s cancelled", job_id)
        return status

    def artifacts(self, job_id: str) -> list[ArtifactInfo]:
        return list_artifacts(self.artifacts_dir, job_id)

    def artifact_path(self, job_id: str, name: str) -> Path:
        return artifact_path(self.artifacts_dir, job_id, name)

    # -- the worker's side ---------------------------------------------------------------

    async def enqueue_plan(self, job_id: str, stage: int) -> None:
        await self.redis.enqueue_job(
            PLAN_TASK, job_id, stage, _job_id=f"{job_id}:s{stage}:plan", _expires=_EXPIRES_S
        )

    async def enqueue_shard(
        self, job_id: str, stage: int, shard: int, *, kind: JobKind | None = None
    ) -> None:
        await self.redis.enqueue_job(
            TRAIN_TASK if kind in LONG_RUNNING_KINDS else SHARD_TASK,
            job_id,
            stage,
            shard,
            _job_id=f"{job_id}:s{stage}:shard{shard:05d}",
            _expires=_EXPIRES_S,
        )

    async def enqueue_finish(self, job_id: str, stage: int) -> None:
        await self.redis.enqueue_job(
            FINISH_TASK, job_id, stage, _job_id=f"{job_id}:s{stage}:finish", _expires=_EXPIRES_S
        )

    async def raw(self, job_id: str) -> dict[str, str]:
        return _decode(await self.redis.hgetall(self.job_key(job_id)))

    async def spec(self, job_id: str) -> Any:
        """The job's validated spec (the worker's first step of every task)."""
        raw = await self.redis.hget(self.job_key(job_id), "spec")
        if raw is None:
            raise NotFound(f"no job {job_id!r}")
        try:
            return JOB_SPEC_ADAPTER.validate_json(raw)
        except ValidationError as exc:
            raise InvalidRequest(f"job {job_id} has an invalid spec: {exc}") from exc

    async def state(self, job_id: str) -> JobState | None:
        raw = await self.redis.hget(self.job_key(job_id), "state")
        return JobState(raw.decode()) if raw else None

    async def update(self, job_id: str, fields: Mapping[str, Any]) -> None:
        await self.redis.hset(self.job_key(job_id), mapping={k: str(v) for k, v in fields.items()})

    async def set_if_active(self, job_id: str, fields: Mapping[str, Any]) -> bool:
        """Set fields only while the job is queued or running (a cancel or failure wins)."""
        args: list[str] = []
        for k, v in fields.items():
            args += [k, str(v)]
        return bool(await self._set_if_active(keys=[self.job_key(job_id)], args=args))

    async def stage_started(self, job_id: str, stage: int, name: JobKind) -> None:
        now = repr(time.time())
        raw = await self.raw(job_id)
        fields: dict[str, Any] = {"stage_index": stage, f"s{stage}:state": "running"}
        if not raw.get(f"s{stage}:started_at"):
            fields[f"s{stage}:started_at"] = now
        if raw.get("state") == JobState.queued.value:
            fields["state"] = JobState.running.value
            fields["started_at"] = now
        await self.set_if_active(job_id, fields)

    async def training_progress(self, job_id: str, stage: int, progress: TrainingProgress) -> None:
        await self.update(job_id, {f"s{stage}:training": progress.model_dump_json()})

    async def stage_planned(
        self, job_id: str, stage: int, *, shards_total: int, records_total: int
    ) -> None:
        await self.update(
            job_id,
            {f"s{stage}:shards_total": shards_total, f"s{stage}:records_total": records_total},
        )

    async def shard_done(
        self, job_id: str, stage: int, shard: int, counts: Mapping[str, float]
    ) -> int:
        """Count a finished shard once (however often it is reported); returns the number of
        distinct finished shards of the stage (-1 when the job is gone)."""
        args = [
            stage,
            shard,
            int(counts.get("records", 0)),
            int(counts.get("in", 0)),
            int(counts.get("kept", 0)),
            int(counts.get("dropped", 0)),
            int(counts.get("failed", 0)),
            int(counts.get("out", 0)),
            float(counts.get("busy_s", 0.0)),
        ]
        result = await self._shard_done(
            keys=[self.job_key(job_id), self.done_key(job_id, stage)], args=args
        )
        return int(result)

    async def done_shards(self, job_id: str, stage: int) -> set[int]:
        return {int(x) for x in await self.redis.smembers(self.done_key(job_id, stage))}

    async def mark_running(self, job_id: str, stage: int, shard: int, worker: str) -> None:
        await self.redis.hset(self.running_key(job_id), f"{stage}:{shard}", worker)

    async def clear_running(self, job_id: str, stage: int, shard: int) -> None:
        await self.redis.hdel(self.running_key(job_id), f"{stage}:{shard}")

    async def running(self, job_id: str) -> dict[str, str]:
        return _decode(await self.redis.hgetall(self.running_key(job_id)))

    async def add_errors(self, job_id: str, errors: list[RecordError], total: int) -> None:
        """Sample errors into the status (the first MAX_SAMPLED_ERRORS are kept)."""
        if total:
            await self.redis.hincrby(self.job_key(job_id), "errors_total", total)
        if not errors:
            return
        key = self.errors_key(job_id)
        if await self.redis.llen(key) >= MAX_SAMPLED_ERRORS:
            return
        await self.redis.rpush(key, *[e.model_dump_json() for e in errors])
        await self.redis.ltrim(key, 0, MAX_SAMPLED_ERRORS - 1)

    async def fail(self, job_id: str, reason: str, *, stage: int | None = None) -> bool:
        fields: dict[str, Any] = {
            "state": JobState.failed.value,
            "error": reason,
            "finished_at": repr(time.time()),
        }
        if stage is not None:
            fields[f"s{stage}:state"] = StageState.failed.value
        changed = await self.set_if_active(job_id, fields)
        if changed:
            logger.warning("job %s failed: %s", job_id, reason)
        return changed

    async def restore(self, fields: Mapping[str, str], created_at: float) -> bool:
        """Re-register a job found on disk whose hash Redis no longer has (a Redis restart)."""
        job_id = fields["id"]
        if not await self.redis.hsetnx(self.job_key(job_id), "id", job_id):
            return False
        await self.redis.hset(self.job_key(job_id), mapping=dict(fields))
        await self.redis.zadd(JOBS_INDEX, {job_id: created_at})
        return True

    # -- status --------------------------------------------------------------------------

    def _status(
        self, raw: dict[str, str], errors: list[bytes], running: dict[str, str]
    ) -> JobStatus:
        job_id = raw["id"]
        kind = JobKind(raw["kind"])
        try:
            spec = json.loads(raw.get("spec", "null"))
        except ValueError:
            spec = None
        names = stages_of(kind, parse_spec(raw.get("spec")))
        stages: list[StageStatus] = []
        for k, stage in enumerate(names):
            p = f"s{k}:"
            stage_state = raw.get(p + "state", StageState.pending.value)
            stages.append(
                StageStatus(
                    name=stage.kind,
                    label=stage.folder,
                    state=StageState(stage_state),
                    progress=Progress(
                        shards_done=_num(raw.get(p + "shards_done")) or 0,
                        shards_total=_num(raw.get(p + "shards_total")),
                        records_done=_num(raw.get(p + "records_done")) or 0,
                        records_total=_num(raw.get(p + "records_total")),
                        rollouts_done=_num(raw.get(p + "rollouts")),
                    ),
                    counts=RecordCounts(
                        records_in=_num(raw.get(p + "in")) or 0,
                        records_kept=_num(raw.get(p + "kept")) or 0,
                        records_dropped=_num(raw.get(p + "dropped")) or 0,
                        records_failed=_num(raw.get(p + "failed")) or 0,
                        records_out=_num(raw.get(p + "out")) or 0,
                    ),
                    started_at=_num(raw.get(p + "started_at"), float),
                    finished_at=_num(raw.get(p + "finished_at"), float),
                    busy_s=_num(raw.get(p + "busy_s"), float) or 0.0,
                    shards_running=sum(1 for key in running if key.startswith(f"{k}:")),
                    training=_training(raw.get(p + "training")),
                    report=_json_object(raw.get(p + "report")),
                    result=_json_object(raw.get(p + "result")),
                )
            )
        index = min(int(raw.get("stage_index", "0")), len(stages) - 1)
        state = JobState(raw["state"])
        current = stages[index]
        created = float(raw["created_at"])
        started = _num(raw.get("started_at"), float)
        finished = _num(raw.get("finished_at"), float)
        now = time.time()
        timings = Timings(
            created_at=created,
            started_at=started,
            finished_at=finished,
            queued_s=((started or finished or now) - created),
            running_s=(((finished or now) - started) if started else None),
        )
        sampled = []
        for e in errors:
            with contextlib.suppress(ValidationError):
                sampled.append(RecordError.model_validate_json(e))
        return JobStatus(
            id=job_id,
            kind=kind,
            name=raw.get("name") or None,
            state=state,
            error=raw.get("error") or None,
            stage=current.name if state is JobState.running else None,
            progress=current.progress,
            counts=current.counts,
            training=current.training,
            stages=stages,
            errors=sampled,
            errors_total=_num(raw.get("errors_total")) or 0,
            timings=timings,
            artifacts_dir=str(job_dir(self.artifacts_dir, job_id)),
            artifacts=list_artifacts(self.artifacts_dir, job_id, include_shards=False),
            spec=spec,
            result=_json_object(raw.get("result")),
        )


_EXPIRES_S = 30 * 24 * 3600
"""A queued shard is dropped by arq if no worker starts it within this time (arq's default is
one day, too short for a large job on few workers)."""


def _training(raw: str | None) -> TrainingProgress | None:
    if not raw:
        return None
    try:
        return TrainingProgress.model_validate_json(raw)
    except ValidationError:
        return None


def _json_object(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }
