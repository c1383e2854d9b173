"""What the search does about answers, on fake model services: demos chosen by answer kind,
candidates that repeat the trajectory, the forced answer step, the answer-kind check, and how
they show in the API and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.answering import (
    all_repeat,
    answer_fits,
    choose_few_shot,
    find_repeats,
    prefer_answer_kind,
    retry_temperature,
    step_key,
)
from gateway.app import create_app
from gateway.loop import reason, select
from gateway.settings import GatewaySettings
from gateway.testing import FakeModelService, fake_upstreams
from gateway.upstreams import Upstreams
from shared.answer_kinds import AnswerKind
from shared.errors import ServiceUnavailable
from shared.fewshot import DEMOS_BY_KIND
from shared.gateway_schemas import CandidateTrace, Finish, ReasonRequest, SelectRequest
from shared.schemas import Demo, ProposeRequest

pytestmark = pytest.mark.unit

NUMERIC = "Bruno has 5 boxes with 3 shells in each box. How many shells are there in all?"
YES_NO_DEMOS = list(DEMOS_BY_KIND[AnswerKind.boolean])


def req(**kw: Any) -> ReasonRequest:
    kw.setdefault("question", NUMERIC)
    return ReasonRequest.model_validate(kw)


def never_answers(req: ProposeRequest) -> list[str]:
    """An agent that keeps thinking, one new step each time, and writes "15" (then "16", "15",
    ...) when the step is forced to open with the answer prefix."""
    if req.step_prefix:
        return [str(15 + i % 2) for i in range(req.n)]
    return [f"thinking {len(req.steps)}.{i}" for i in range(req.n)]


# -- demos by answer kind ---------------------------------------------------------------------


def test_default_demos_follow_the_detected_or_requested_kind() -> None:
    numeric = choose_few_shot(NUMERIC, None, None)
    assert numeric.demos == list(DEMOS_BY_KIND[AnswerKind.number])
    assert (numeric.answer_kind, numeric.answer_kind_source, numeric.source) == (
        AnswerKind.number,
        "detected",
        "default",
    )
    assert numeric.demo_kind is AnswerKind.number
    assert numeric.answer_prefix == "The answer is:"
    assert numeric.warnings == []
    forced = choose_few_shot(NUMERIC, None, AnswerKind.boolean)
    assert forced.demos == YES_NO_DEMOS
    assert forced.answer_kind_source == "request"


def test_custom_demos_are_used_as_given_with_a_warning_when_their_kind_differs() -> None:
    fs = choose_few_shot(NUMERIC, YES_NO_DEMOS, None)
    assert fs.demos == YES_NO_DEMOS
    assert fs.source == "request"
    assert fs.demo_kind is AnswerKind.boolean
    (warning,) = fs.warnings
    assert "boolean" in warning and "number" in warning
    same = choose_few_shot(NUMERIC, [Demo(question="1+1?", steps=["The answer is: 2"])], None)
    assert same.warnings == []
    mixed = choose_few_shot(NUMERIC, [*DEMOS_BY_KIND[AnswerKind.number], *YES_NO_DEMOS], None)
    assert mixed.demo_kind is None
    assert len(mixed.warnings) == 1
    assert choose_few_shot(NUMERIC, [], None).demo_kind is None


async def test_numeric_questions_get_numeric_demos_in_agent_and_scorer() -> None:
    agent, scorer = FakeModelService("agent", proposals=never_answers), FakeModelService("scorer")
    res = await reason(req(max_steps=1), fake_upstreams(agent=agent, scorer=scorer))
    demos = list(DEMOS_BY_KIND[AnswerKind.number])
    assert all(p.few_shot == demos for p in agent.requests("propose"))
    context = scorer.requests("score")[0].context
    assert [m.content for m in context if m.role == "user"][:-1] == [d.question for d in demos]
    assert (res.answer_kind, res.answer_kind_source) == (AnswerKind.number, "detected")
    assert (res.few_shot_source, res.few_shot_kind) == ("default", AnswerKind.number)


async def test_answer_kind_in_the_request_picks_the_demos() -> None:
    agent = FakeModelService("agent", proposals=never_answers)
    res = await reason(req(max_steps=1, answer_kind="boolean"), fake_upstreams(agent=agent))
    assert agent.requests("propose")[0].few_shot == YES_NO_DEMOS
    assert (res.answer_kind, res.answer_kind_source) == (AnswerKind.boolean, "request")


async def test_custom_few_shot_of_another_kind_is_kept_and_warned_about() -> None:
    agent = FakeModelService("agent", proposals=never_answers)
    res = await reason(
        req(max_steps=1, few_shot=[d.model_dump() for d in YES_NO_DEMOS]),
        fake_upstreams(agent=agent),
    )
    assert agent.requests("propose")[0].few_shot == YES_NO_DEMOS
    assert res.few_shot_source == "request"
    assert res.few_shot_kind is AnswerKind.boolean
    assert any(w.startswith("few_shot:") for w in res.warnings)


async def test_select_uses_the_demos_of_the_answer_kind() -> None:
    scorer = FakeModelService("scorer")
    res = await select(
        SelectRequest(question="Is ice cold?", candidates=["Yes.", "No."], heuristic="likelihood"),
        fake_upstreams(scorer=scorer),
    )
    context = scorer.requests("score")[0].context
    assert context[1].content == YES_NO_DEMOS[0].question
    assert (res.answer_kind, res.few_shot_source) == (AnswerKind.boolean, "default")


# -- repeated steps -------------------------------------------------------------------------


def test_repeats_are_found_after_normalizing() -> None:
    assert step_key("  Add 3  and 4. ") == step_key("add 3 and 4") == "add 3 and 4"
    steps = ["Add 3 and 4.", "3 + 4 = 7."]
    assert find_repeats(["add 3 and 4", "3 + 4 = 7.", "new", ""], steps) == [0, 1, None, None]
    assert all_repeat(["3 + 4 = 7.", ""], [1, None])
    assert not all_repeat(["3 + 4 = 7.", "new"], [1, None])
    assert not all_repeat(["", " "], [None, None])
    assert retry_temperature(0.0) == 1.0
    assert retry_temperature(0.7) == pytest.approx(1.2)
    assert retry_temperature(1.9) == 2.0


async def test_a_candidate_repeating_a_step_is_dropped_before_scoring() -> None:
    agent = FakeModelService(
        "agent",
        proposals=(
            ("Count the shells.",),
            ("count the shells", "5 * 3 = 15.", "Count the shells.", "There are 15."),
        ),
    )
    scorer = FakeModelService("scorer", scores={"There are 15.": -0.5})
    res = await reason(req(max_steps=2, n_candidates=4), fake_upstreams(agent=agent, scorer=scorer))
    second = res.trace[1]
    assert [c.repeat_of for c in second.candidates] == [0, None, 0, None]
    assert second.repeats == 2
    assert second.step == "There are 15."
    assert [c.score for c in second.candidates] == [None, -1.0, None, -0.5]
    assert scorer.requests("score")[0].continuations == ["5 * 3 = 15.", "There are 15."]
    assert res.repeats == 2


async def test_when_every_candidate_repeats_the_agent_is_asked_once_more_hotter() -> None:
    def script(r: ProposeRequest) -> list[str]:
        if r.step_prefix:
            return ["15"] * r.n
        if not r.steps:
            return ["Count the shells."] * r.n
        return ["5 * 3 = 15."] * r.n if r.temperature > 1.0 else ["Count the shells."] * r.n

    agent = FakeModelService("agent", proposals=script)
    res = await reason(req(max_steps=2, seed=3), fake_upstreams(agent=agent))
    proposals = agent.requests("propose")
    assert [p.temperature for p in proposals[:3]] == [0.7, 0.7, pytest.approx(1.2)]
    assert proposals[2].seed != proposals[1].seed
    second = res.trace[1]
    assert second.retry_temperature == pytest.approx(1.2)
    assert len(second.candidates) == 6  # both proposals, in order
    assert second.repeats == 3
    assert second.step == "5 * 3 = 15."


async def test_when_the_retry_repeats_too_the_search_stops_then_answers() -> None:
    def script(r: ProposeRequest) -> list[str]:
        return ["15"] * r.n if r.step_prefix else ["Count the shells."] * r.n

    agent = FakeModelService("agent", proposals=script)
    res = await reason(req(max_steps=6), fake_upstreams(agent=agent))
    assert len(agent.requests("propose")) == 4  # step 0, step 1, its retry, the answer step
    assert res.steps == ["Count the shells.", "The answer is: 15"]
    assert res.finish is Finish.forced_answer
    assert res.repeats == 6
    assert any("repeated an earlier step" in w for w in res.warnings)


async def test_no_candidates_when_nothing_usable_and_no_answer_can_be_forced() -> None:
    empty = FakeModelService("agent", proposals=lambda r: [""] * r.n)
    res = await reason(req(max_steps=6), fake_upstreams(agent=empty))
    assert len(empty.requests("propose")) == 2  # step 0 and the answer step
    assert res.finish is Finish.no_candidates
    assert res.answer is None
    assert not res.finished


# -- the forced answer step -----------------------------------------------------------------


async def test_max_steps_without_an_answer_forces_the_answer_step() -> None:
    agent = FakeModelService("agent", proposals=never_answers)
    scorer = FakeModelService("scorer", scores={"The answer is: 15": -0.5})
    res = await reason(req(max_steps=3), fake_upstreams(agent=agent, scorer=scorer))
    assert res.answer == "15"
    assert res.finished
    assert res.finish is Finish.forced_answer
    assert len(res.steps) == 4
    forced = res.trace[-1]
    assert forced.forced_answer and not any(t.forced_answer for t in res.trace[:-1])
    assert forced.rationale is not None  # scored like any step
    last = agent.requests("propose")[-1]
    assert last.step_prefix == "The answer is:"
    assert last.steps == res.steps[:3]
    assert scorer.requests("score")[-1].continuations == ["The answer is: 15", "The answer is: 16"]
    assert forced.candidates[forced.chosen].score == -0.5


async def test_the_answer_step_opens_like_the_callers_demos() -> None:
    demos = [Demo(question="1+1?", steps=["1 + 1 = 2.", "So the final answer is: 2"])]
    agent = FakeModelService("agent", proposals=never_answers)
    res = await reason(
        req(max_steps=1, few_shot=[d.model_dump() for d in demos]), fake_upstreams(agent=agent)
    )
    assert agent.requests("propose")[-1].step_prefix == "So the final answer is:"
    assert res.answer == "15"


async def test_an_unreadable_forced_answer_leaves_the_run_at_max_steps() -> None:
    def script(r: ProposeRequest) -> list[str]:
        return [""] * r.n if r.step_prefix else [f"thinking {len(r.steps)}"] * r.n

    res = await reason(
        req(max_steps=2), fake_upstreams(agent=FakeModelService("agent", proposals=script))
    )
    assert res.finish is Finish.max_steps
    assert res.answer is None
    assert len(res.steps) == 2
    assert any("no readable answer" in w for w in res.warnings)


async def test_an_answer_step_is_not_forced_after_an_answer() -> None:
    agent = FakeModelService("agent", proposals=(("5 * 3 = 15.",), ("The answer is: 15",)))
    res = await reason(req(max_steps=5), fake_upstreams(agent=agent))
    assert res.finish is Finish.answer
    assert all(p.step_prefix is None for p in agent.requests("propose"))


async def test_the_deadline_forces_the_answer_step_within_the_grace() -> None:
    agent = FakeModelService("agent", proposals=never_answers, delay_s=0.15)
    res = await reason(req(max_steps=20, deadline_s=0.4), fake_upstreams(agent=agent))
    assert res.deadline_reached
    assert res.finish is Finish.forced_answer
    assert res.answer == "15"
    assert res.timings.total_ms < 2 * 400 + 200


async def test_a_stuck_answer_step_ends_at_the_grace_with_finish_deadline() -> None:
    scorer = FakeModelService("scorer", delay_s=3600)
    res = await asyncio.wait_for(
        reason(req(max_steps=3, deadline_s=0.2), fake_upstreams(scorer=scorer)), timeout=5
    )
    assert res.deadline_reached
    assert res.finish is Finish.deadline
    assert res.steps == []
    assert any("did not finish in time" in w for w in res.warnings)


async def test_a_failing_answer_step_keeps_the_steps_unless_strict() -> None:
    def agent() -> FakeModelService:
        return FakeModelService(
            "agent",
            proposals=never_answers,
            fail=ServiceUnavailable("agent down"),
            fail_from_call=2,
        )

    res = await reason(req(max_steps=2), fake_upstreams(agent=agent()))
    assert res.finish is Finish.max_steps
    assert len(res.steps) == 2
    assert any("answer step failed" in w for w in res.warnings)
    with pytest.raises(ServiceUnavailable):
        await reason(req(max_steps=2, strict=True), fake_upstreams(agent=agent()))


async def test_greedy_gets_a_forced_answer_too() -> None:
    agent = FakeModelService("agent", proposals=never_answers)
    res = await reason(req(max_steps=2, heuristic="greedy"), fake_upstreams(agent=agent))
    assert res.finish is Finish.forced_answer
    assert [(p.n, p.temperature) for p in agent.requests("propose")] == [(1, 0.0)] * 3


# -- the answer-kind check ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind", "fits"),
    [
        ("15", AnswerKind.number, True),
        ("15 shells", AnswerKind.number, True),
        ("fifteen", AnswerKind.number, True),
        ("no", AnswerKind.number, False),
        ("no", AnswerKind.boolean, True),
        ("12", AnswerKind.boolean, False),
        ("(B)", AnswerKind.choice, True),
        ("maybe", AnswerKind.choice, False),
        ("Paris", AnswerKind.text, True),
    ],
)
def test_answer_fits_its_kind(answer: str, kind: AnswerKind, fits: bool) -> None:
    assert answer_fits(answer, kind) is fits


def test_answer_fits_a_choice_by_the_options() -> None:
    assert answer_fits("a sparrow", AnswerKind.choice, ["a dog", "a sparrow"])
    assert not answer_fits("a cat", AnswerKind.choice, ["a dog", "a sparrow"])


def cands(*pairs: tuple[str, float | None], **kw: Any) -> list[CandidateTrace]:
    return [CandidateTrace(text=t, score=s, **kw) for t, s in pairs]


def test_prefer_answer_kind_takes_the_best_scored_answer_of_the_kind() -> None:
    c = cands(
        ("The answer is: no", -0.1),
        ("The answer is: 14", -0.9),
        ("5 * 3 = 15.", -0.2),
        ("The answer is: 15", -0.5),
    )
    assert prefer_answer_kind(c, 0, AnswerKind.number) == 3
    assert prefer_answer_kind(c, 3, AnswerKind.number) is None  # it fits
    assert prefer_answer_kind(c, 2, AnswerKind.number) is None  # no answer stated
    assert prefer_answer_kind(c[:1] + c[2:3], 0, AnswerKind.number) is None  # no alternative
    unscored = cands(("The answer is: no", None), ("The answer is: 7", None))
    assert prefer_answer_kind(unscored, 0, AnswerKind.number) == 1
    c[3].duplicate_of, c[1].repeat_of = 1, 0
    assert prefer_answer_kind(c, 0, AnswerKind.number) is None


async def test_a_numeric_question_prefers_a_numeric_answer_over_no() -> None:
    agent = FakeModelService(
        "agent", proposals=(("The answer is: no", "The answer is: 15", "5 * 3 = 15."),)
    )
    scorer = FakeModelService(
        "scorer", scores={"The answer is: no": -0.1, "The answer is: 15": -0.8}
    )
    res = await reason(req(max_steps=3), fake_upstreams(agent=agent, scorer=scorer))
    (step,) = res.trace
    assert step.chosen == 1
    assert res.answer == "15"
    assert res.finish is Finish.answer
    assert step.warnings and "'no'" in step.warnings[0]


async def test_a_wrong_kind_answer_without_alternative_is_kept_with_a_warning() -> None:
    agent = FakeModelService("agent", proposals=(("The answer is: no",),))
    res = await reason(req(max_steps=3), fake_upstreams(agent=agent))
    assert res.answer == "no"
    assert any("does not read as number" in w for w in res.warnings)


# -- the API and metrics --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def served(upstreams: Upstreams, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewaySettings(**settings), clients=upstreams)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/reason", {"question": NUMERIC, "answer_kind": "integer"}),
        ("/v1/select", {"question": NUMERIC, "candidates": ["a"], "answer_kind": "yes_no"}),
        (
            "/v1/chat/completions",
            {
                "model": "rationalyst",
                "messages": [{"role": "user", "content": NUMERIC}],
                "answer_kind": "digits",
            },
        ),
    ],
)
async def test_unknown_answer_kind_is_422_naming_the_field(path: str, body: dict[str, Any]) -> None:
    async with served(fake_upstreams()) as client:
        r = await client.post(path, json=body)
    openai = path == "/v1/chat/completions"  # OpenAI's status and error body there
    assert r.status_code == (400 if openai else 422), r.text
    assert r.json()["error"]["param" if openai else "field"] == "answer_kind"


async def test_chat_extra_body_answer_kind_reaches_the_search() -> None:
    agent = FakeModelService("agent", proposals=never_answers)
    async with served(fake_upstreams(agent=agent)) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "rationalyst",
                "messages": [{"role": "user", "content": NUMERIC}],
                "answer_kind": "boolean",
                "max_steps": 1,
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()["rationalyst"]
    assert (body["answer_kind"], body["answer_kind_source"]) == ("boolean", "request")
    assert agent.requests("propose")[0].few_shot == YES_NO_DEMOS


async def test_metrics_count_repeats_and_how_searches_finish() -> None:
    agent = FakeModelService(
        "agent",
        proposals=(
            ("Count the shells.",),
            ("count the shells", "5 * 3 = 15."),
            ("The answer is: 15",),
        ),
    )
    forcing = FakeModelService("agent", proposals=never_answers)
    async with served(fake_upstreams(agent=agent)) as client:
        r = await client.post("/v1/reason", json={"question": NUMERIC, "max_steps": 5})
        assert r.status_code == 200, r.text
        assert r.json()["finish"] == "answer"
        text = (await client.get("/metrics")).text
    assert "gateway_repeated_candidates_total 2.0" in text
    assert 'gateway_search_finish_total{finish="answer"} 1.0' in text
    async with served(fake_upstreams(agent=forcing)) as client:
        r = await client.post("/v1/reason", json={"question": NUMERIC, "max_steps": 1})
        assert r.json()["finish"] == "forced_answer"
        assert r.json()["trace"][-1]["forced_answer"] is True
        text = (await client.get("/metrics")).text
    assert 'gateway_search_finish_total{finish="forced_answer"} 1.0' in text


def test_finish_values() -> None:
    assert {f.value for f in Finish} == {
        "answer",
        "forced_answer",
        "max_steps",
        "cancelled",
        "deadline",
        "no_candidates",
        "budget",
    }
