"""The ``prm_labels`` stage: process labels from Monte-Carlo rollouts (Math-Shepherd).

Input: a task's first ``items`` problems (seeded, written to ``questions.jsonl`` in the stage's
folder when planned, like TriPosT's questions) or a JSONL of ``{question, answer}`` rows. Per
problem (one record):

1. ``n_solutions`` solutions from the agent: one ``/v1/rollout`` from the question (empty
   prefix), each completion a solution cut into steps by the shared step rule;
2. each solution's steps labelled by :mod:`services.worker.prm_labels` (``shepherd`` or
   ``binary_search``), every probed prefix (step i included) estimated from ``n_rollouts``
   completions of one ``/v1/rollout``, each completion's answer (prefix + completion, read by
   the shared extraction) checked against the gold answer by the task's own checker
   (:func:`shared.tasks.check_answer`).

Every rollout answer is kept in the rollout cache (:mod:`services.worker.rollout_cache`) as
it arrives: a shard run again after ``kill -9`` asks the agent only for what it had not got.
Rows are written per shard, atomically, when the shard is done; a re-run rewrites the same
file, so every (problem, solution) row exists once. A problem whose gold answer is missing or
cannot be read by its answer kind is dropped with that reason, never labelled.

Streams: ``stepwise`` (one row per solution: ``{id: "<problem>:<solution>", prompt,
completions, labels, soft_labels, solution_correct, rollouts_used}``, the stepwise-supervision
layout), ``outcome`` (``{id, prompt, completion, label}``), ``problems`` (per problem: counts
for the report). ``finish`` merges them and writes ``report.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.worker.artifacts import StagePaths, iter_jsonl, read_json, write_json
from services.worker.inputs import InputError, RawRecord
from services.worker.prm_labels import Estimate, end_estimate, label_steps
from services.worker.rollout_cache import RolloutCache, rollout_key
from services.worker.stages.base import (
    Outcome,
    RecordFailure,
    ShardResult,
    Stage,
    StageContext,
    collect,
    concat_streams,
    map_records,
    record_id,
)
from services.worker.stages.tripost import write_items
from shared.answer_kinds import AnswerKind, detect_answer_kind
from shared.job_schemas import InputSpec, JobKind, PrmLabelsSpec
from shared.jobs_store import stage_dir
from shared.schemas import Demo, RolloutCompletion, RolloutRequest
from shared.steps import is_finished, solution_text
from shared.tasks import check_answer, get_task
from shared.tasks.answers import gold_forms
from shared.tasks.base import DataMissingError, TaskItem, UnknownTaskError

QUESTIONS = "questions.jsonl"
REPORT = "report.json"
SKIP_REASONS = ("no_gold_answer", "gold_unparseable", "no_question")
"""Why a problem is skipped (dropped, never labelled)."""


def _seed(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def problem_of(data: dict[str, Any], index: int, id_field: str | None) -> TaskItem:
    """A record as a task item: a task's item as written when planned, or a ``{question,
    answer}`` row (kind: the row's ``kind``, else detected from the question; a GSM8K-style
    answer ``"... #### 72"`` counts as ``72``). Raises _Skip when it cannot be labelled."""
    fields = {k: v for k, v in data.items() if k in TaskItem.model_fields}
    if {"task", "id", "kind"} <= set(fields):
        try:
            item = TaskItem.model_validate(fields)
        except ValidationError as exc:
            raise RecordFailure(f"not a task item: {exc.errors()[0]['msg']}") from exc
    else:
        question, answer = data.get("question"), data.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise _Skip("no_question")
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise _Skip("no_gold_answer")
        gold = str(answer)
        if "####" in gold:
            gold = gold.rsplit("####", 1)[1].strip()
        try:
            kind = AnswerKind(data["kind"]) if data.get("kind") else detect_answer_kind(question)
        except ValueError as exc:
            raise RecordFailure(f"kind: {exc}") from exc
        item = TaskItem(
            task="input",
            id=record_id(data, index, id_field),
            question=question,
            answer=gold,
            kind=kind,
            choices=data.get("choices") if isinstance(data.get("choices"), list) else None,
        )
    if not item.answer.strip():
        raise _Skip("no_gold_answer")
    if not gold_forms(item):
        raise _Skip("gold_unparseable")
    return item


class PrmLabelsStage(Stage):
    kind = JobKind.prm_labels
    streams = ("stepwise", "outcome", "problems")
    options: PrmLabelsSpec

    @property
    def input_under_artifacts(self) -> bool:
        return self.options.task is not None

    def planned_input(self, artifacts_dir: Path, job_id: str) -> InputSpec | None:
        opts = self.options
        if opts.task is None:
            return None  # the job's own input
        try:
            items = get_task(opts.task).items(opts.items, seed=opts.seed)
        except (UnknownTaskError, DataMissingError) as exc:
            raise InputError(f"task: {exc}") from exc
        return write_items(stage_dir(artifacts_dir, job_id, self.stage.folder) / QUESTIONS, items)

    async def prepare(self, runtime: Any) -> dict[str, Any]:
        """The worked examples (the task's, fixed once) and the agent's model, which keys the
        rollout cache."""
        opts = self.options
        for field in ("n_solutions", "n_rollouts"):
            limit = getattr(runtime.settings, f"prm_max_{field.removeprefix('n_')}", None)
            if limit is not None and getattr(opts, field) > limit:
                raise InputError(f"{field} must be <= {limit} (this worker's setting)")
        demos: list[dict[str, Any]] | None = None
        if opts.task is not None:
            try:
                task = get_task(opts.task)
                demos = [d.model_dump() for d in task.demos(opts.few_shot)] if opts.few_shot else []
            except (UnknownTaskError, DataMissingError) as exc:
                raise InputError(f"task: {exc}") from exc
        elif opts.few_shot == 0:
            demos = []
        model = "unknown"
        try:
            ready = (await runtime.agent.request("GET", "/ready")).json()
            model = f"{ready.get('model_path') or ready.get('model')}"
        except Exception:  # the agent is down at planning: shards retry against it anyway
            pass
        return {"demos": demos, "agent_model": model}

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        opts = self.options
        demos_raw = ctx.extras.get("demos")
        demos = None if demos_raw is None else [Demo.model_validate(d) for d in demos_raw]
        cache = RolloutCache(ctx.runtime.settings.artifacts_dir)
        requests = asyncio.Semaphore(ctx.runtime.settings.request_concurrency)
        agent_model = str(ctx.extras.get("agent_model", "unknown"))

        async def rollouts(
            item: TaskItem, prefix: list[str], n: int, seed: int, tally: Counter[str]
        ) -> list[RolloutCompletion]:
            max_steps = max(opts.max_steps - len(prefix), 1)
            key = rollout_key(
                model=agent_model, question=item.question, kind=item.kind.value,
                demos=demos_raw, steps=prefix, n=n, seed=seed, temperature=opts.temperature,
                max_steps=max_steps, max_step_tokens=opts.max_step_tokens,
            )  # fmt: skip
            hit = cache.get(key)
            if hit is not None:
                tally["rollouts_cached"] += n
                return [RolloutCompletion.model_validate(c) for c in hit]
            req = RolloutRequest(
                question=item.question, steps=prefix, n=n, seed=seed,
                temperature=opts.temperature, max_steps=max_steps,
                max_step_tokens=opts.max_step_tokens, few_shot=demos, answer_kind=item.kind,
            )  # fmt: skip
            async with requests:
                await ctx.check_active()
                response = await ctx.runtime.agent.rollout(req)
            cache.put(key, [c.model_dump(mode="json") for c in response.completions])
            tally["rollouts_computed"] += n
            await report_rollouts(n)
            return response.completions

        async def report_rollouts(n: int) -> None:
            """Progress in rollouts, in the job's status as they arrive (best effort)."""
            store = getattr(ctx.runtime, "store", None)
            if store is None:
                return
            with contextlib.suppress(Exception):
                key = store.job_key(ctx.job_id)
                await store.redis.hincrby(key, f"s{ctx.stage_index}:rollouts", n)

        def correct(item: TaskItem, steps: list[str]) -> bool:
            return check_answer(item, solution_text(steps)).correct

        async def one(rec: RawRecord) -> Outcome:
            assert rec.data is not None
            try:
                item = problem_of(rec.data, rec.index, ctx.input.id_field)
            except _Skip as skip:
                rid = record_id(rec.data, rec.index, ctx.input.id_field)
                return Outcome(
                    "dropped",
                    rows={"problems": [{"id": rid, "skipped": skip.reason}]},
                    reason=skip.reason,
                    record_id=rid,
                )
            tally: Counter[str] = Counter()
            sol_seed = _seed(opts.seed, item.id, "solutions")
            solutions = await rollouts(item, [], opts.n_solutions, sol_seed, tally)
            verdicts = [correct(item, s.steps) for s in solutions]
            start = sum(verdicts) / len(verdicts) if verdicts else 0.0

            async def label(j: int, steps: list[str], good: bool) -> dict[str, Any]:
                end = end_estimate(is_finished(steps), good)

                async def mc(i: int) -> Estimate:
                    if i == len(steps) and end is not None:
                        return end
                    prefix = steps[:i]
                    seed = _seed(opts.seed, item.id, "prefix", solution_text(prefix))
                    outs = await rollouts(item, prefix, opts.n_rollouts, seed, tally)
                    hits = sum(correct(item, [*prefix, *c.steps]) for c in outs)
                    return Estimate(hits / len(outs), len(outs))

                labels = await label_steps(opts.method, len(steps), mc, start=start)
                return {
                    "id": f"{item.id}:{j}",
                    "prompt": item.question,
                    "completions": steps,
                    "labels": labels.labels,
                    "soft_labels": [round(v, 6) for v in labels.soft_labels],
                    "solution_correct": good,
                    "rollouts_used": labels.rollouts_used,
                }

            labelled = [
                (j, s.steps, good)
                for j, (s, good) in enumerate(zip(solutions, verdicts, strict=True))
                if s.steps
            ]
            rows = list(await asyncio.gather(*(label(j, st, g) for j, st, g in labelled)))
            outcome = [
                {
                    "id": r["id"],
                    "prompt": r["prompt"],
                    "completion": solution_text(r["completions"]),
                    "label": r["solution_correct"],
                }
                for r in rows
            ]
            problem = {
                "id": item.id,
                "skipped": None,
                "solutions": len(solutions),
                "empty_solutions": len(solutions) - len(labelled),
                "correct": sum(verdicts),
                "rollouts_used": sum(r["rollouts_used"] for r in rows),
                "rollouts_computed": tally["rollouts_computed"],
                "rollouts_cached": tally["rollouts_cached"],
            }
            return Outcome(
                "kept" if rows else "dropped",
                rows={"stepwise": rows, "outcome": outcome, "problems": [problem]},
                reason=None if rows else "no_solution_steps",
                record_id=item.id,
            )

        outcomes = await map_records(
            records, ctx, one, concurrency=ctx.runtime.settings.request_concurrency
        )
        result = collect(self.kind, ctx.shard, records, outcomes)
        result.counts["out"] = len(result.streams.get("stepwise", []))
        return result

    def finish(
        self, paths: StagePaths, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Merge the streams and write ``report.json``."""
        for stream in self.streams:
            concat_streams(paths, n_shards, stream)
        report = build_report(
            self.options,
            list(iter_jsonl(paths.stream("problems"))),
            list(iter_jsonl(paths.stream("stepwise"))),
            busy_s=sum(float(s.get("busy_s", 0.0)) for s in shard_stats),
            planned_at=float(read_json(paths.plan).get("planned_at", time.time())),
        )
        write_json(paths.root / REPORT, report)
        return {
            "report": REPORT,
            "solutions": report["solutions"],
            "steps_labelled": report["steps_labelled"],
        }

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {
            "drop_reasons": summary.get("drop_reasons", {}),
            "solutions": summary.get("solutions"),
            "steps_labelled": summary.get("steps_labelled"),
        }


def build_report(
    opts: PrmLabelsSpec,
    problems: list[dict[str, Any]],
    stepwise: list[dict[str, Any]],
    *,
    busy_s: float,
    planned_at: float,
) -> dict[str, Any]:
    """What ``report.json`` says: problems, solutions, share correct, positive rate by step
    index, rollouts per label, time."""
    done = [p for p in problems if not p.get("skipped")]

    def labelled(p: dict[str, Any]) -> bool:
        return int(p.get("solutions", 0)) > int(p.get("empty_solutions", 0))

    skipped = Counter(str(p["skipped"]) for p in problems if p.get("skipped"))
    by_step: dict[int, list[bool]] = {}
    for row in stepwise:
        for i, label in enumerate(row["labels"]):
            by_step.setdefault(i, []).append(bool(label))
    steps = sum(len(r["labels"]) for r in stepwise)
    used = sum(int(r["rollouts_used"]) for r in stepwise)
    solutions = len(stepwise)
    return {
        "method": opts.method.value,
        "task": opts.task,
        "n_solutions": opts.n_solutions,
        "n_rollouts": opts.n_rollouts,
        "problems": len(problems),
        "problems_labelled": sum(1 for p in done if labelled(p)),
        "problems_skipped": sum(skipped.values()),
        "skipped_by_reason": {r: skipped.get(r, 0) for r in SKIP_REASONS},
        "solutions": solutions,
        "empty_solutions": sum(int(p.get("empty_solutions", 0)) for p in done),
        "share_correct": (
            sum(1 for r in stepwise if r["solution_correct"]) / solutions if solutions else None
        ),
        "problems_with_a_correct_solution": sum(1 for p in done if int(p.get("correct", 0))),
        "steps_labelled": steps,
        "positive_rate": sum(sum(r["labels"]) for r in stepwise) / steps if steps else None,
        "positive_rate_by_step": {
            str(i + 1): round(sum(v) / len(v), 4) for i, v in sorted(by_step.items())
        },
        "rollouts_used": used,
        "rollouts_per_label": round(used / steps, 4) if steps else None,
        "rollouts_computed": sum(int(p.get("rollouts_computed", 0)) for p in done),
        "rollouts_cached": sum(int(p.get("rollouts_cached", 0)) for p in done),
        "busy_s": round(busy_s, 3),
        "wall_s": round(time.time() - planned_at, 3),
    }
