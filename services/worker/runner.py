"""The life of a job, as three idempotent steps that any worker may run, any number of times:

``plan_stage(job, k)``
    Cut stage k's input into shards (``plan.json``, written once), compute what every shard
    needs (the prefilter's centroid), and queue every shard whose output is not on disk.
``run_shard(job, k, i)``
    Skip when ``shards/i.done.json`` exists; else read the shard's records, process them,
    write each output stream atomically, then ``done.json`` (atomically, last). Count it in
    Redis once (a Lua script adds the counts only when the shard enters the done set), and
    queue ``finish_stage`` when the last shard is counted.
``finish_stage(job, k)``
    Check on disk that every shard is done (re-queue any that is not), merge shard files in
    shard order, write the summary and ``done.json``, then plan stage k+1 or mark the job
    succeeded.

A step that runs twice (a worker killed after writing but before acknowledging) redoes work
whose result is written to the same paths, and counts nothing twice; so the merged output has
every record exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from services.worker.artifacts import (
    StagePaths,
    atomic_open,
    read_json,
    remove_temporaries,
    write_json,
)
from services.worker.inputs import (
    InputAccess,
    InputError,
    plan_to_json,
    read_shard,
    shards_from_json,
)
from services.worker.inputs import plan as plan_inputs
from services.worker.runtime import WorkerRuntime
from services.worker.stages import build_stage
from services.worker.stages.base import JobStopped, Stage, StageContext
from shared.job_schemas import (
    InputFormat,
    InputSpec,
    JobStage,
    JobState,
    RecordError,
    StageState,
    job_stages,
)
from shared.jobs_store import KEY_PREFIX, job_dir, parse_spec, stage_dir, stages_of

logger = logging.getLogger(__name__)

COUNT_KEYS = ("records", "in", "kept", "dropped", "failed", "out")
SINGLE_SHARD = 1 << 40
"""Shard size of a single-shard stage: every record in shard 0."""


class JobRunner:
    """The three steps of a job for one worker process."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.rt = runtime
        self.store = runtime.store
        self.root = runtime.settings.artifacts_dir.expanduser()
        self._plans: dict[Path, dict[str, Any]] = {}

    # -- helpers -------------------------------------------------------------------------

    async def active(self, job_id: str) -> bool:
        state = await self.store.state(job_id)
        return state in (JobState.queued, JobState.running)

    async def check_active(self, job_id: str) -> None:
        if not await self.active(job_id):
            raise JobStopped(job_id)

    def paths(self, job_id: str, stage: JobStage) -> StagePaths:
        return StagePaths(stage_dir(self.root, job_id, stage.folder))

    def load_plan(self, paths: StagePaths) -> dict[str, Any]:
        """A stage's plan (written once, never changed), cached for the last few stages."""
        if paths.plan not in self._plans:
            if len(self._plans) >= 16:
                self._plans.pop(next(iter(self._plans)))
            self._plans[paths.plan] = read_json(paths.plan)
        return self._plans[paths.plan]

    def stage_input(
        self, job_id: str, spec: Any, k: int, stages: list[JobStage], stage: Stage
    ) -> InputSpec:
        """What the stage says it reads (a training job's rows, TriPosT's questions, written
        by the stage when it is planned); else stage 0 reads the job's input and a later stage
        the previous one's output."""
        planned = stage.planned_input(self.root, job_id)
        if planned is not None:
            return planned
        if k == 0:
            result: InputSpec = spec.input
            return result
        previous = self.paths(job_id, stages[k - 1])
        return InputSpec(
            paths=[str(previous.stream("output"))], format=InputFormat.jsonl, text_field="text"
        )

    def input_access(self, spec: Any, k: int, stage: Stage | None = None) -> InputAccess:
        """What stage k may read: the job's own inputs (inside the data roots, or uploaded)
        for stage 0; files under the artifacts root where the worker chose them (a later
        stage's input, files a stage wrote when it was planned, a training job's
        ``data.job``)."""
        if stage is None:
            stage = build_stage(spec, job_stages(spec)[k])
        if k > 0 or stage.input_under_artifacts:
            return InputAccess.under(self.root)
        return InputAccess.of_jobs(self.rt.settings)

    async def snapshot(self, job_id: str) -> None:
        """The job's hash on disk once it is terminal, so a Redis restart loses nothing."""
        raw = await self.store.raw(job_id)
        if raw and JobState(raw.get("state", "queued")).terminal:
            folder = job_dir(self.root, job_id)
            if folder.is_dir():
                await asyncio.to_thread(write_json, folder / "state.json", raw)

    async def fail(self, job_id: str, reason: str, *, stage: int | None = None) -> None:
        await self.store.fail(job_id, reason, stage=stage)
        await self.snapshot(job_id)

    async def stopped(self, job_id: str) -> None:
        """A step found the job no longer active: record the terminal state on disk."""
        await self.snapshot(job_id)

    # -- plan ----------------------------------------------------------------------------

    async def plan_stage(self, job_id: str, k: int) -> str:
        spec = await self.store.spec(job_id)  # validated first
        stages = job_stages(spec)
        if not await self.active(job_id):
            await self.stopped(job_id)
            return "job not active"
        kind = stages[k].kind
        paths = self.paths(job_id, stages[k])
        folder = job_dir(self.root, job_id)
        if k == 0 and not (folder / "job.json").exists():
            raw = await self.store.raw(job_id)
            keep = ("id", "kind", "name", "spec", "created_at", "n_stages")
            await asyncio.to_thread(
                write_json, folder / "job.json", {key: raw.get(key, "") for key in keep}
            )
        if paths.done.exists():
            await self.after_stage(job_id, k, stages)
            return "stage already done"
        await self.store.stage_started(job_id, k, kind)
        if paths.plan.exists():
            plan = self.load_plan(paths)
        else:
            stage = build_stage(spec, stages[k], job_id)
            input_spec = await asyncio.to_thread(self.stage_input, job_id, spec, k, stages, stage)
            if stage.single_shard:
                shard_size = SINGLE_SHARD
            else:
                shard_size = (
                    getattr(stage.options, "shard_size", None)
                    or getattr(spec, "shard_size", None)
                    or self.rt.settings.shard_size
                )
            limit = getattr(spec, "limit", None) if k == 0 else None
            access = self.input_access(spec, k, stage)
            p = await asyncio.to_thread(plan_inputs, input_spec, shard_size, access, limit=limit)
            if stage.single_shard and not p.records_total:
                raise InputError(f"no {kind.value} rows in {input_spec.describe()}")
            extras = await stage.prepare(self.rt) if p.records_total else {}
            plan = {
                "job_id": job_id,
                "stage": stages[k].folder,
                "input": input_spec.model_dump(mode="json"),
                **plan_to_json(p, shard_size),
                "extras": extras,
                "planned_at": time.time(),
            }
            await asyncio.to_thread(write_json, paths.plan, plan)
            self._plans[paths.plan] = plan
            logger.info(
                "job %s stage %s planned: %d records in %d shards",
                job_id,
                stages[k].folder,
                p.records_total,
                len(p.shards),
            )
        n = len(plan["shards"])
        await self.store.stage_planned(
            job_id, k, shards_total=n, records_total=int(plan["records_total"])
        )
        if n == 0:
            await self.store.enqueue_finish(job_id, k)
            return "no records"
        for i in range(n):
            if paths.shard_done(i).exists():
                await self.count_shard(job_id, k, i, read_json(paths.shard_done(i)), n)
            else:
                await self.store.enqueue_shard(job_id, k, i, kind=kind)
        return f"{n} shards"

    # -- shard ---------------------------------------------------------------------------

    async def count_shard(
        self, job_id: str, k: int, shard: int, stats: dict[str, Any], n_shards: int
    ) -> None:
        counts = {key: stats["counts"].get(key, 0) for key in COUNT_KEYS}
        done = await self.store.shard_done(
            job_id, k, shard, {**counts, "busy_s": stats.get("busy_s", 0.0)}
        )
        if done >= n_shards:
            await self.store.enqueue_finish(job_id, k)

    async def run_shard(self, job_id: str, k: int, shard: int, attempt: int) -> str:
        spec = await self.store.spec(job_id)  # validated first
        stages = job_stages(spec)
        if not await self.active(job_id):
            await self.stopped(job_id)
            return "job not active"
        paths = self.paths(job_id, stages[k])
        plan = self.load_plan(paths)
        n = len(plan["shards"])
        if not 0 <= shard < n:
            raise ValueError(f"shard {shard} out of range (the stage has {n})")
        if paths.shard_done(shard).exists():
            await self.count_shard(job_id, k, shard, read_json(paths.shard_done(shard)), n)
            return "already done"
        if attempt > self.rt.settings.max_shard_attempts:
            await self.give_up(job_id, k, f"shard {shard}", attempt)
            return "failed"
        stage = build_stage(spec, stages[k], job_id)
        input_spec = InputSpec.model_validate(plan["input"])
        segments = shards_from_json({"shards": [plan["shards"][shard]]})[0]
        ctx = StageContext(
            job_id=job_id,
            stage_index=k,
            shard=shard,
            runtime=self.rt,
            input=input_spec,
            extras=plan.get("extras", {}),
            check_active=lambda: self.check_active(job_id),
            folder=paths.root,
        )
        await self.store.mark_running(job_id, k, shard, self.rt.name)
        try:
            start = time.perf_counter()
            records = await asyncio.to_thread(
                read_shard,
                segments,
                input_spec,
                shard * int(plan["shard_size"]),
                self.input_access(spec, k, stage),
            )
            result = await stage.process(records, ctx)
            await self.check_active(job_id)
            busy = time.perf_counter() - start
            stats = {
                "shard": shard,
                "worker": self.rt.name,
                "attempt": attempt,
                "busy_s": busy,
                "finished_at": time.time(),
                **result.to_json(),
            }
            await asyncio.to_thread(self._write_shard, paths, shard, stage.streams, result, stats)
        finally:
            await self.store.clear_running(job_id, k, shard)
        await self.store.add_errors(job_id, result.errors, result.errors_total)
        await self.count_shard(job_id, k, shard, stats, n)
        logger.info(
            "job %s %s shard %d/%d done in %.2fs: %s",
            job_id,
            stages[k].folder,
            shard + 1,
            n,
            busy,
            dict(result.counts),
        )
        return "done"

    @staticmethod
    def _write_shard(
        paths: StagePaths,
        shard: int,
        streams: tuple[str, ...],
        result: Any,
        stats: dict[str, Any],
    ) -> None:
        for stream in streams:
            with atomic_open(paths.shard_stream(shard, stream)) as f:
                for row in result.streams.get(stream, []):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        write_json(paths.shard_done(shard), stats)  # last: its presence means "done"

    @staticmethod
    def error_field(k: int, what: str) -> str:
        return f"s{k}:{what.replace(' ', '')}:error"

    async def attempt_failed(
        self, job_id: str, k: int, what: str, attempt: int, exc: BaseException
    ) -> bool:
        """Record a failed attempt of a step (``what``: "shard 3", "planning", "merging");
        True when it may be tried again, False when the job was failed with the reason."""
        reason = f"{type(exc).__name__}: {exc}"
        await self.store.update(job_id, {self.error_field(k, what): reason})
        stage = await self.stage_name(job_id, k)
        shard = int(what.split()[1]) if what.startswith("shard ") else None
        error = RecordError(
            stage=stage,
            shard=shard,
            type="attempt_failed",
            message=f"{what}, attempt {attempt}: {reason}"[:500],
            at=time.time(),
        )
        await self.store.add_errors(job_id, [error], 0)
        if attempt >= self.rt.settings.max_shard_attempts:
            await self.fail(
                job_id, f"{stage} {what} failed after {attempt} attempts: {reason}", stage=k
            )
            return False
        return True

    async def give_up(self, job_id: str, k: int, what: str, attempt: int) -> None:
        """Fail the job: a step was attempted too often (its worker died on the last try)."""
        last = await self.store.redis.hget(self.store.job_key(job_id), self.error_field(k, what))
        why = last.decode() if last else "its worker stopped while running it (killed or lost)"
        stage = await self.stage_name(job_id, k)
        await self.fail(
            job_id, f"{stage} {what} failed after {attempt - 1} attempts: {why}", stage=k
        )

    async def stage_name(self, job_id: str, k: int) -> str:
        """Stage k's folder, for messages (its number when the job's spec is unreadable)."""
        raw = await self.store.raw(job_id)
        stages = stages_of(raw.get("kind", "prefilter"), parse_spec(raw.get("spec")))
        return stages[k].folder if k < len(stages) else str(k)

    # -- finish --------------------------------------------------------------------------

    async def finish_stage(self, job_id: str, k: int) -> str:
        spec = await self.store.spec(job_id)  # validated first
        stages = job_stages(spec)
        kind = stages[k].kind
        if not await self.active(job_id):
            await self.stopped(job_id)
            return "job not active"
        paths = self.paths(job_id, stages[k])
        if paths.done.exists():
            await self.after_stage(job_id, k, stages)
            return "stage already done"
        plan = self.load_plan(paths)
        n = len(plan["shards"])
        missing = [i for i in range(n) if not paths.shard_done(i).exists()]
        if missing:  # Redis said done but the disk disagrees: the disk wins
            for i in missing:
                await self.store.enqueue_shard(job_id, k, i, kind=kind)
            return f"{len(missing)} shards not on disk; queued again"
        stats = [read_json(paths.shard_done(i)) for i in range(n)]
        stage = build_stage(spec, stages[k], job_id)
        extra = await asyncio.to_thread(stage.finish, paths, n, stats)
        results: dict[str, Any] = {
            key: extra.pop(key) for key in ("result", "job_result") if key in extra
        }
        counts = {key: sum(int(s["counts"].get(key, 0)) for s in stats) for key in COUNT_KEYS}
        reasons: dict[str, int] = {}
        for s in stats:
            for reason, c in s.get("drop_reasons", {}).items():
                reasons[reason] = reasons.get(reason, 0) + int(c)
        extras = {key: v for key, v in plan.get("extras", {}).items() if key != "centroid"}
        summary = {
            "job_id": job_id,
            "stage": stages[k].folder,
            "records_total": plan["records_total"],
            "shards": n,
            "counts": counts,
            "drop_reasons": reasons,
            "errors_total": sum(int(s.get("errors_total", 0)) for s in stats),
            "busy_s": sum(float(s.get("busy_s", 0.0)) for s in stats),
            "workers": sorted({str(s.get("worker")) for s in stats}),
            "outputs": [paths.stream(s).name for s in stage.streams]
            + [name for name in ("train.jsonl", "dev.jsonl") if (paths.root / name).exists()],
            **extras,
            **extra,
        }
        await asyncio.to_thread(write_json, paths.summary, {**summary, **results})
        done: dict[str, Any] = {
            "finished_at": time.time(),
            "counts": counts,
            "shards": n,
            "report": stage.report(summary),
            **results,
        }
        await asyncio.to_thread(write_json, paths.done, done)
        await asyncio.to_thread(remove_temporaries, paths.root)
        await asyncio.to_thread(remove_temporaries, paths.shards)
        logger.info("job %s stage %s finished: %s", job_id, stages[k].folder, counts)
        await self.after_stage(job_id, k, stages)
        return "finished"

    async def after_stage(self, job_id: str, k: int, stages: list[JobStage]) -> None:
        """Publish the stage's final counts and results (from disk) and move on."""
        paths = self.paths(job_id, stages[k])
        done = read_json(paths.done)
        counts = done.get("counts", {})
        plan = self.load_plan(paths)
        p = f"s{k}:"
        results: dict[str, str] = {}
        if "result" in done:
            results[p + "result"] = json.dumps(done["result"])
        if "job_result" in done:
            results["result"] = json.dumps(done["job_result"])
        await self.store.update(
            job_id,
            {
                **results,
                p + "state": StageState.succeeded.value,
                p + "finished_at": repr(done.get("finished_at", time.time())),
                p + "shards_total": done.get("shards", 0),
                p + "shards_done": done.get("shards", 0),
                p + "records_total": plan["records_total"],
                p + "records_done": counts.get("records", 0),
                **{p + key: counts.get(key, 0) for key in ("in", "kept", "dropped", "failed")},
                p + "out": counts.get("out", 0),
                p + "report": json.dumps(done.get("report", {}), separators=(",", ":")),
            },
        )
        if k + 1 < len(stages):
            await self.store.set_if_active(job_id, {"stage_index": k + 1})
            await self.store.enqueue_plan(job_id, k + 1)
            return
        now = repr(time.time())
        if await self.store.set_if_active(
            job_id, {"state": JobState.succeeded.value, "finished_at": now}
        ):
            logger.info("job %s succeeded", job_id)
        await self.snapshot(job_id)

    # -- recovery ------------------------------------------------------------------------

    async def recover(self) -> int:
        """Re-register jobs on disk that Redis does not know (it keeps nothing on disk) and
        resume the unfinished ones at their first unfinished stage. One worker at a time."""
        redis = self.store.redis
        if not await redis.set(KEY_PREFIX + "recover-lock", self.rt.name, nx=True, ex=60):
            return 0
        if not self.root.is_dir():
            return 0
        restored = 0
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            job_file = folder / "job.json"
            if not job_file.is_file():
                continue
            with contextlib.suppress(Exception):
                fields = read_json(job_file)
                job_id = fields["id"]
                if await redis.exists(self.store.job_key(job_id)):
                    continue
                created = float(fields.get("created_at") or time.time())
                state_file = folder / "state.json"
                if state_file.is_file():
                    restored += await self.store.restore(read_json(state_file), created)
                    continue
                stages = stages_of(fields["kind"], parse_spec(fields.get("spec")))
                first = next(
                    (
                        i
                        for i, stage in enumerate(stages)
                        if not self.paths(job_id, stage).done.exists()
                    ),
                    len(stages) - 1,
                )
                raw = {
                    **{key: str(v) for key, v in fields.items()},
                    "state": JobState.running.value,
                    "stage_index": str(first),
                    "started_at": repr(time.time()),
                    "errors_total": "0",
                }
                if await self.store.restore(raw, created):
                    restored += 1
                    await self.store.enqueue_plan(job_id, first)
                    logger.info("job %s recovered from disk at stage %d", job_id, first)
        return restored
