"""``prm_labels``: the label rule on fake Monte-Carlo estimates (prefix includes step i,
hard/soft labels, binary search finds the first failing prefix with fewer rollouts than
shepherd), the stage on a fake agent (rows, skip reasons, the rollout cache on a re-run, the
report), and the checks at submit."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from services.worker.artifacts import StagePaths, read_json, write_json
from services.worker.inputs import RawRecord
from services.worker.prm_labels import Estimate, binary_search, end_estimate, shepherd
from services.worker.runner import JobRunner
from services.worker.settings import WorkerSettings
from services.worker.stages import build_stage
from services.worker.stages.base import StageContext
from services.worker.stages.prm_labels import PrmLabelsStage
from shared.answer_kinds import AnswerKind
from shared.errors import InvalidRequest
from shared.job_schemas import InputSpec, JobSpec, PrmLabelsSpec, job_stages
from shared.jobs_store import JobStore
from shared.schemas import RolloutCompletion, RolloutRequest, RolloutResponse, RolloutUsage
from shared.tasks.base import TaskItem

pytestmark = pytest.mark.unit

ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpec)
N = 4  # rollouts per estimate of the fakes


def spec(**fields: Any) -> PrmLabelsSpec:
    base: dict[str, Any] = {"kind": "prm_labels", "task": "multistep_arithmetic"}
    out = ADAPTER.validate_python({**base, **fields})
    assert isinstance(out, PrmLabelsSpec)
    return out


# -- the label rule on fake estimates ---------------------------------------------------------


class Oracle:
    """MC(i) of a solution whose prefixes reach the answer while ``i < first_bad`` (with
    share ``value``) and never from ``first_bad`` on; a finished solution's end is free."""

    def __init__(self, steps: int, first_bad: int, value: float = 0.5) -> None:
        self.steps, self.first_bad, self.value = steps, first_bad, value
        self.asked: list[int] = []

    async def __call__(self, i: int) -> Estimate:
        assert 1 <= i <= self.steps  # a prefix of at least one step: it includes step i
        self.asked.append(i)
        if i == self.steps:
            end = end_estimate(True, self.first_bad > self.steps)
            assert end is not None
            return end
        return Estimate(self.value if i < self.first_bad else 0.0, N)


@pytest.mark.parametrize("first_bad", range(1, 9))
async def test_shepherd_labels_every_step_hard_and_soft(first_bad: int) -> None:
    oracle = Oracle(7, first_bad, value=0.25)
    out = await shepherd(7, oracle)
    assert sorted(oracle.asked) == list(range(1, 8))
    assert out.labels == [i < first_bad for i in range(1, 8)]
    correct = first_bad > 7
    assert out.soft_labels == [0.25 if i < first_bad else 0.0 for i in range(1, 7)] + [
        1.0 if correct else 0.0
    ]
    assert out.rollouts_used == 6 * N  # the finished last step needs none


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 8, 13])
async def test_binary_search_finds_the_first_failing_prefix_with_fewer_rollouts(
    steps: int,
) -> None:
    totals = [0, 0]
    for first_bad in range(1, steps + 2):
        bs_oracle, sh_oracle = Oracle(steps, first_bad), Oracle(steps, first_bad)
        bs = await binary_search(steps, bs_oracle, start=0.5)
        sh = await shepherd(steps, sh_oracle)
        assert bs.labels == sh.labels == [i < first_bad for i in range(1, steps + 1)]
        assert bs.rollouts_used <= sh.rollouts_used
        if steps >= 5:
            assert bs.rollouts_used < sh.rollouts_used, (steps, first_bad)
        totals[0] += bs.rollouts_used
        totals[1] += sh.rollouts_used
        # about log2(steps) probes, each n rollouts (the finished end is free)
        assert len(bs.probed) <= steps.bit_length() + 1
        for i, soft in zip(range(1, steps + 1), bs.soft_labels, strict=True):
            assert (soft > 0) == (i < first_bad)
    if steps >= 3:
        assert totals[0] < totals[1]


