"""The ``tripost_eval`` stage: a model's self-improvement on held-out questions.

Planning writes the questions (``items.jsonl``: ``items`` per task, seeded; in a ``tripost``
job none of its training questions) and fixes the worked examples (none for a model trained
on TriPosT's format). Each shard serves the model itself (:mod:`services.worker.local_models`)
and runs the gateway's self-improvement loop (:class:`gateway.self_improve.SelfImprovement`) on
its questions: the model attempts, judges its answer (or the task's verifier does) and updates
it until the feedback says the final response is correct. Each question gives one row: the
first attempt's and the final answer's correctness against the gold answer, and every round.

``finish`` writes the stage's ``report.md`` and ``accuracy.png``; in a ``tripost`` job also,
at the job's root, ``result.json``, ``report.md`` and ``accuracy.png`` over every evaluation
so far (base, gold, each iteration), and the accuracy per iteration in the job's status.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.self_improve import Judge, SelfImprovement, completion_generator
from services.worker.artifacts import StagePaths, iter_jsonl, write_json
from services.worker.evaluation.chart import accuracy_chart
from services.worker.evaluation.common import write_text_atomic
from services.worker.evaluation.report import self_improve_report
from services.worker.evaluation.stats import SelfImproveCellStats, self_improve_cells
from services.worker.inputs import InputError, RawRecord
from services.worker.local_models import is_tripost_model, resolve_local_model
from services.worker.stages.base import (
    Outcome,
    RecordFailure,
    ShardResult,
    Stage,
    StageContext,
    collect,
    map_records,
)
from services.worker.stages.tripost import task_items, write_items
from shared.gateway_schemas import FeedbackBy
from shared.job_schemas import InputSpec, JobKind, TripostEvalSpec, TripostSpec, job_stages
from shared.jobs_store import stage_dir
from shared.openai_schemas import ChatCompletionRequest, OAChatMessage
from shared.tasks import check_answer, get_task
from shared.tasks.base import DataMissingError, TaskItem, UnknownTaskError
from shared.tripost import tripost_demo
from shared.verify import QuestionError, Verdict, llm_verify, scripted_verifier

ITEMS = "items.jsonl"
REPORT = "report.md"
CHART = "accuracy.png"
RESULT = "result.json"
UNTRAINED_SHOTS = 2
"""Worked examples for a model not trained on TriPosT's format, unless ``few_shot`` says."""


def eval_items(spec: TripostEvalSpec, exclude: Collection[str] = ()) -> list[TaskItem]:
    """``spec.items`` questions per task (seeded), none of whose question is in ``exclude``."""
    out: list[TaskItem] = []
    for name in spec.tasks or []:
        try:
            task = get_task(name)
            wanted, n = spec.items, spec.items + len(exclude)
            items = [i for i in task.items(n, seed=spec.seed or 0) if i.question not in exclude]
        except (UnknownTaskError, DataMissingError) as exc:
            raise InputError(f"tasks: {exc}") from exc
        out += items[:wanted]
    return out


