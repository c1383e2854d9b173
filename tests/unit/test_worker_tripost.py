"""TriPosT collection: the loop and its filters, the samples and their rebalancing, and the
``tripost_collect`` stage on fake model services (httpx MockTransport)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

from services.worker.artifacts import StagePaths, iter_jsonl, read_json
from services.worker.inputs import InputError, RawRecord
from services.worker.runner import JobRunner
from services.worker.settings import WorkerSettings
from services.worker.stages import build_stage
from services.worker.stages.base import StageContext
from services.worker.stages.tripost import tripost_input
from services.worker.tripost import (
    Check,
    Trajectory,
    attempt_messages,
    collect_trajectory,
    gold_row,
    rebalance,
    sample_rows,
)
from shared.clients import ModelServiceClient
from shared.job_schemas import InputSpec, JobKind, JobSpec
from shared.schemas import Demo
from shared.tasks import AnswerKind, get_task
from shared.tasks.base import TaskItem
from shared.tripost import normalize, tripost_demo
from shared.verify import Verdict, scripted_verifier

pytestmark = pytest.mark.unit

TASK = "multistep_arithmetic_seen"
ITEMS = get_task(TASK).items(6, seed=0)
VERIFIER = scripted_verifier(TASK)
assert VERIFIER is not None


def gold(item: TaskItem) -> str:
    assert item.rationale is not None
    return "\n".join(item.rationale)


def wrong_at_step_2(item: TaskItem) -> str:
    """The gold rationale with step (2)'s result off by one."""
    lines = gold(item).splitlines()
    lines[1] = re.sub(r"= (-?\d+)\.$", lambda m: f"= {int(m[1]) + 1}.", lines[1])
    return "\n".join(lines)


def reordered_wrong(item: TaskItem) -> str:
    """Correct steps in another order than the gold ones (B before A), then an error."""
    lines = gold(item).splitlines()
    body = [line.split(") ", 1)[1] for line in lines[1:3]]
    second = re.sub(r"= (-?\d+)\.$", lambda m: f"= {int(m[1]) + 1}.", body[0])
    return "\n".join([lines[0], f"(2) {body[1]}", f"(3) {second}", *lines[3:]])


def scripted_check(item: TaskItem) -> Callable[[str], Any]:
    async def verify(answer: str) -> Check:
        assert VERIFIER is not None
        return Check(VERIFIER.verify(item.question, answer))

    return verify


def improver(fn: Callable[[str, Verdict], str | None]) -> Callable[[str, Verdict], Any]:
    async def improve(answer: str, verdict: Verdict) -> str | None:
        return fn(answer, verdict)

    return improve


async def run(
    item: TaskItem, text: str, fix: Callable[[str, Verdict], str | None], rounds: int = 5
) -> Trajectory:
    return await collect_trajectory(
        item.id, 0, text, scripted_check(item), improver(fix), max_rounds=rounds
    )


# -- the loop ---------------------------------------------------------------------------------


async def test_tripost_right_attempt_is_one_turn_and_a_non_improvement_sample() -> None:
    item = ITEMS[0]
    t = await run(item, "Let's think.\n" + gold(item) + "\nQ: next question", lambda a, v: None)
    assert t.kept and t.reason is None and len(t.turns) == 1
    assert t.turns[0].answer == gold(item)  # preamble and what follows the answer cut off
    (row,) = sample_rows(item, t)
    assert row["kind"] == "non_improvement"
    assert row["completion"] == (
        f"Answer: {gold(item)}\nFeedback: Step (1) to (4) are correct. "
        "The final response is also correct."
    )
    assert row["text"][row["feedback_start"] :].startswith("\nFeedback: Step (1)")


async def test_tripost_wrong_attempt_improved_by_the_gold_steps_from_the_error_on() -> None:
    from services.worker.tripost import splice_gold

    item = ITEMS[1]
    assert item.rationale is not None
    rationale = item.rationale
    t = await run(item, wrong_at_step_2(item), lambda a, v: splice_gold(a, v, rationale))
    assert t.kept and len(t.turns) == 2
    first, second = t.turns
    assert first.verdict.step == "2" and second.verdict.correct
    assert second.answer == gold(item)
    (row,) = sample_rows(item, t)
    assert row["kind"] == "improvement"
    assert row["completion"] == (
        f"Answer: {wrong_at_step_2(item)}\nFeedback: {first.verdict.feedback}\n"
        f"Updated Answer: {gold(item)}"
    )
    assert first.verdict.feedback.startswith('Step (1) is correct. In step (2) the part "')