async def test_binary_search_without_a_correct_solution_labels_all_negative_for_free() -> None:
    oracle = Oracle(5, 3)
    out = await binary_search(5, oracle, start=0.0)
    assert out.labels == [False] * 5 and out.soft_labels == [0.0] * 5
    assert out.rollouts_used == 0 and oracle.asked == []


async def test_an_unfinished_solution_probes_its_end() -> None:
    async def mc(i: int) -> Estimate:
        return Estimate(0.5 if i <= 3 else 0.0, N)  # no free end: the solution is unfinished

    out = await binary_search(4, mc, start=0.25)
    assert out.labels == [True, True, True, False]
    assert out.probed[0] == 4  # the end first: it is not known without rollouts
    assert end_estimate(False, False) is None


# -- the stage on a fake agent -----------------------------------------------------------------

QUESTION = "What is 2 + 3?"


class FakeAgent:
    """Solutions (empty prefix): even ones "2 + 3 = 5 ... 5" (correct), odd ones "= 6 ... 6".
    A rollout from a prefix holding "= 6" answers 6; from any other prefix, half of the
    completions answer 5 and half 7 (MC 0.5)."""

    def __init__(self) -> None:
        self.requests: list[RolloutRequest] = []

    async def rollout(self, req: RolloutRequest) -> RolloutResponse:
        self.requests.append(req)
        comps = []
        for i in range(req.n):
            if not req.steps:
                right = i % 2 == 0
                steps = ["Add 2 and 3.", "2 + 3 = 5." if right else "2 + 3 = 6."]
                steps.append(f"The answer is: {5 if right else 6}")
            elif any("= 6" in s for s in req.steps):
                steps = ["The answer is: 6"]
            else:
                steps = [f"The answer is: {5 if i % 2 == 0 else 7}"]
            comps.append(
                RolloutCompletion(steps=steps, answer=None, finished=True, completion_tokens=3)
            )
        return RolloutResponse(
            id="r", completions=comps, usage=RolloutUsage(prompt_tokens=1, completion_tokens=1)
        )

    async def request(self, method: str, path: str) -> Any:
        return SimpleNamespace(json=lambda: {"model": "fake", "model_path": "/fake"})


def item(i: int, **over: Any) -> dict[str, Any]:
    base = {"task": "t", "id": f"p{i}", "question": QUESTION, "answer": "5", "kind": "number"}
    return TaskItem.model_validate({**base, **over}).model_dump()


