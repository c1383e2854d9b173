"""The ``train_rationalyst`` and ``train_tripost`` stages: one shard that runs a training child
process.

The shard writes ``request.json`` and starts ``python -m services.worker.training`` (see
:mod:`services.worker.training.run`); while the child runs, the shard relays its
``progress.json`` to the job API every second and watches for a cancel. A child that exits 0
has written ``result.json`` and ``model/``; ``finish`` registers the model. A worker killed
mid-training takes its child with it; the shard is then taken again (arq's lease) and the new
child resumes from the last complete checkpoint. A child that finds no usable row fails the
job at once, with the counts of what was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from services.worker.artifacts import atomic_open
from services.worker.inputs import InputAccess, InputError, RawRecord, discover
from services.worker.processes import die_with_parent
from services.worker.stages.base import ShardResult, Stage, StageContext
from services.worker.training import EXIT_NO_DATA, TrainPaths
from shared.errors import InvalidRequest
from shared.files import read_json, write_json
from shared.job_schemas import (
    InputFormat,
    InputSpec,
    JobKind,
    TrainingProgress,
    TrainOrmSpec,
    TrainPrmSpec,
    TrainRationalystSpec,
    TrainTripostSpec,
    TripostSpec,
)
from shared.jobs_store import (
    job_dir,
    parse_spec,
    reward_data_file,
    stage_dir,
    training_data_files,
    tripost_samples_file,
)
from shared.model_registry import ModelRegistry, RegisteredModel

logger = logging.getLogger(__name__)

POLL_S = 1.0
TERMINATE_GRACE_S = 15.0


TrainSpec = TrainRationalystSpec | TrainTripostSpec | TrainPrmSpec | TrainOrmSpec
GOLD_FILE = "gold.jsonl"


MODEL_KINDS = {
    JobKind.train_rationalyst: "rationalyst",
    JobKind.train_tripost: "tripost",
    JobKind.train_prm: "prm",
    JobKind.train_orm: "orm",
}
"""The registry kind of the model each training stage registers (also its default prefix)."""


def default_model_name(job_id: str, kind: JobKind = JobKind.train_rationalyst) -> str:
    prefix = MODEL_KINDS[kind]
    return f"{prefix}-{job_id}"[:64]


def training_access(spec: TrainSpec, settings: Any) -> InputAccess:
    """Where a training job's rows may be read: a data job's files under the artifacts root,
    or files named in ``data.train``/``data.dev`` inside the data roots (or uploaded)."""
    if spec.data.job is not None:
        return InputAccess.under(settings.artifacts_dir.expanduser())
    return InputAccess.of_jobs(settings)


def training_input(spec: TrainSpec, artifacts_dir: Path) -> InputSpec:
    """The training rows as the stage's input (planning counts them; none fails the job)."""
    if spec.data.job is not None:
        train = _data_job_rows(spec, artifacts_dir, spec.data.job)
        if not train.is_file():
            raise InputError(f"job {spec.data.job} has no training rows at {train}")
        paths = [str(train)]
    else:
        paths = list(spec.data.train or [])
    return InputSpec(paths=paths, format=InputFormat.jsonl)


TRAIN_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Pool sizes torch and the BLAS libraries read at start-up in the trainer's process."""


def _data_job_rows(spec: TrainSpec, artifacts_dir: Path, job_id: str) -> Path:
    if isinstance(spec, TrainRationalystSpec):
        return training_data_files(artifacts_dir, job_id)[0]
    if isinstance(spec, TrainPrmSpec | TrainOrmSpec):
        return reward_data_file(artifacts_dir, job_id, spec.kind)
    if spec.data.path is not None:
        return job_dir(artifacts_dir, job_id) / spec.data.path
    try:
        source = parse_spec(read_json(job_dir(artifacts_dir, job_id) / "job.json").get("spec"))
    except OSError:
        source = None
    if source is None:
        raise InputError(f"job {job_id} is not on disk (or its spec is unreadable)")
    return tripost_samples_file(artifacts_dir, job_id, source, None)