@pytest.mark.parametrize(
    ("attempt", "fix", "reason"),
    [
        (lambda item: "I do not know.", lambda a, v: None, "unparseable"),
        (wrong_at_step_2, lambda a, v: None, "improver_failed"),
        (wrong_at_step_2, lambda a, v: "no steps here", "unparseable"),
        (wrong_at_step_2, lambda a, v: a, "unchanged_step"),
        # step (2) changed but still wrong: the first error does not move on
        (wrong_at_step_2, lambda a, v: a.replace(v.segment or "", "(1 + 1) = 3", 1), "no_progress"),
    ],
)
async def test_tripost_trajectories_are_dropped_with_their_reason(
    attempt: Callable[[TaskItem], str], fix: Callable[[str, Verdict], str | None], reason: str
) -> None:
    item = ITEMS[2]
    t = await run(item, attempt(item), fix)
    assert not t.kept and t.reason == reason
    # what could not be read is kept, to show why
    unread = {"I do not know.", "no steps here"}
    assert (t.unread in unread) if reason == "unparseable" else t.unread is None
    assert t.to_json()["unread"] == t.unread


async def test_tripost_still_wrong_after_the_last_round() -> None:
    item = ITEMS[3]
    lines = gold(item).splitlines()
    wrong = [*lines[:-1], "(Final response) So the answer is 123456."]

    def fix(answer: str, verdict: Verdict) -> str:
        # moves the error from step (2) to the final response, never fixing it
        return "\n".join(wrong)

    t = await run(item, wrong_at_step_2(item), fix, rounds=1)
    assert not t.kept and t.reason == "still_wrong" and len(t.turns) == 2


async def test_tripost_llm_verifier_missing_an_error_drops_the_trajectory() -> None:
    async def verify(answer: str) -> Check:
        return Check(Verdict.all_correct("4"), drop="verifier_missed_error")

    t = await collect_trajectory("i", 0, gold(ITEMS[0]), verify, improver(lambda a, v: None),
                                 max_rounds=5)  # fmt: skip
    assert t.reason == "verifier_missed_error"


# -- samples ----------------------------------------------------------------------------------


def test_tripost_gold_row_says_all_correct() -> None:
    row = gold_row(ITEMS[0])
    assert row is not None and row["kind"] == "gold"
    assert row["completion"].endswith("The final response is also correct.")
    assert row["prompt"] == f"Q: {ITEMS[0].question}\n"


def test_tripost_rebalance_keeps_the_ratio_of_the_scarcest_kind() -> None:
    rows = (
        [{"kind": "improvement", "i": i} for i in range(30)]
        + [{"kind": "non_improvement", "i": i} for i in range(10)]
        + [{"kind": "gold", "i": i} for i in range(50)]
    )
    ratios = {"improvement": 1.5, "non_improvement": 1.0, "gold": 1.0}
    chosen, counts = rebalance(rows, ratios, seed=1)
    assert counts == {"improvement": 15, "non_improvement": 10, "gold": 10}
    assert len(chosen) == 35
    assert chosen == rebalance(rows, ratios, seed=1)[0]  # seeded
    none_right = [r for r in rows if r["kind"] != "non_improvement"]
    _, counts = rebalance(none_right, ratios, seed=1)
    assert counts == {"improvement": 30, "non_improvement": 0, "gold": 20}
    _, counts = rebalance(rows, {**ratios, "gold": 0.0}, seed=1)
    assert counts["gold"] == 0


@pytest.mark.parametrize("task", ["multistep_arithmetic_seen", "word_sorting_seen"])
def test_tripost_demos_of_scripted_tasks_are_their_gold_rationales(task: str) -> None:
    t = get_task(task)
    verifier = scripted_verifier(task)
    assert verifier is not None
    for demo in t.demos(3):
        question, answer = tripost_demo(demo, t.kind)
        assert verifier.verify(question, answer).correct


