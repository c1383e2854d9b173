"""The ``tripost_collect`` stage: TriPosT trajectories for a task's training questions.

Planning writes the task's first ``items`` items (seeded) to ``questions.jsonl`` in the
stage's folder (the same file every time, so planning twice changes nothing) and cuts it into
shards; ``prepare`` fixes the worked examples of the agent's prompt. Each shard runs
:mod:`services.worker.tripost` on its questions: ``attempts`` passes of the agent per
question, each a trajectory, verified and improved. Its streams: ``output`` (the candidate
samples, gold rationales included) and ``trajectories`` (every trajectory, kept or dropped
with its reason). ``finish`` merges them, rebalances the samples into ``output.jsonl`` and
writes ``report.json`` with the counts; when every trajectory was dropped it writes the report
and fails the job with the counts by reason.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.worker.artifacts import StagePaths, atomic_open, iter_jsonl, write_json
from services.worker.inputs import InputError, RawRecord
from services.worker.local_models import is_tripost_model, resolve_local_model
from services.worker.stages.base import (
    Outcome,
    RecordFailure,
    ShardResult,
    Stage,
    StageContext,
    collect,
    concat_streams,
    map_records,
)
from services.worker.tripost import (
    DROP_REASONS,
    SAMPLE_KINDS,
    Check,
    Trajectory,
    attempt_messages,
    collect_trajectory,
    gold_row,
    improver_messages,
    rebalance,
    sample_rows,
    splice_gold,
    splice_llm,
)
from shared.job_schemas import (
    InputFormat,
    InputSpec,
    JobKind,
    TripostCollectSpec,
    TripostImprover,
    TripostQuestions,
)
from shared.jobs_store import stage_dir
from shared.openai_schemas import ChatCompletionRequest, CompletionRequest, OAChatMessage
from shared.tasks import check_answer, get_task
from shared.tasks.base import DataMissingError, TaskItem, UnknownTaskError
from shared.tripost import STOP as TEXT_STOP
from shared.tripost import prompt as tripost_prompt
from shared.tripost import read_continuation, tripost_demo
from shared.verify import (
    QuestionError,
    Verdict,
    VerifierKind,
    llm_verify,
    scripted_verifier,
    split_steps,
)

QUESTIONS = "questions.jsonl"
UNTRAINED_SHOTS = 3
"""Worked examples for a model not trained on TriPosT's format, unless ``few_shot`` says."""
REPORT = "report.json"
STOP = ["\nQ:"]


def task_items(spec: TripostQuestions) -> list[TaskItem]:
    """The training questions of a TriPosT spec."""
    try:
        return get_task(spec.task).items(spec.items, seed=spec.seed)
    except (UnknownTaskError, DataMissingError) as exc:
        raise InputError(f"task: {exc}") from exc


