"""The step-selection evaluation: does a heuristic rank the gold next step first?

Items come from gold rationales (generated arithmetic and word sorting, BIG-bench word sorting,
strategyqa explanations, GSM8K-style JSONL): a trajectory prefix, the gold next step and
``k - 1`` corrupted alternatives (:mod:`shared.tasks.rationales`), shuffled. Each item goes to
POST /v1/select once per heuristic; top-1 accuracy is reported with a Wilson interval against
the chance rate 1/k. Files and resuming work as in :mod:`services.worker.evaluation.runner`.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from services.worker.evaluation.chart import accuracy_chart
from services.worker.evaluation.client import GatewayClient
from services.worker.evaluation.common import (
    NoProgress,
    ProgressHook,
    RunFiles,
    run_pool,
    write_json_atomic,
    write_text_atomic,
)
from services.worker.evaluation.report import selection_report
from services.worker.evaluation.runner import (
    CHART_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    check_gateway,
    resolve_tasks,
    select_demos,
)
from services.worker.evaluation.spec import SelectionSpec
from services.worker.evaluation.stats import SelectionCellStats, selection_cells
from services.worker.evaluation.store import JsonlStore
from shared.errors import ServiceError
from shared.gateway_schemas import Heuristic, SelectRequest, SelectResponse
from shared.schemas import Demo
from shared.tasks import AnswerKind, Task
from shared.tasks.rationales import SelectionItem, build_selection_item

logger = logging.getLogger(__name__)

POOL_ITEMS = 40
"""Items whose steps serve as "other problem" distractors."""
POOL_SEED_OFFSET = 7919
"""The distractor pool is drawn with seed + this, apart from the evaluated items."""


class NoRationalesError(ValueError):
    """The task has no gold rationales to build step-selection items from."""


@dataclass(frozen=True)
class SelectionJob:
    key: str
    item: SelectionItem
    heuristic: Heuristic
    demos: list[Demo] | None
    answer_kind: AnswerKind | None = None


class SelectionResult(RunFiles):
    """What a step-selection run did and where its files are."""

    cells: list[SelectionCellStats]


def selection_items(task: Task, n: int, k: int, seed: int) -> list[SelectionItem]:
    """``n`` items from the task's gold rationales, in the task's order for ``seed``.

    An item depends only on (task, seed, item id): its position and corruptions come from a
    generator seeded by them, and the "other problem" distractors from a fixed pool of items
    drawn with another seed, so asking for more items keeps the first ones unchanged.
    """
    generated = task.source == "generated"
    source = task.items(2 * n + 10 if generated else None, seed)
    with_steps = [it for it in source if it.rationale]
    if not with_steps:
        raise NoRationalesError(
            f"task {task.name!r} has no gold rationales; step selection works on generated "
            "tasks, word_sorting, strategyqa and GSM8K-style JSONL"
        )
    pool = [s for it in task.items(POOL_ITEMS, seed + POOL_SEED_OFFSET) for s in it.rationale or []]
    out: list[SelectionItem] = []
    for item in with_steps:
        if len(out) == n:
            break
        rng = random.Random(f"select:{task.name}:{seed}:{item.id}")
        own = set(item.rationale or [])
        built = build_selection_item(item, k, rng, others=[s for s in pool if s not in own])
        if built is not None:
            out.append(built)
    if len(out) < n:
        logger.warning("%s: only %d step-selection items could be built", task.name, len(out))
    return out


def build_selection_plan(spec: SelectionSpec, tasks: list[Task]) -> list[SelectionJob]:
    config_id = spec.config_id
    jobs = []
    for task in tasks:
        demos = select_demos(task, spec.few_shot, spec.shots)
        for item in selection_items(task, spec.n, spec.k, spec.seed):
            for heuristic in spec.heuristics:
                key = f"{task.name}|{item.key_id}|{heuristic.value}|seed={spec.seed}|{config_id}"
                jobs.append(SelectionJob(key, item, heuristic, demos, task.kind))
    return jobs


def gold_rank(scores: list[float | None], gold: int) -> int | None:
    """1 + the number of candidates scored strictly above the gold one; None if unscored."""
    g = scores[gold]
    if g is None:
        return None
    return 1 + sum(1 for s in scores if s is not None and s > g)


def _record(job: SelectionJob, spec: SelectionSpec) -> dict[str, Any]:
    item = job.item
    return {
        "key": job.key,
        "config_id": spec.config_id,
        "task": item.task,
        "item_id": item.item_id,
        "position": item.position,
        "heuristic": job.heuristic.value,
        "seed": spec.seed,
        "question": item.question,
        "steps": item.steps,
        "candidates": item.candidates,
        "kinds": item.kinds,
        "gold_index": item.gold_index,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def score_selection(
    job: SelectionJob, spec: SelectionSpec, res: SelectResponse, latency_s: float
) -> dict[str, Any]:
    return {
        **_record(job, spec),
        "error": None,
        "chosen": res.chosen,
        "chosen_kind": job.item.kinds[res.chosen],
        "correct": res.chosen == job.item.gold_index,
        "scores": res.scores,
        "gold_rank": gold_rank(res.scores, job.item.gold_index),
        "rationale": res.rationale,
        "heuristic_used": res.heuristic_used.value,
        "fallbacks": len(res.fallbacks),
        "latency_s": round(latency_s, 3),
        "response": res.model_dump(mode="json"),
    }


async def run_selection(
    spec: SelectionSpec,
    *,
    client: GatewayClient | None = None,
    progress: ProgressHook | None = None,
) -> SelectionResult:
    """Run (or resume) a step-selection evaluation and write its results and report."""
    progress = progress or NoProgress()
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SPEC_FILE, spec.model_dump(mode="json"))
    plan = build_selection_plan(spec, resolve_tasks(spec.tasks))
    store = JsonlStore(out / RESULTS_FILE)
    done = store.read()
    pending = [j for j in plan if j.key not in done or done[j.key].get("error")]
    progress.planned(len(plan), len(plan) - len(pending))
    errors = 0
    if pending:
        own = client is None
        gateway = client or GatewayClient(
            spec.gateway_url,
            api_key=spec.api_key.get_secret_value() if spec.api_key else None,
            timeout=spec.request_timeout_s,
        )

        async def run_one(job: SelectionJob) -> dict[str, Any]:
            nonlocal errors
            req = SelectRequest(
                question=job.item.question,
                steps=job.item.steps,
                candidates=job.item.candidates,
                heuristic=job.heuristic,
                seed=spec.seed,
                few_shot=job.demos,
                answer_kind=job.answer_kind,
            )
            start = time.perf_counter()
            try:
                res = await gateway.select(req)
            except Exception as exc:
                errors += 1
                logger.warning("%s failed: %s", job.key, exc)
                kind = exc.type if isinstance(exc, ServiceError) else type(exc).__name__
                return {
                    **_record(job, spec),
                    "error": f"{kind}: {exc}",
                    "correct": False,
                    "latency_s": round(time.perf_counter() - start, 3),
                }
            return score_selection(job, spec, res, time.perf_counter() - start)

        try:
            await check_gateway(gateway)
            with store:
                await run_pool(pending, run_one, store, spec.concurrency, progress)
        finally:
            if own:
                await gateway.aclose()
    records = store.read()
    rows = [records[j.key] for j in plan if j.key in records]
    task_names = list(dict.fromkeys(j.item.task for j in plan))
    cells = selection_cells(rows, task_names, [h.value for h in spec.heuristics], spec.k)
    write_json_atomic(out / SUMMARY_FILE, [c.model_dump(mode="json") for c in cells])
    chart = accuracy_chart(
        cells,
        out / CHART_FILE,
        title=f"Step selection: gold step ranked first among {spec.k} (95% Wilson interval)",
        chance=1.0 / spec.k,
    )
    report = selection_report(
        spec, cells, chart=chart.name if chart else None, generated_at=dt.datetime.now(dt.UTC)
    )
    write_text_atomic(out / REPORT_FILE, report)
    return SelectionResult(
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