def test_tripost_unnumbered_demo_steps_are_numbered() -> None:
    demo = Demo(question="q?", steps=["First this.", "Then that.", "The answer is: (B)"])
    _, answer = tripost_demo(demo, AnswerKind.choice)
    assert answer == "(1) First this.\n(2) Then that.\n(Final response) So the answer is (B)."
    messages = attempt_messages("Q2?", [("q?", answer)])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert normalize(answer) == answer


# -- the spec ---------------------------------------------------------------------------------


def spec(**fields: Any) -> Any:
    return TypeAdapter(JobSpec).validate_python({"kind": "tripost_collect", "task": TASK, **fields})


def test_tripost_spec_defaults_and_checks() -> None:
    s = spec()
    assert (s.items, s.attempts, s.max_rounds, s.improvement_ratio) == (100, 1, 5, 1.5)
    stage = build_stage(s, JobKind.tripost_collect)
    assert stage.verifier_kind.value == "scripted"  # type: ignore[attr-defined]
    llm = build_stage(spec(task="date_understanding"), JobKind.tripost_collect)
    assert llm.improver_kind.value == "llm"  # type: ignore[attr-defined]
    for bad, field in (
        ({"task": "date_understanding", "improver": "scripted"}, "improver"),
        ({"task": "date_understanding", "verifier": "scripted"}, "verifier"),
        ({"attempts": 6}, "attempts"),
        ({"bogus": 1}, "bogus"),
    ):
        with pytest.raises(ValidationError) as info:
            spec(**bad)
        assert field in str(info.value)


def test_tripost_input_writes_the_questions_once(tmp_path: Path) -> None:
    s = spec(items=4, seed=2)
    first = tripost_input(s, tmp_path, "job-t")
    text = Path(first.paths[0]).read_text()
    assert tripost_input(s, tmp_path, "job-t") == first
    assert Path(first.paths[0]).read_text() == text
    assert [json.loads(line)["id"] for line in text.splitlines()] == [
        i.id for i in get_task(TASK).items(4, seed=2)
    ]
    with pytest.raises(InputError, match="task"):
        tripost_input(spec(task="no_such_task", improver="llm"), tmp_path, "job-u")


# -- the stage on fake model services ---------------------------------------------------------