def _seed(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


class TripostEvalStage(Stage):
    kind = JobKind.tripost_eval
    options: TripostEvalSpec

    @property
    def input_under_artifacts(self) -> bool:
        return True

    @property
    def label(self) -> str:
        return self.stage.label or self.options.model

    def planned_input(self, artifacts_dir: Path, job_id: str) -> InputSpec:
        exclude: set[str] = set()
        if isinstance(self.job_spec, TripostSpec):
            exclude = {item.question for item in task_items(self.job_spec)}
        items = eval_items(self.options, exclude)
        return write_items(stage_dir(artifacts_dir, job_id, self.stage.folder) / ITEMS, items)

    async def prepare(self, runtime: Any) -> dict[str, Any]:
        """The model's folder and the worked examples of each task, fixed once."""
        opts = self.options
        root = runtime.settings.artifacts_dir.expanduser()
        path = resolve_local_model(opts.model, runtime.settings)
        shots = opts.few_shot
        if shots is None:
            shots = 0 if is_tripost_model(opts.model, root) else UNTRAINED_SHOTS
        demos: dict[str, list[list[str]]] = {}
        for name in opts.tasks or []:
            task = get_task(name)
            demos[task.name] = [list(tripost_demo(d, task.kind)) for d in task.demos(shots)]
        return {"model": opts.model, "model_path": path, "few_shot": shots, "demos": demos}

    async def process(self, records: list[RawRecord], ctx: StageContext) -> ShardResult:
        opts = self.options
        demos = {task: [(q, a) for q, a in d] for task, d in ctx.extras.get("demos", {}).items()}

        def judge_of(item: TaskItem) -> Judge | None:
            if opts.feedback == "self":
                return None
            scripted = scripted_verifier(item.task)

            async def judge(answer: str) -> tuple[Verdict, FeedbackBy]:
                if scripted is not None:
                    try:
                        return scripted.verify(item.question, answer), "scripted"
                    except QuestionError as exc:
                        raise RecordFailure(f"question: {exc}") from exc

                async def chat(messages: list[dict[str, str]], max_tokens: int) -> str:
                    req = ChatCompletionRequest(
                        messages=[OAChatMessage.model_validate(m) for m in messages],
                        max_tokens=max_tokens,
                        temperature=0.0,
                    )
                    return str((await ctx.runtime.scorer.chat(req)).text())

                verdict, _ = await llm_verify(chat, item.question, answer, max_tokens=256)
                return verdict, "llm"

            return judge

        async def one(rec: RawRecord) -> Outcome:
            assert rec.data is not None
            try:
                fields = {k: v for k, v in rec.data.items() if k in TaskItem.model_fields}
                item = TaskItem.model_validate(fields)
            except ValidationError as exc:
                raise RecordFailure(f"not a task item: {exc.errors()[0]['msg']}") from exc
            loop = SelfImprovement(
                item.question,
                completion_generator(
                    client.complete,
                    max_tokens=opts.max_tokens,
                    temperature=opts.temperature,
                    seed=_seed(opts.seed, item.id),
                ),
                demos=demos.get(item.task, []),
                max_rounds=opts.max_rounds,
                judge=judge_of(item),
            )
            async for _ in loop.run():
                pass
            first = loop.rounds[0].answer if loop.rounds else ""
            first_judgement = check_answer(item, first)
            final = check_answer(item, loop.answer)
            last = loop.rounds[-1] if loop.rounds else None
            row = {
                "id": item.id,
                "task": item.task,
                "label": self.label,
                "model": opts.model,
                "question": item.question,
                "gold": item.answer,
                "first_correct": first_judgement.correct,
                "correct": final.correct,
                "parsed": final.parsed,
                "predicted": final.predicted,
                "rounds": len(loop.rounds),
                "said_correct": bool(last and last.correct),
                "answer": loop.answer,
                "trace": [r.model_dump(mode="json") for r in loop.rounds],
                "warnings": loop.warnings,
                "completion_tokens": loop.completion_tokens,
                "meta": item.meta,
            }
            return Outcome("kept", rows={"output": [row]}, record_id=item.id)

        model = str(ctx.extras.get("model_path") or opts.model)
        async with ctx.runtime.local_models.serve(model) as client:
            outcomes = await map_records(
                records, ctx, one, concurrency=ctx.runtime.settings.request_concurrency
            )
        return collect(self.kind, ctx.shard, records, outcomes)

    def finish(
        self, paths: StagePaths, n_shards: int, shard_stats: list[dict[str, Any]]
    ) -> dict[str, Any]:
        super().finish(paths, n_shards, shard_stats)
        rows = list(iter_jsonl(paths.stream("output")))
        tasks = [get_task(t).name for t in self.options.tasks or []]
        cells = self_improve_cells(rows, tasks, [self.label])
        now = dt.datetime.now(dt.UTC)
        chart = accuracy_chart(cells, paths.root / CHART, title=_CHART_TITLE)
        write_text_atomic(
            paths.root / REPORT,
            self_improve_report(
                f"Self-improvement of {self.options.model}",
                cells,
                settings=self._settings(),
                chart=chart.name if chart else None,
                generated_at=now,
            ),
        )
        out: dict[str, Any] = {"result": headline(self.label, self.stage.iteration, cells)}
        if isinstance(self.job_spec, TripostSpec):
            out["job_result"] = self._job_report(paths.root.parent, now)
        return out

    def _settings(self) -> list[tuple[str, str]]:
        o = self.options
        shots = "none for a model trained on TriPosT's format, else 2"
        return [
            ("Tasks", ", ".join(o.tasks or [])),
            ("Questions per task", f"{o.items} (seed {o.seed})"),
            ("Feedback", "the model's own" if o.feedback == "self" else "the task's verifier"),
            ("Most answers per question", str(o.max_rounds)),
            ("Tokens per generation", str(o.max_tokens)),
            ("Temperature", f"{o.temperature:g}"),
            ("Worked examples", shots if o.few_shot is None else str(o.few_shot)),
        ]

    def _job_report(self, folder: Path, now: dt.datetime) -> dict[str, Any]:
        """Every evaluation of the job so far, in stage order: result.json, report.md and
        accuracy.png at the job's root."""
        spec = self.job_spec
        assert isinstance(spec, TripostSpec)
        evals = [s for s in job_stages(spec) if s.kind is JobKind.tripost_eval]
        rows: list[dict[str, Any]] = []
        labels: list[str] = []
        for stage in evals:
            output = folder / stage.folder / "output.jsonl"
            if (
                stage.folder != self.stage.folder
                and not (folder / stage.folder / "done.json").is_file()
            ):
                continue
            if output.is_file():
                rows += list(iter_jsonl(output))
                labels.append(stage.label or stage.folder)
        tasks = [get_task(t).name for t in spec.eval_tasks()]
        cells = self_improve_cells(rows, tasks, labels)
        by_label = {s.label: s for s in evals}
        models = {label: spec.model_for(by_label[label].model, folder.name) for label in labels}
        result: dict[str, Any] = {
            "task": spec.task,
            "iterations": spec.iterations,
            "evaluated": labels,
            "models": models,
            "accuracy": [
                headline(
                    label, by_label[label].iteration, [c for c in cells if c.heuristic == label]
                )
                for label in labels
            ],
        }
        write_json(folder / RESULT, {**result, "cells": [c.model_dump(mode="json") for c in cells]})
        chart = accuracy_chart(cells, folder / CHART, title=_CHART_TITLE)
        write_text_atomic(
            folder / REPORT,
            self_improve_report(
                f"TriPosT on {spec.task}: accuracy per iteration",
                cells,
                settings=[
                    ("Training task", f"{spec.task}, {spec.items} questions (seed {spec.seed})"),
                    ("Base model", spec.base_model),
                    ("Iterations", str(spec.iterations)),
                    ("Models", ", ".join(f"{k}: {v}" for k, v in models.items())),
                    *self._settings(),
                ],
                chart=chart.name if chart else None,
                generated_at=now,
            ),
        )
        return result


_CHART_TITLE = "Final accuracy after self-improvement (95% Wilson interval)"


def headline(label: str, iteration: int, cells: list[SelfImproveCellStats]) -> dict[str, Any]:
    """What the job's status shows of one evaluation: accuracy per task."""
    return {
        "label": label,
        "iteration": iteration,
        "tasks": {
            c.task: {
                "n": c.n,
                "first_accuracy": c.first_accuracy,
                "accuracy": c.accuracy,
                "ci": [round(c.ci_low, 4), round(c.ci_high, 4)],
                "mean_rounds": c.mean_rounds,
            }
            for c in cells
        },
    }