def write_items(path: Path, items: list[TaskItem]) -> InputSpec:
    """Items as a stage's input file (the same content every time it is planned)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        for item in items:
            f.write(item.model_dump_json() + "\n")
    return InputSpec(paths=[str(path)], format=InputFormat.jsonl, id_field="id")


def tripost_input(
    spec: TripostQuestions,
    artifacts_dir: Path,
    job_id: str,
    folder: str = JobKind.tripost_collect.value,
) -> InputSpec:
    """Write the task's training questions into the stage's folder; they are its input."""
    return write_items(stage_dir(artifacts_dir, job_id, folder) / QUESTIONS, task_items(spec))


def _seed(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


def _chat(
    messages: list[dict[str, str]], max_tokens: int, **sampling: Any
) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        messages=[OAChatMessage.model_validate(m) for m in messages],
        max_tokens=max_tokens,
        **sampling,
    )


class TripostCollectStage(Stage):
    kind = JobKind.tripost_collect
    streams = ("output", "trajectories")
    options: TripostCollectSpec

    @property
    def input_under_artifacts(self) -> bool:
        return True

    def planned_input(self, artifacts_dir: Path, job_id: str) -> InputSpec:
        return tripost_input(self.options, artifacts_dir, job_id, self.stage.folder)

    @property
    def verifier_kind(self) -> VerifierKind:
        opts = self.options
        if opts.verifier is not None:
            return VerifierKind(opts.verifier)
        return VerifierKind.scripted if scripted_verifier(opts.task) else VerifierKind.llm

    @property
    def improver_kind(self) -> TripostImprover:
        opts = self.options
        if opts.improver is not None:
            return opts.improver
        return TripostImprover.scripted if scripted_verifier(opts.task) else TripostImprover.llm

    async def prepare(self, runtime: Any) -> dict[str, Any]:
        """The agent's worked examples (the task's demos in TriPosT's format), fixed once; with
        ``model``, that model's folder, and none when it was trained on TriPosT's format."""
        opts = self.options
        extras: dict[str, Any] = {
            "verifier": self.verifier_kind.value,
            "improver": self.improver_kind.value,
        }
        trained = False
        if opts.model is not None:
            root = runtime.settings.artifacts_dir.expanduser()
            extras["model"] = opts.model
            extras["model_path"] = resolve_local_model(opts.model, runtime.settings)
            trained = is_tripost_model(opts.model, root)
        shots = opts.few_shot
        if shots is None:
            shots = 0 if trained else UNTRAINED_SHOTS
        try:
            task = get_task(opts.task)
            demos = [tripost_demo(d, task.kind) for d in task.demos(shots)] if shots else []
        except (UnknownTaskError, DataMissingError) as exc:
            raise InputError(f"task: {exc}") from exc
        extras["description"] = task.description
        extras["demos"] = [list(d) for d in demos]
        return extras

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        opts = self.options
        demos = [(q, a) for q, a in ctx.extras.get("demos", [])]
        scripted = (
            scripted_verifier(opts.task) if self.verifier_kind is VerifierKind.scripted else None
        )
        description = ctx.extras.get("description")

        async def chat(messages: list[dict[str, str]], max_tokens: int) -> str:
            request = _chat(messages, max_tokens, temperature=0.0)
            return await self._llm(ctx, request)

        async def one(rec: RawRecord) -> Outcome:
            assert rec.data is not None
            try:
                # the reader adds the file's name as "source"
                fields = {k: v for k, v in rec.data.items() if k in TaskItem.model_fields}
                item = TaskItem.model_validate(fields)
            except ValidationError as exc:
                raise RecordFailure(f"not a task item: {exc.errors()[0]['msg']}") from exc

            async def verify(answer: str) -> Check:
                if scripted is not None:
                    try:
                        return Check(scripted.verify(item.question, answer))
                    except QuestionError as exc:
                        raise RecordFailure(f"question: {exc}") from exc
                if check_answer(item, answer).correct:
                    numbered = [s for s in split_steps(answer, strict=False) if not s.final]
                    return Check(Verdict.all_correct(numbered[-1].label))
                verdict, _ = await llm_verify(
                    chat, item.question, answer, task_description=description,
                    max_tokens=min(opts.max_tokens, 512),
                )  # fmt: skip
                return Check(verdict, drop="verifier_missed_error" if verdict.correct else None)

            async def improve(answer: str, verdict: Verdict) -> str | None:
                if self.improver_kind is TripostImprover.scripted:
                    return splice_gold(answer, verdict, item.rationale or [])
                request = _chat(
                    improver_messages(item.question, answer, verdict), opts.max_tokens,
                    temperature=0.0,
                )  # fmt: skip
                output = await self._llm(ctx, request)
                return splice_llm(answer, verdict, output)

            trajectories: list[Trajectory] = []
            for attempt in range(opts.attempts):
                text = await attempt_text(item, attempt)
                trajectories.append(
                    await collect_trajectory(
                        item.id, attempt, text, verify, improve, max_rounds=opts.max_rounds
                    )
                )
            rows = [row for t in trajectories for row in sample_rows(item, t)]
            if (gold := gold_row(item)) is not None:
                rows.append(gold)
            kept = any(t.kept for t in trajectories)
            reasons = Counter(t.reason for t in trajectories if t.reason)
            return Outcome(
                "kept" if kept else "dropped",
                rows={"output": rows, "trajectories": [t.to_json() for t in trajectories]},
                reason=None if kept else reasons.most_common(1)[0][0],
                record_id=item.id,
            )

        async def attempt_text(item: TaskItem, attempt: int) -> str:
            """The agent's attempt (a chat with worked examples), or the job's model's (its
            answer in TriPosT's text format)."""
            seed, question = _seed(opts.attempt_seed(), item.id, attempt), item.question
            if local is None:
                request = _chat(
                    attempt_messages(question, demos), opts.max_tokens,
                    temperature=opts.temperature, seed=seed, stop=STOP,
                )  # fmt: skip
                return str((await ctx.runtime.agent.chat(request)).text())
            completion = CompletionRequest(
                prompt=tripost_prompt(question, demos), max_tokens=opts.max_tokens,
                temperature=opts.temperature, seed=seed, stop=list(TEXT_STOP),
            )  # fmt: skip
            text = (await local.complete(completion)).text()
            return read_continuation(text, "answer").answer or ""

        async with contextlib.AsyncExitStack() as stack:
            local = None
            if opts.model is not None:  # attempts by the job's own model, in TriPosT's format
                model = ctx.extras.get("model_path") or opts.model
                local = await stack.enter_async_context(ctx.runtime.local_models.serve(model))
            outcomes = await map_records(
                records, ctx, one, concurrency=ctx.runtime.settings.request_concurrency
            )
        return collect(self.kind, ctx.shard, records, outcomes)

    async def _llm(self, ctx: StageContext, request: ChatCompletionRequest) -> str:
        """A chat completion of the LLM verifier's and improver's service."""
        client = getattr(ctx.runtime, self.options.llm_service)
        return str((await client.chat(request)).text())

    def finish(
        self, paths: StagePaths, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Merge, rebalance, report; fail the job when no trajectory survived."""
        opts = self.options
        concat_streams(paths, n_shards, "trajectories")
        concat_streams(paths, n_shards, "output")
        candidates = paths.stream("output")
        rows = list(iter_jsonl(candidates))
        candidates.replace(paths.root / "candidates.jsonl")
        trajectories = list(iter_jsonl(paths.stream("trajectories")))
        kept = [t for t in trajectories if t["kept"]]
        dropped = Counter(str(t["reason"]) for t in trajectories if not t["kept"])
        ratios = {
            "improvement": opts.improvement_ratio,
            "non_improvement": opts.non_improvement_ratio,
            "gold": opts.gold_ratio,
        }
        before = Counter(str(r["kind"]) for r in rows)
        report: dict[str, Any] = {
            "task": opts.task,
            "verifier": self.verifier_kind.value,
            "improver": self.improver_kind.value,
            "questions": sum(int(s["counts"].get("records", 0)) for s in shard_stats),
            "trajectories": len(trajectories),
            "kept": len(kept),
            "right_at_once": sum(1 for t in kept if t["improvements"] == 0),
            "improved": sum(1 for t in kept if t["improvements"]),
            "improvements_per_kept": dict(
                sorted(Counter(str(t["improvements"]) for t in kept).items())
            ),
            "dropped": sum(dropped.values()),
            "dropped_by_reason": {r: dropped.get(r, 0) for r in DROP_REASONS},
            "ratio": ratios,
            "samples_before": {k: before.get(k, 0) for k in SAMPLE_KINDS},
        }
        if not kept:
            write_json(paths.root / REPORT, report)
            reasons = ", ".join(f"{r}: {c}" for r, c in dropped.most_common())
            raise InputError(
                f"every trajectory was dropped ({len(trajectories)}: {reasons or 'none made'}); "
                f"see {REPORT}"
            )
        chosen, after = rebalance(rows, ratios, opts.attempt_seed())
        with atomic_open(paths.stream("output")) as f:
            for row in chosen:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        report["samples"] = {k: after.get(k, 0) for k in SAMPLE_KINDS}
        write_json(paths.root / REPORT, report)
        return {"report": REPORT, "samples": report["samples"], "kept": len(kept)}