def reply(content: str) -> httpx.Response:
    choice = {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    return httpx.Response(200, json={"choices": [choice]})


def context(rt: Any, extras: dict[str, Any]) -> StageContext:
    async def check() -> None:
        return None

    return StageContext(
        job_id="job-t", stage_index=0, shard=0, runtime=rt,
        input=InputSpec(paths=["x"], id_field="id"), extras=extras, check_active=check,
    )  # fmt: skip


def service(name: str, handler: Callable[[dict[str, Any]], str]) -> ModelServiceClient:
    def respond(request: httpx.Request) -> httpx.Response:
        return reply(handler(json.loads(request.content)))

    return ModelServiceClient(name, "http://fake", transport=httpx.MockTransport(respond))


def question_of(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"]).removeprefix("Q: ")


async def scripted_result(tmp_path: Path) -> tuple[Any, Any, StagePaths]:
    by_question = {item.question: item for item in ITEMS}
    answers = {
        ITEMS[0].question: gold(ITEMS[0]),
        ITEMS[1].question: wrong_at_step_2(ITEMS[1]),
        ITEMS[2].question: reordered_wrong(ITEMS[2]),
        ITEMS[3].question: "gibberish",
    }
    seen: list[dict[str, Any]] = []

    def agent(body: dict[str, Any]) -> str:
        seen.append(body)
        q = question_of(body)
        return answers.get(q, gold(by_question[q]))

    s = spec(items=4)
    stage = build_stage(s, JobKind.tripost_collect)
    rt = SimpleNamespace(
        settings=WorkerSettings(request_concurrency=2), agent=service("agent", agent)
    )
    extras = await stage.prepare(rt)
    recs = [
        RawRecord(i, {**item.model_dump(), "source": "questions.jsonl"}, None)
        for i, item in enumerate(ITEMS[:4])
    ]
    result = await stage.process(recs, context(rt, extras))
    assert seen[0]["temperature"] == 0.7 and seen[0]["stop"] == ["\nQ:"]
    assert len(seen[0]["messages"]) == 2 + 2 * 3  # system, 3 demos, the question
    paths = StagePaths(tmp_path)
    paths.shards.mkdir(parents=True)
    stats = {"counts": dict(result.counts), **result.to_json()}
    JobRunner._write_shard(paths, 0, stage.streams, result, stats)
    return stage, result, paths


async def test_tripost_stage_collects_counts_and_rebalances(tmp_path: Path) -> None:
    stage, result, paths = await scripted_result(tmp_path)
    c = result.counts
    assert (c["in"], c["kept"], c["dropped"]) == (4, 2, 2)
    assert dict(result.drop_reasons) == {"improver_failed": 1, "unparseable": 1}
    kinds = [r["kind"] for r in result.streams["output"]]
    assert kinds.count("gold") == 4
    assert kinds.count("non_improvement") == 1 and kinds.count("improvement") == 1
    summary = stage.finish(paths, 1, [read_json(paths.shard_done(0))])
    report = read_json(paths.root / "report.json")
    assert report["trajectories"] == 4 and report["kept"] == 2
    assert report["right_at_once"] == 1 and report["improved"] == 1
    assert report["dropped"] == 2 and sum(report["dropped_by_reason"].values()) == 2
    assert report["samples_before"] == {"improvement": 1, "non_improvement": 1, "gold": 4}
    # 1 : 1 : 4 rebalanced to 1.5 : 1 : 1 as far as one improvement allows
    assert report["samples"] == {"improvement": 1, "non_improvement": 1, "gold": 1}
    assert summary["samples"] == report["samples"]
    output = list(iter_jsonl(paths.stream("output")))
    assert sorted(r["kind"] for r in output) == ["gold", "improvement", "non_improvement"]
    assert len(list(iter_jsonl(paths.root / "candidates.jsonl"))) == 6
    assert len(list(iter_jsonl(paths.stream("trajectories")))) == 4


async def test_tripost_stage_fails_when_every_trajectory_is_dropped(tmp_path: Path) -> None:
    s = spec(items=3)
    stage = build_stage(s, JobKind.tripost_collect)
    rt = SimpleNamespace(
        settings=WorkerSettings(request_concurrency=2), agent=service("agent", lambda b: "?")
    )
    extras = await stage.prepare(rt)
    recs = [
        RawRecord(i, {**item.model_dump(), "source": "questions.jsonl"}, None)
        for i, item in enumerate(ITEMS[:3])
    ]
    result = await stage.process(recs, context(rt, extras))
    paths = StagePaths(tmp_path)
    paths.shards.mkdir(parents=True)
    JobRunner._write_shard(paths, 0, stage.streams, result, {"counts": dict(result.counts)})
    with pytest.raises(InputError, match=r"every trajectory was dropped \(3: unparseable: 3\)"):
        stage.finish(paths, 1, [read_json(paths.shard_done(0))])
    report = read_json(paths.root / "report.json")
    assert report["dropped_by_reason"]["unparseable"] == 3 and report["kept"] == 0


async def test_tripost_stage_with_llm_verifier_and_llm_improver() -> None:
    item = ITEMS[1]
    lines = gold(item).splitlines()
    wrong = "\n".join(
        [*wrong_at_step_2(item).splitlines()[:-1], "(Final response) So the answer is 999."]
    )
    calls: list[str] = []

    def llm(body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        if system.startswith("You check"):
            calls.append("verify")
            return (
                'Earliest error step: (2)\nError segment: "wrong"\nError reason: It is off by one.'
            )
        calls.append("improve")
        assert "Feedback: Step (1) is correct. In step (2)" in body["messages"][-1]["content"]
        return "\n".join(["(1) restated, ignored", *lines[1:]])

    s = spec(items=1, verifier="llm", improver="llm")
    stage = build_stage(s, JobKind.tripost_collect)
    rt = SimpleNamespace(
        settings=WorkerSettings(request_concurrency=1),
        agent=service("agent", lambda b: wrong),
        scorer=service("scorer", llm),
    )
    result = await stage.process(
        [RawRecord(0, item.model_dump(), None)], context(rt, await stage.prepare(rt))
    )
    assert calls == ["verify", "improve"]  # the rewrite's answer is right: no second verdict
    (trajectory,) = result.streams["trajectories"]
    assert trajectory["kept"] and trajectory["improvements"] == 1
    assert trajectory["turns"][1]["answer"] == gold(item)  # step (1) kept from the attempt
    assert trajectory["turns"][0]["feedback"].endswith("This is because it is off by one.")
