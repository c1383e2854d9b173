"""The accuracy evaluation: tasks x heuristics x n examples through the gateway's /v1/reason.

:func:`run_evaluation` is plain async code taking an :class:`EvalSpec` (a worker job can wrap
it). It writes into ``spec.out_dir``:

* ``spec.json``      the spec (without the API key);
* ``results.jsonl``  one record per example and heuristic, with the full response trace;
* ``summary.json``   per cell: accuracy, Wilson 95% interval, unparsed rate, steps, tokens,
  latency;
* ``report.md`` and ``accuracy.png``.

It resumes: a record's key is (task, item, heuristic, seed, settings hash), and examples whose
key is already in ``results.jsonl`` without an error are not asked again. Failed requests are
recorded with their error, left out of the accuracy, and retried by the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.worker.evaluation.chart import accuracy_chart, tokens_chart
from services.worker.evaluation.client import GatewayClient
from services.worker.evaluation.common import (
    NoProgress,
    ProgressHook,
    RunFiles,
    run_pool,
    write_json_atomic,
    write_text_atomic,
)
from services.worker.evaluation.report import eval_report
from services.worker.evaluation.spec import EvalSpec, FewShotMode
from services.worker.evaluation.stats import CellStats, eval_cells
from services.worker.evaluation.store import JsonlStore
from shared.errors import ServiceError, ServiceUnavailable
from shared.gateway_schemas import Heuristic, ReasonRequest, ReasonResponse, Strategy, Usage
from shared.schemas import Demo
from shared.tasks import Task, TaskItem, check_answer, get_task

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
CHART_FILE = "accuracy.png"
TOKENS_CHART_FILE = "accuracy_tokens.png"
SPEC_FILE = "spec.json"


@dataclass(frozen=True)
class Job:
    key: str
    item: TaskItem
    heuristic: Heuristic
    demos: list[Demo] | None
    strategy: Strategy = Strategy.step
    budget: int | None = None

    @property
    def method(self) -> str:
        return method_name(self.strategy, self.heuristic, self.budget)


def method_name(strategy: Strategy, heuristic: Heuristic, budget: int | None) -> str:
    """The cell of a run comparing strategies or budgets: ``strategy/heuristic[@budget]``."""
    name = f"{strategy.value}/{heuristic.value}"
    return name if budget is None else f"{name}@{budget}"


def methods(spec: EvalSpec) -> list[tuple[Strategy, Heuristic, int | None]]:
    """Every (strategy, heuristic, budget) a run compares, in report order."""
    budgets: list[int | None] = list(spec.budgets) or [None]
    return [(s, h, b) for s in spec.strategies for h in spec.heuristics for b in budgets]


def method_names(spec: EvalSpec) -> list[str]:
    if not spec.compares_compute:
        return [h.value for h in spec.heuristics]
    return [method_name(s, h, b) for s, h, b in methods(spec)]


class EvalResult(RunFiles):
    """What an accuracy run did and where its files are."""

    cells: list[CellStats]


def record_key(task: str, item_id: str, heuristic: str, seed: int, config_id: str) -> str:
    return f"{task}|{item_id}|{heuristic}|seed={seed}|{config_id}"


def select_demos(task: Task, mode: FewShotMode, shots: int) -> list[Demo] | None:
    """The few-shot demos of a request: the task's own, None (the gateway's), or none."""
    if mode == "default":
        return None
    if mode == "none" or shots == 0:
        return []
    return task.demos(shots)


def resolve_tasks(names: list[str]) -> list[Task]:
    """Tasks by name; unknown names and missing data fail here, before any request."""
    tasks = [get_task(name) for name in names]
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise ValueError(f"task {task.name!r} is listed twice")
        seen.add(task.name)
    return tasks


def build_plan(spec: EvalSpec, tasks: list[Task]) -> list[Job]:
    """Every (item, heuristic) of the run; heuristics interleaved per item, so an interrupted
    run has compared them on the same items."""
    config_id = spec.config_id
    jobs = []
    for task in tasks:
        demos = select_demos(task, spec.few_shot, spec.shots)
        for item in task.items(spec.n, spec.seed):
            for strategy, heuristic, budget in methods(spec):
                job = Job("", item, heuristic, demos, strategy, budget)
                name = job.method if spec.compares_compute else heuristic.value
                key = record_key(task.name, item.id, name, spec.seed, config_id)
                jobs.append(Job(key, item, heuristic, demos, strategy, budget))
    return jobs


def reason_request(spec: EvalSpec, job: Job) -> ReasonRequest:
    fields: dict[str, Any] = {
        "question": job.item.question,
        "heuristic": job.heuristic,
        "max_steps": spec.max_steps,
        "seed": spec.seed,
        "few_shot": job.demos,
        "answer_kind": job.item.kind,
        "strict": spec.strict,
    }
    if job.heuristic is not Heuristic.greedy:  # greedy proposes one candidate
        fields["n_candidates"] = spec.n_candidates
    optional = {
        "temperature": spec.temperature,
        "max_step_tokens": spec.max_step_tokens,
        "max_rationale_tokens": spec.max_rationale_tokens,
        "deadline_s": spec.deadline_s,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    if job.strategy is not Strategy.step:
        fields["strategy"] = job.strategy
        fields["aggregation"] = spec.aggregation
    if job.strategy is Strategy.beam:
        fields.update(n_beams=spec.n_beams, beam_width=spec.beam_width)
    elif job.strategy in (Strategy.best_of_n, Strategy.vote, Strategy.weighted_vote):
        fields["n"] = spec.n_solutions
    if job.budget is not None:
        fields["max_tokens_budget"] = job.budget
    return ReasonRequest(**fields)


def token_counts(usage: Usage) -> dict[str, int]:
    """Prompt and generated tokens per service and in total (where services report them)."""
    out: dict[str, int] = {}
    total = generated = 0
    for name in ("rationalyst", "agent", "scorer"):
        u = getattr(usage, name)
        prompt, completion = u.prompt_tokens or 0, u.completion_tokens or 0
        out[f"{name}_prompt"] = prompt
        out[f"{name}_completion"] = completion
        total += prompt + completion
        generated += completion
    out["generated"] = generated
    out["total"] = total
    out["budget"] = usage.budget_tokens
    return out


def _base_record(job: Job, spec: EvalSpec) -> dict[str, Any]:
    item = job.item
    return {
        "key": job.key,
        "config_id": spec.config_id,
        "task": item.task,
        "item_id": item.id,
        "heuristic": job.heuristic.value,
        "method": job.method if spec.compares_compute else job.heuristic.value,
        "strategy": job.strategy.value,
        "budget": job.budget,
        "seed": spec.seed,
        "question": item.question,
        "gold": item.gold_text,
        "gold_answer": item.answer,
        "meta": item.meta,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def score_response(
    job: Job, spec: EvalSpec, res: ReasonResponse, latency_s: float
) -> dict[str, Any]:
    """The record of one answered example."""
    judgement = check_answer(job.item, "\n".join(res.steps))
    return {
        **_base_record(job, spec),
        "error": None,
        "predicted": judgement.predicted,
        "span": judgement.span,
        "gateway_answer": res.answer,
        "parsed": judgement.parsed,
        "correct": judgement.correct,
        "steps": res.steps,
        "n_steps": len(res.steps),
        "finished": res.finished,
        "finish": res.finish.value,
        "deadline_reached": res.deadline_reached,
        "budget_reached": res.budget_reached,
        "heuristic_used": res.heuristic_used.value,
        "fallbacks": len(res.fallbacks),
        "tokens": token_counts(res.usage),
        "latency_s": round(latency_s, 3),
        "gateway_ms": res.timings.total_ms,
        "response": res.model_dump(mode="json"),
    }


def error_record(job: Job, spec: EvalSpec, exc: Exception, latency_s: float) -> dict[str, Any]:
    kind = exc.type if isinstance(exc, ServiceError) else type(exc).__name__
    return {
        **_base_record(job, spec),
        "error": f"{kind}: {exc}",
        "parsed": False,
        "correct": False,
        "latency_s": round(latency_s, 3),
    }


async def check_gateway(client: GatewayClient) -> None:
    if not await client.alive():
        raise ServiceUnavailable(
            f"the gateway at {client.base_url} does not answer /health; start the ensemble "
            "(`rationalyst up`) or pass --gateway-url"
        )


def write_outputs(
    spec: EvalSpec, plan: list[Job], store: JsonlStore
) -> tuple[list[CellStats], Path | None]:
    """Summary, chart and report from the records of this plan (other settings ignored)."""
    records = store.read()
    rows = [records[j.key] for j in plan if j.key in records]
    task_names = list(dict.fromkeys(j.item.task for j in plan))
    cells = eval_cells(rows, task_names, method_names(spec))
    out = spec.out_dir
    write_json_atomic(out / SUMMARY_FILE, [c.model_dump(mode="json") for c in cells])
    chart = accuracy_chart(
        cells, out / CHART_FILE, title="Accuracy by heuristic (95% Wilson interval)"
    )
    compute = None
    if spec.compares_compute:
        compute = tokens_chart(
            cells,
            out / TOKENS_CHART_FILE,
            title="Accuracy vs tokens spent (generated + scored), 95% Wilson interval",
        )
    report = eval_report(
        spec,
        cells,
        rows,
        chart=chart.name if chart else None,
        generated_at=dt.datetime.now(dt.UTC),
        tokens_chart=compute.name if compute else None,
    )
    write_text_atomic(out / REPORT_FILE, report)
    return cells, chart


async def run_evaluation(
    spec: EvalSpec,
    *,
    client: GatewayClient | None = None,
    progress: ProgressHook | None = None,
) -> EvalResult:
    """Run (or resume) an accuracy evaluation and write its results, report and chart."""
    progress = progress or NoProgress()
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SPEC_FILE, spec.model_dump(mode="json"))
    tasks = resolve_tasks(spec.tasks)
    plan = build_plan(spec, tasks)
    store = JsonlStore(out / RESULTS_FILE)
    done = store.read()
    pending = [j for j in plan if j.key not in done or done[j.key].get("error")]
    progress.planned(len(plan), len(plan) - len(pending))
    logger.info(
        "evaluation: %d examples planned, %d already done, %d to run",
        len(plan), len(plan) - len(pending), len(pending),
    )  # fmt: skip
    errors = 0
    if pending:
        own = client is None
        gateway = client or GatewayClient(
            spec.gateway_url,
            api_key=spec.api_key.get_secret_value() if spec.api_key else None,
            timeout=spec.request_timeout_s,
        )

        async def run_one(job: Job) -> dict[str, Any]:
            nonlocal errors
            start = time.perf_counter()
            try:
                res = await gateway.reason(reason_request(spec, job))
            except Exception as exc:
                errors += 1
                logger.warning("%s failed: %s", job.key, exc)
                return error_record(job, spec, exc, time.perf_counter() - start)
            return score_response(job, spec, res, time.perf_counter() - start)

        try:
            await check_gateway(gateway)
            with store:
                await run_pool(pending, run_one, store, spec.concurrency, progress)
        finally:
            if own:
                await gateway.aclose()
    if errors:
        logger.warning("%d requests failed; run the same command again to retry them", errors)
    cells, chart = write_outputs(spec, plan, store)
    return EvalResult(
        out_dir=out,
        results_path=store.path,
        report_path=out / REPORT_FILE,
        summary_path=out / SUMMARY_FILE,
        chart_path=chart,
        planned=len(plan),
        skipped=len(plan) - len(pending),
        requested=len(pending),
        errors=errors,
        cells=cells,
    )