class TrainStage(Stage):
    kind = JobKind.train_rationalyst
    single_shard = True
    options: TrainSpec

    @property
    def input_under_artifacts(self) -> bool:
        return self.options.data.job is not None

    def planned_input(self, artifacts_dir: Path, job_id: str) -> InputSpec | None:
        return training_input(self.options, artifacts_dir)

    async def prepare(self, runtime: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self._files, runtime.settings)

    def _files(self, settings: Any) -> dict[str, Any]:
        """The training and dev files, resolved and checked against where they may lie (the
        training process checks each again as it opens it): the data job's dev.jsonl when it
        has rows, or the files ``data.dev`` names."""
        data = self.options.data
        root = settings.artifacts_dir.expanduser()
        access = training_access(self.options, settings)
        train = discover(training_input(self.options, root), access, field="data.train")
        if data.job is not None and isinstance(self.options, TrainRationalystSpec):
            _, dev = training_data_files(root, data.job)
            dev_files = [str(dev)] if dev.is_file() and dev.stat().st_size else []
        elif data.job is not None:  # TriPosT samples: the dev rows are held out of them
            dev_files = []
        elif data.dev:
            dev_spec = InputSpec(paths=data.dev, format=InputFormat.jsonl)
            dev_files = [str(s.path) for s in discover(dev_spec, access, field="data.dev")]
        else:
            dev_files = []
        return {"train_files": [str(s.path) for s in train], "dev_files": dev_files}

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        settings = ctx.runtime.settings
        paths = TrainPaths(
            ctx.folder or stage_dir(settings.artifacts_dir.expanduser(), ctx.job_id, self.kind)
        )
        if not paths.result.is_file():
            await asyncio.to_thread(self._write_request, paths, ctx)
            await self._run_child(paths, ctx)
        result = read_json(paths.result)
        data = result["data"]
        dropped = data["train"]["dropped_total"]
        if data.get("dev_held_out_from_train"):
            dropped += data["dev"]["dropped_total"]
        n = len(records)
        counts = Counter(
            {"records": n, "in": n, "kept": n - dropped, "dropped": dropped, "failed": 0, "out": 1}
        )
        reasons = Counter(data["train"]["dropped"])
        return ShardResult(
            streams={"output": [{"model_path": str(paths.model), **result}]},
            counts=counts,
            drop_reasons=reasons,
            errors=[],
            errors_total=0,
            stats={"training": result["metrics"]},
        )

    def _write_request(self, paths: TrainPaths, ctx: StageContext) -> None:
        """What the child trains; written once per attempt (same content every time)."""
        from services.model_server.models import resolve_model

        spec = self.options
        try:
            settings = ctx.runtime.settings
            base = resolve_model(
                spec.base_model,
                artifacts_dir=settings.artifacts_dir,
                allow_hub=False,
                folder_roots=settings.model_roots(),
            )
        except InvalidRequest as exc:
            raise InputError(f"base_model: {exc.message}") from exc
        readable = training_access(spec, ctx.runtime.settings).readable
        write_json(
            paths.request,
            {
                "spec": spec.model_dump(mode="json"),
                "train_files": ctx.extras.get("train_files") or ctx.input.paths,
                "dev_files": ctx.extras.get("dev_files", []),
                "data_roots": [str(d) for d in readable.dirs],
                "base_model_path": base,
            },
        )

    async def _run_child(self, paths: TrainPaths, ctx: StageContext) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        threads = ctx.runtime.settings.train_threads
        if threads:  # the trainer's own pools, whatever the worker itself was given
            env.update(dict.fromkeys(TRAIN_THREAD_VARS, str(threads)))
        with open(paths.log, "ab") as log:  # noqa: ASYNC230 - opening a log file is instant
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.worker.training",
                str(paths.root),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                preexec_fn=die_with_parent,
            )
        logger.info("job %s: training in process %d (log %s)", ctx.job_id, proc.pid, paths.log)
        seen = 0.0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), POLL_S)
                if proc.returncode is not None:
                    break
                try:
                    seen = await self._relay_progress(paths, ctx, seen)
                    await ctx.check_active()  # a cancel stops the child below
                except (RedisError, OSError) as exc:  # a Redis blip must not stop training
                    logger.warning(
                        "job %s: cannot reach Redis (%s); training goes on", ctx.job_id, exc
                    )
            await self._relay_progress(paths, ctx, seen)
        finally:
            if proc.returncode is None:
                await _terminate(proc)
        if proc.returncode == EXIT_NO_DATA:
            reason = read_json(paths.error).get("reason", "no usable training rows")
            raise InputError(reason)
        if proc.returncode != 0:
            tail = _tail(paths.log)
            raise RuntimeError(f"training exited with status {proc.returncode}:\n{tail}")

    @staticmethod
    async def _relay_progress(paths: TrainPaths, ctx: StageContext, seen: float) -> float:
        try:
            mtime = paths.progress.stat().st_mtime
        except FileNotFoundError:
            return seen
        if mtime == seen:
            return seen
        with contextlib.suppress(ValueError, OSError):
            progress = TrainingProgress.model_validate(read_json(paths.progress))
            await ctx.runtime.store.training_progress(ctx.job_id, ctx.stage_index, progress)
        return mtime

    def finish(
        self, paths: Any, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        super().finish(paths, n_shards, shard_stats)
        tp = TrainPaths(paths.root)
        result = read_json(tp.result)
        job_id = paths.root.parent.name
        spec = self.options
        registry = ModelRegistry(paths.root.parent.parent)
        card = registry.register(
            RegisteredModel(
                name=spec.model_name or default_model_name(job_id, self.kind),
                path=str(tp.model.resolve()),
                base_model=spec.base_model,
                kind=MODEL_KINDS[self.kind],
                method=spec.method.value,
                job_id=job_id,
                data={
                    "source": spec.data.model_dump(mode="json", exclude_none=True),
                    "train": result["data"]["train"],
                    "dev": result["data"]["dev"],
                    # reward models: kind, step tag and its id, label mode (also reward.json)
                    **({"reward": result["reward"]} if "reward" in result else {}),
                },
                metrics=result["metrics"],
                hyperparameters=result["hyperparameters"],
            )
        )
        return {"model": card.model_dump(mode="json"), "finished_at": time.time()}


class TrainTripostStage(TrainStage):
    """SFT on TriPosT samples with the weighted loss (:mod:`services.worker.training.data`).

    In a ``tripost`` job its stage 0 trains on the training questions' gold rationales, which
    it writes when planned (``gold.jsonl`` in its folder)."""

    kind = JobKind.train_tripost
    options: TrainTripostSpec

    def planned_input(self, artifacts_dir: Path, job_id: str) -> InputSpec | None:
        if isinstance(self.job_spec, TripostSpec) and self.stage.produces == "gold":
            self._write_gold(artifacts_dir, job_id, self.job_spec)
        return super().planned_input(artifacts_dir, job_id)

    def _write_gold(self, artifacts_dir: Path, job_id: str, spec: TripostSpec) -> None:
        from services.worker.stages.tripost import task_items
        from services.worker.tripost import gold_row

        path = stage_dir(artifacts_dir, job_id, self.stage.folder) / GOLD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [row for item in task_items(spec) if (row := gold_row(item)) is not None]
        if not rows:
            raise InputError(f"task {spec.task} has no gold rationales to train on")
        with atomic_open(path) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


class TrainRewardStage(TrainStage):
    """``train_prm`` / ``train_orm``: a reward model (:mod:`services.worker.training.reward`)
    on a prm_labels job's rows or on files; the held-out rows come from the dev files or are
    split off by problem in the child."""

    kind = JobKind.train_prm
    options: TrainPrmSpec | TrainOrmSpec


class TrainOrmStage(TrainRewardStage):
    kind = JobKind.train_orm


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, a grace period, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), TERMINATE_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
