"""The evaluation runners (services.worker.evaluation) against the real gateway app served
in-process on fake model services: records, summary, report, chart, resuming, errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import FakeModelService, fake_upstreams
from services.worker.evaluation import EvalSpec, SelectionSpec, run_evaluation, run_selection
from services.worker.evaluation.client import GatewayClient
from services.worker.evaluation.runner import Job, build_plan, reason_request, resolve_tasks
from services.worker.evaluation.selection import gold_rank, selection_items
from services.worker.evaluation.stats import wilson_interval
from services.worker.evaluation.store import JsonlStore
from shared.errors import ServiceUnavailable
from shared.gateway_schemas import Heuristic
from shared.schemas import ProposeRequest, ScoreRequest
from shared.tasks import AnswerKind, UnknownTaskError, get_task
from shared.tasks.arithmetic import evaluate, parse

pytestmark = pytest.mark.unit

TASKS = ["multistep_arithmetic_seen", "word_sorting_seen"]
PNG = b"\x89PNG\r\n\x1a\n"


def solve(question: str) -> str:
    if question.startswith("Sort"):
        return " ".join(sorted(question.split("List: ")[1].split()))
    return str(evaluate(parse(question.rstrip("= "))))


def answering(req: ProposeRequest) -> list[str]:
    """Step 1: some thought; step 2: the right answer first, then wrong ones."""
    if not req.steps:
        return ["Let me work it out.", "I will guess."] * 2
    right = solve(req.question)
    return [f"The answer is: {right}", f"The answer is: {right}0", "The answer is: 1234567"][
        : req.n
    ]


def prefers_first_answer(req: ScoreRequest) -> list[float]:
    """The scorer likes the right answer (the agent always proposes it first)."""
    return [0.0 if i == 0 else -2.0 for i in range(len(req.continuations))]


@contextlib.asynccontextmanager
async def gateway(
    agent: FakeModelService | None = None, scorer: FakeModelService | None = None
) -> AsyncIterator[GatewayClient]:
    upstreams = fake_upstreams(
        agent=agent or FakeModelService("agent", proposals=answering),
        scorer=scorer or FakeModelService("scorer", scores=prefers_first_answer),
    )
    app = create_app(GatewaySettings(), clients=upstreams)
    async with app.router.lifespan_context(app):
        client = GatewayClient("http://gateway.test", transport=httpx.ASGITransport(app=app))
        try:
            yield client
        finally:
            await client.aclose()


def spec(out: Path, **fields: Any) -> EvalSpec:
    base: dict[str, Any] = {
        "tasks": TASKS,
        "heuristics": ["rationalyst", "random", "greedy"],
        "n": 4,
        "max_steps": 3,
        "out_dir": out,
        "concurrency": 3,
    }
    return EvalSpec(**{**base, **fields})


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 5, 0.0, 0.4345), (5, 5, 0.5655, 1.0), (10, 20, 0.2993, 0.7007), (0, 0, 0.0, 1.0)],
)
def test_wilson_interval(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


async def test_run_writes_records_summary_report_and_chart(tmp_path: Path) -> None:
    async with gateway() as client:
        result = await run_evaluation(spec(tmp_path), client=client)
    assert result.planned == result.requested == 2 * 4 * 3
    assert result.skipped == 0 and result.errors == 0
    records = lines(result.results_path)
    assert len(records) == 24
    first = records[0]
    assert {"key", "task", "item_id", "heuristic", "correct", "parsed", "steps", "tokens",
            "latency_s", "response"} <= set(first)  # fmt: skip
    assert first["response"]["trace"], "the full trace is kept"
    cells = {(c.task, c.heuristic): c for c in result.cells}
    for task in TASKS:
        assert cells[(task, "rationalyst")].accuracy == 1.0
        assert cells[(task, "greedy")].accuracy == 1.0  # greedy takes the first candidate
        assert cells[(task, "rationalyst")].ci_low == pytest.approx(wilson_interval(4, 4)[0])
        assert cells[(task, "rationalyst")].mean_steps == 2.0
        assert (cells[(task, "rationalyst")].mean_tokens or 0) > 0
        assert cells[(task, "rationalyst")].unparsed == 0
    summary = json.loads(result.summary_path.read_text())
    assert len(summary) == 6
    report = result.report_path.read_text()
    assert "| multistep_arithmetic_seen | `rationalyst` | 4 | 100.0% |" in report
    assert "Δ vs greedy" in report and "![Accuracy by heuristic per task](accuracy.png)" in report
    assert result.chart_path is not None
    assert result.chart_path.read_bytes().startswith(PNG)
    saved = json.loads((tmp_path / "spec.json").read_text())
    assert saved["tasks"] == TASKS and "api_key" not in saved


async def test_resume_sends_no_new_requests(tmp_path: Path) -> None:
    agent = FakeModelService("agent", proposals=answering)
    async with gateway(agent=agent) as client:
        await run_evaluation(spec(tmp_path), client=client)
        calls = len(agent.calls)
        again = await run_evaluation(spec(tmp_path), client=client)
        assert len(agent.calls) == calls
    assert again.requested == 0 and again.skipped == 24
    assert len(lines(again.results_path)) == 24
    assert again.cells == (await _cells_of(tmp_path))


async def _cells_of(out: Path) -> Any:
    async with gateway() as client:
        return (await run_evaluation(spec(out), client=client)).cells


async def test_more_examples_extend_the_run(tmp_path: Path) -> None:
    async with gateway() as client:
        await run_evaluation(spec(tmp_path, n=2), client=client)
        bigger = await run_evaluation(spec(tmp_path, n=4), client=client)
    assert bigger.skipped == 12 and bigger.requested == 12
    assert all(c.n == 4 for c in bigger.cells)


async def test_torn_last_line_is_ignored_and_redone(tmp_path: Path) -> None:
    async with gateway() as client:
        first = await run_evaluation(spec(tmp_path, n=2), client=client)
        text = first.results_path.read_text().splitlines(keepends=True)
        first.results_path.write_text("".join(text[:-1]) + text[-1][:40])  # killed mid-write
        again = await run_evaluation(spec(tmp_path, n=2), client=client)
    assert again.requested == 1
    assert len(JsonlStore(first.results_path).read()) == 12


async def test_failures_are_recorded_left_out_and_retried(tmp_path: Path) -> None:
    down = FakeModelService("agent", proposals=answering, fail=ServiceUnavailable("agent down"))
    async with gateway(agent=down) as client:
        failed = await run_evaluation(spec(tmp_path, n=2), client=client)
    assert failed.errors == 12
    assert all(c.errors == 2 and c.n == 0 and c.accuracy is None for c in failed.cells)
    assert all(r["error"].startswith("service_unavailable") for r in lines(failed.results_path))
    assert "Errors" in failed.report_path.read_text()
    async with gateway() as client:
        retried = await run_evaluation(spec(tmp_path, n=2), client=client)
    assert retried.requested == 12 and retried.errors == 0
    assert all(c.errors == 0 and c.n == 2 for c in retried.cells)


async def test_unparsed_answers_count_as_wrong(tmp_path: Path) -> None:
    def ramble(r: ProposeRequest) -> list[str]:
        """New thoughts every step, and nothing readable even when asked for the answer."""
        return [""] * r.n if r.step_prefix else [f"I keep thinking ({len(r.steps)})."] * r.n

    rambling = FakeModelService("agent", proposals=ramble)
    async with gateway(agent=rambling) as client:
        result = await run_evaluation(spec(tmp_path, n=2, heuristics=["likelihood"]), client=client)
    for cell in result.cells:
        assert cell.n == 2 and cell.accuracy == 0.0
        assert cell.unparsed == 2 and cell.unparsed_rate == 1.0
        assert cell.finished_rate == 0.0 and cell.mean_steps == 3.0


async def test_other_settings_are_not_mixed_in(tmp_path: Path) -> None:
    async with gateway() as client:
        await run_evaluation(spec(tmp_path, n=2), client=client)
        other = await run_evaluation(spec(tmp_path, n=2, n_candidates=2), client=client)
    assert other.requested == 12 and other.skipped == 0
    assert len(lines(other.results_path)) == 24
    assert all(c.n == 2 for c in other.cells)


async def test_task_demos_reach_the_agent(tmp_path: Path) -> None:
    agent = FakeModelService("agent", proposals=answering)
    async with gateway(agent=agent) as client:
        await run_evaluation(
            spec(tmp_path, n=1, tasks=["word_sorting_seen"], heuristics=["greedy"], shots=2),
            client=client,
        )
    (req,) = agent.requests("propose")[:1]
    assert req.few_shot == get_task("word_sorting_seen").demos(2)


def test_requests_follow_the_spec(tmp_path: Path) -> None:
    s = spec(
        tmp_path, n=1, heuristics=["greedy", "rationalyst"], temperature=0.3, few_shot="default"
    )
    jobs: Sequence[Job] = build_plan(s, resolve_tasks(["word_sorting_seen"]))
    greedy, rationalyst = (reason_request(s, j) for j in jobs)
    assert "n_candidates" not in greedy.model_fields_set  # greedy proposes one candidate
    assert rationalyst.n_candidates == 3 and rationalyst.heuristic is Heuristic.rationalyst
    assert greedy.few_shot is None and greedy.temperature == 0.3 and greedy.seed == 0
    # The task's answer kind picks the gateway's default demos.
    assert greedy.answer_kind is rationalyst.answer_kind is AnswerKind.word_list


async def test_unknown_task_and_down_gateway_fail_before_any_request(tmp_path: Path) -> None:
    with pytest.raises(UnknownTaskError):
        await run_evaluation(spec(tmp_path, tasks=["nope"]))
    with pytest.raises(ServiceUnavailable, match="does not answer /health"):
        await run_evaluation(spec(tmp_path, gateway_url="http://127.0.0.1:9"))
    assert not (tmp_path / "results.jsonl").exists()


def gold_scorer(gold: set[str]) -> Callable[[ScoreRequest], list[float]]:
    return lambda req: [0.0 if c in gold else -3.0 for c in req.continuations]


async def test_selection_ranks_gold_and_resumes(tmp_path: Path) -> None:
    sspec = SelectionSpec(
        tasks=TASKS, heuristics=["likelihood", "random"], n=6, k=4, out_dir=tmp_path
    )
    gold = {
        it.candidates[it.gold_index]
        for name in TASKS
        for it in selection_items(get_task(name), 6, 4, 0)
    }
    scorer = FakeModelService("scorer", scores=gold_scorer(gold))
    async with gateway(scorer=scorer) as client:
        result = await run_selection(sspec, client=client)
        calls = len(scorer.calls)
        again = await run_selection(sspec, client=client)
        assert len(scorer.calls) == calls
    assert result.requested == 2 * 6 * 2 and again.requested == 0
    cells = {(c.task, c.heuristic): c for c in result.cells}
    for task in TASKS:
        assert cells[(task, "likelihood")].accuracy == 1.0
        assert cells[(task, "likelihood")].mean_gold_rank == 1.0
        assert cells[(task, "likelihood")].chosen_kinds == {"gold": 6}
        assert cells[(task, "random")].chance == 0.25
        assert cells[(task, "random")].mean_gold_rank is None
    report = result.report_path.read_text()
    assert "chance 25.0%" in report and "| Top-1 |" in report
    assert result.chart_path is not None and result.chart_path.read_bytes().startswith(PNG)
    record = lines(result.results_path)[0]
    assert record["candidates"][record["gold_index"]] in gold


def test_selection_items_are_stable_and_need_rationales() -> None:
    task = get_task("multistep_arithmetic_unseen")
    assert selection_items(task, 5, 4, 0) == selection_items(task, 8, 4, 0)[:5]
    assert gold_rank([0.1, None, 0.5, 0.1], 0) == 2
    assert gold_rank([None, 0.2], 0) is None


def test_selection_spec_rejects_non_scoring_heuristics(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot rank"):
        SelectionSpec(tasks=TASKS, heuristics=["greedy"], out_dir=tmp_path)


async def test_run_compares_strategies_at_budgets_and_plots_accuracy_vs_tokens(
    tmp_path: Path,
) -> None:
    def solutions(req: Any) -> list[list[str]]:
        right = solve(req.question)
        return [["Let me work it out.", f"The answer is: {right}"]] * req.n

    agent = FakeModelService("agent", proposals=answering, solutions=solutions)
    options = {
        "heuristics": ["likelihood"],
        "strategies": ["step", "beam", "vote"],
        "budgets": [5000, 800],
        "n": 2,
        "n_beams": 2,
        "beam_width": 1,
        "n_solutions": 2,
        "max_step_tokens": 16,
    }
    async with gateway(agent=agent) as client:
        result = await run_evaluation(spec(tmp_path, **options), client=client)
    assert result.errors == 0 and result.planned == 2 * 2 * 3 * 2
    methods = {c.heuristic for c in result.cells}
    assert methods == {f"{s}/likelihood@{b}" for s in ("step", "beam", "vote") for b in (800, 5000)}
    records = lines(result.results_path)
    assert {r["strategy"] for r in records} == {"step", "beam", "vote"}
    assert all(r["tokens"]["budget"] <= r["budget"] for r in records)
    assert all(r["response"]["tree"] for r in records)
    cells = {(c.task, c.heuristic): c for c in result.cells}
    vote = cells[("multistep_arithmetic_seen", "vote/likelihood@5000")]
    assert vote.accuracy == 1.0 and (vote.mean_budget_tokens or 0) > 0
    report = result.report_path.read_text()
    assert "## Accuracy vs tokens" in report
    assert "![Accuracy vs tokens per strategy](accuracy_tokens.png)" in report
    assert (tmp_path / "accuracy_tokens.png").read_bytes().startswith(PNG)


def test_plain_runs_keep_their_record_keys(tmp_path: Path) -> None:
    plain = spec(tmp_path)
    assert not plain.compares_compute
    (job, *_) = build_plan(plain, resolve_tasks(TASKS))
    assert "|rationalyst|" in job.key and job.method == "step/rationalyst"