class FakeStore:
    """Where the stage reports its rollouts as they arrive."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.redis = self

    def job_key(self, job_id: str) -> str:
        return f"job:{job_id}"

    async def hincrby(self, key: str, field: str, n: int) -> None:
        self.counts[(key, field)] = self.counts.get((key, field), 0) + n


async def run_stage(
    artifacts: Path,
    stage: PrmLabelsStage,
    records: list[RawRecord],
    agent: FakeAgent,
    store: FakeStore | None = None,
) -> Any:
    rt = SimpleNamespace(
        settings=WorkerSettings(artifacts_dir=artifacts, request_concurrency=4),
        agent=agent,
        store=store or FakeStore(),
    )
    extras = await stage.prepare(rt)

    async def check() -> None:
        return None

    ctx = StageContext(
        job_id="job-p", stage_index=0, shard=0, runtime=rt,  # type: ignore[arg-type]
        input=InputSpec(paths=["x"], id_field="id"), extras=extras, check_active=check,
    )  # fmt: skip
    return await stage.process(records, ctx)


def make_stage(**fields: Any) -> PrmLabelsStage:
    s = spec(n_solutions=4, n_rollouts=2, few_shot=1, **fields)
    stage = build_stage(s, job_stages(s)[0], "job-p")
    assert isinstance(stage, PrmLabelsStage)
    return stage


async def test_stage_labels_each_solution_from_prefixes_that_include_the_step(
    tmp_path: Path,
) -> None:
    agent, store = FakeAgent(), FakeStore()
    records = [RawRecord(0, item(0))]
    result = await run_stage(tmp_path, make_stage(), records, agent, store)
    # progress in rollouts: the 4 solutions, then 3 distinct prefixes x 2 rollouts
    assert store.counts == {("job:job-p", "s0:rollouts"): 4 + 3 * 2}
    rows = {r["id"]: r for r in result.streams["stepwise"]}
    assert sorted(rows) == ["p0:0", "p0:1", "p0:2", "p0:3"]
    right, wrong = rows["p0:0"], rows["p0:1"]
    assert right["prompt"] == QUESTION and len(right["completions"]) == 3
    assert (right["labels"], right["soft_labels"]) == ([True, True, True], [0.5, 0.5, 1.0])
    assert (wrong["labels"], wrong["soft_labels"]) == ([True, False, False], [0.5, 0.0, 0.0])
    assert right["solution_correct"] and not wrong["solution_correct"]
    assert right["rollouts_used"] == wrong["rollouts_used"] == 2 * 2  # steps 1, 2; 3 is free
    # every rollout starts after at least one step of a solution, the labelled one included
    prefixes = {tuple(r.steps) for r in agent.requests}
    assert prefixes == {
        (),
        ("Add 2 and 3.",),
        ("Add 2 and 3.", "2 + 3 = 5."),
        ("Add 2 and 3.", "2 + 3 = 6."),
    }
    first = agent.requests[0]
    assert (first.n, first.answer_kind, len(first.few_shot or [])) == (4, AnswerKind.number, 1)
    assert all(r.n == 2 for r in agent.requests[1:])
    # the shared prefix of the solutions was asked for once
    assert len(agent.requests) == 4
    outcome = {r["id"]: r for r in result.streams["outcome"]}
    assert outcome["p0:1"] == {
        "id": "p0:1",
        "prompt": QUESTION,
        "completion": "Add 2 and 3.\n2 + 3 = 6.\nThe answer is: 6",
        "label": False,
    }
    assert result.counts["out"] == 4


async def test_binary_search_stage_agrees_with_shepherd_on_fewer_rollouts(
    tmp_path: Path,
) -> None:
    records = [RawRecord(0, item(0))]
    sh = await run_stage(tmp_path / "a", make_stage(), records, FakeAgent())
    agent = FakeAgent()
    bs = await run_stage(tmp_path / "b", make_stage(method="binary_search"), records, agent)
    sh_rows = {r["id"]: r for r in sh.streams["stepwise"]}
    bs_rows = {r["id"]: r for r in bs.streams["stepwise"]}
    assert {k: r["labels"] for k, r in bs_rows.items()} == {
        k: r["labels"] for k, r in sh_rows.items()
    }
    used = [sum(r["rollouts_used"] for r in rows.values()) for rows in (sh_rows, bs_rows)]
    assert used == [16, 8]  # correct ones need none; each of 2 wrong ones probes steps 1, 2
    assert bs_rows["p0:0"]["soft_labels"] == [1.0, 1.0, 1.0]


async def test_a_rerun_takes_every_rollout_from_the_cache(tmp_path: Path) -> None:
    records = [RawRecord(0, item(0)), RawRecord(1, item(1))]
    first = await run_stage(tmp_path, make_stage(), records, FakeAgent())
    again_agent = FakeAgent()
    again = await run_stage(tmp_path, make_stage(), records, again_agent)
    assert again_agent.requests == []
    assert again.streams["stepwise"] == first.streams["stepwise"]
    problems = again.streams["problems"]
    assert [p["rollouts_computed"] for p in problems] == [0, 0]
    assert all(p["rollouts_cached"] > 0 for p in problems)
    # another seed is another sample: asked again
    other = FakeAgent()
    await run_stage(tmp_path, make_stage(seed=1), records[:1], other)
    assert other.requests


async def test_problems_without_a_readable_gold_answer_are_skipped_by_reason(
    tmp_path: Path,
) -> None:
    records = [
        RawRecord(0, item(0, answer="quite a lot")),  # a number task's gold that is no number
        RawRecord(1, {"question": QUESTION, "answer": ""}),
        RawRecord(2, {"question": QUESTION}),
        RawRecord(3, {"answer": "5"}),
        RawRecord(4, {"id": "gsm", "question": QUESTION, "answer": "2 + 3 = 5\n#### 5"}),
    ]
    agent = FakeAgent()
    stage = make_stage()
    result = await run_stage(tmp_path, stage, records, agent)
    assert dict(result.drop_reasons) == {
        "gold_unparseable": 1,
        "no_gold_answer": 2,
        "no_question": 1,
    }
    assert {r["id"].split(":")[0] for r in result.streams["stepwise"]} == {"gsm"}
    assert all(r.question == QUESTION for r in agent.requests)
    # the report counts them
    paths = StagePaths(tmp_path / "job-p" / "prm_labels")
    stats = {"busy_s": 1.5, **result.to_json()}
    JobRunner._write_shard(paths, 0, stage.streams, result, stats)
    write_json(paths.plan, {"planned_at": 0.0})
    stage.finish(paths, 1, [stats])
    report = read_json(paths.root / "report.json")
    assert report["problems"] == 5 and report["problems_labelled"] == 1
    assert report["skipped_by_reason"] == {
        "no_gold_answer": 2,
        "gold_unparseable": 1,
        "no_question": 1,
    }
    assert report["solutions"] == 4 and report["share_correct"] == 0.5
    assert report["steps_labelled"] == 12
    assert report["positive_rate_by_step"] == {"1": 1.0, "2": 0.5, "3": 0.5}
    assert report["rollouts_per_label"] == pytest.approx(16 / 12, abs=1e-4)
    assert report["busy_s"] == 1.5
    lines = (paths.root / "stepwise.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(x)["id"] for x in lines}) == 4


async def test_the_task_input_is_written_once_when_planned(tmp_path: Path) -> None:
    stage = make_stage(items=3, seed=2)
    planned = stage.planned_input(tmp_path, "job-p")
    again = stage.planned_input(tmp_path, "job-p")
    assert planned is not None and again == planned and planned.paths is not None
    text = Path(planned.paths[0]).read_text()  # noqa: ASYNC240
    rows = [json.loads(x) for x in text.splitlines()]
    assert len(rows) == 3 and all(r["answer"] for r in rows)
    assert stage.input_under_artifacts
    jsonl = spec(task=None, input={"paths": ["rows.jsonl"]})
    assert not build_stage(jsonl, job_stages(jsonl)[0]).input_under_artifacts  # type: ignore[attr-defined]


# -- checks at submit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"method": "monte_carlo_tree"}, "method"),
        ({"n_rollouts": 0}, "n_rollouts"),
        ({"n_solutions": 65}, "n_solutions"),
        ({"input": {"paths": ["x.jsonl"]}}, "task"),  # task and input
        ({"task": None}, "task"),  # neither
        ({"bogus": 1}, "bogus"),
    ],
)
def test_spec_errors_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec(**fields)
    assert field in str(info.value)


def store(limit: int = 8) -> JobStore:
    s = JobStore.__new__(JobStore)
    s.prm_limits = {"n_solutions": limit, "n_rollouts": limit}
    return s


def test_submit_refuses_bounds_over_the_settings_and_tasks_without_gold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store().check_prm_labels_spec(spec(n_rollouts=8, n_solutions=8, items=2))
    for field in ("n_rollouts", "n_solutions"):
        with pytest.raises(InvalidRequest) as info:
            store().check_prm_labels_spec(spec(**{field: 9}))
        assert info.value.field == field and "<= 8" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        store().check_prm_labels_spec(spec(task="no_such_task"))
    assert info.value.field == "task"

    class NoGold:
        def items(self, n: int, seed: int = 0) -> list[TaskItem]:
            return [TaskItem.model_validate(item(i, answer="unknown")) for i in range(n)]

    monkeypatch.setattr("shared.tasks.get_task", lambda name: NoGold())
    with pytest.raises(InvalidRequest, match="no gold answers") as info:
        store().check_prm_labels_spec(spec(task="nogold"))
    assert info.value.field == "task"
    store().check_prm_labels_spec(spec(task=None, input={"paths": ["x.jsonl"]}))  # no task
