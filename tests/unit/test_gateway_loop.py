"""The propose-score-select loop on fake model services: selection, dedup, stopping, each
heuristic's call pattern, degradation, deadlines, and /v1/select's ranking."""

from __future__ import annotations

import asyncio

import pytest

from gateway.loop import merge_duplicates, reason, select
from gateway.prompts import SCORING_SYSTEM_PROMPT
from gateway.testing import FakeModelService, fake_upstreams
from shared.errors import ServiceUnavailable, UpstreamTimeout
from shared.fewshot import DEFAULT_DEMOS
from shared.gateway_schemas import Finish, Heuristic, ReasonRequest, SelectRequest
from shared.schemas import ChatMessage, Demo, ScoreRequest

pytestmark = pytest.mark.unit

DOWN = ServiceUnavailable("scorer is unreachable at http://127.0.0.1:1: refused")


def req(**kw: object) -> ReasonRequest:
    kw.setdefault("question", "What is 2 + 3?")
    return ReasonRequest.model_validate(kw)


def agent_with(*steps: tuple[str, ...]) -> FakeModelService:
    return FakeModelService("agent", proposals=steps)


# -- selection ----------------------------------------------------------------------------


async def test_loop_keeps_the_argmax() -> None:
    agent = agent_with(("a", "b", "c"))
    scorer = FakeModelService("scorer", scores={"a": -1.0, "b": -0.2, "c": -3.0})
    res = await reason(req(max_steps=1), fake_upstreams(agent=agent, scorer=scorer))
    assert res.trace[0].chosen == 1
    assert res.steps[0] == "b"
    assert [c.score for c in res.trace[0].candidates] == [-1.0, -0.2, -3.0]


async def test_loop_ties_keep_the_first() -> None:
    scorer = FakeModelService("scorer", scores={"a": -1.0, "b": -0.5, "c": -0.5})
    res = await reason(
        req(max_steps=1), fake_upstreams(agent=agent_with(("a", "b", "c")), scorer=scorer)
    )
    assert res.trace[0].chosen == 1


async def test_loop_merges_duplicates_before_scoring() -> None:
    agent = agent_with(("x  y", "z", "x y\n"))
    scorer = FakeModelService("scorer", scores={"x  y": -2.0, "z": -1.0})
    res = await reason(req(max_steps=1), fake_upstreams(agent=agent, scorer=scorer))
    score_req = scorer.requests("score")[0]
    assert score_req.continuations == ["x  y", "z"]
    step = res.trace[0]
    assert step.duplicates == 1
    assert [c.duplicate_of for c in step.candidates] == [None, None, 0]
    assert step.candidates[2].score == step.candidates[0].score == -2.0
    assert step.chosen == 1


def test_merge_duplicates_normalizes_whitespace_and_skips_empties() -> None:
    distinct, dup = merge_duplicates(["a  b", "", "a b", " c ", "c"])
    assert distinct == [0, 3]
    assert dup == [None, None, 0, None, 3]


async def test_single_distinct_candidate_needs_no_scorer_call() -> None:
    scorer = FakeModelService("scorer")
    res = await reason(
        req(max_steps=1), fake_upstreams(agent=agent_with(("same", "same ")), scorer=scorer)
    )
    assert scorer.calls == []
    assert res.trace[0].chosen == 0
    assert res.trace[0].timings.score_ms is None


async def test_all_empty_candidates_end_the_run_with_a_warning() -> None:
    res = await reason(req(max_steps=5), fake_upstreams(agent=agent_with(("", "  "))))
    assert res.steps == []
    assert not res.finished
    assert any("no non-empty step" in w for w in res.warnings)


# -- stopping -----------------------------------------------------------------------------


async def test_loop_stops_on_the_step_that_states_the_answer() -> None:
    agent = agent_with(("2 + 3 = 5.",), ("The answer is: 5", "The answer is: 6"))
    scorer = FakeModelService("scorer", scores={"The answer is: 5": -0.1})
    res = await reason(req(max_steps=10), fake_upstreams(agent=agent, scorer=scorer))
    assert res.finished
    assert res.steps == ["2 + 3 = 5.", "The answer is: 5"]
    assert res.answer == "5"
    assert len(agent.requests("propose")) == 2  # no extra step after the answer


async def test_loop_stops_at_max_steps() -> None:
    agent = FakeModelService("agent", proposals=lambda r: [f"thinking {len(r.steps)}"] * r.n)
    res = await reason(req(max_steps=4), fake_upstreams(agent=agent))
    assert res.steps[:4] == [f"thinking {i}" for i in range(4)]
    assert [p.step_prefix for p in agent.requests("propose")] == [None] * 4 + ["The answer is:"]


async def test_boxed_answer_stops_too() -> None:
    res = await reason(req(max_steps=5), fake_upstreams(agent=agent_with(("so \\boxed{5}",))))
    assert res.finished
    assert res.answer == "5"


# -- heuristics' call patterns --------------------------------------------------------------


async def test_rationalyst_scores_all_candidates_in_one_call_with_the_rationale() -> None:
    rationalyst = FakeModelService(
        "rationalyst", rationale_text=lambda r: f"rationale after {len(r.steps)}"
    )
    agent = agent_with(("s1", "s1b", "s1c"), ("s2", "s2b", "s2c"))
    scorer = FakeModelService("scorer")
    ups = fake_upstreams(rationalyst=rationalyst, agent=agent, scorer=scorer)
    res = await reason(req(max_steps=2), ups)
    assert res.heuristic_used is Heuristic.rationalyst
    assert res.finish is Finish.forced_answer  # the third step is the answer step
    assert len(rationalyst.requests("rationale")) == 3
    assert [p.n for p in agent.requests("propose")] == [3, 3, 3]
    assert all(p.rationale is None for p in agent.requests("propose"))
    scores = scorer.requests("score")
    assert len(scores) == 3
    second: ScoreRequest = scores[1]
    assert second.continuations == ["s2", "s2b", "s2c"]
    assert isinstance(second.context, list)
    expected = [ChatMessage(role="system", content=SCORING_SYSTEM_PROMPT)]
    for demo in DEFAULT_DEMOS:
        expected.append(ChatMessage(role="user", content=demo.question))
        expected += [ChatMessage(role="assistant", content=s) for s in demo.steps]
    expected += [
        ChatMessage(role="user", content="What is 2 + 3?"),
        ChatMessage(role="assistant", content="s1"),
        ChatMessage(role="assistant", content="Rationale: rationale after 1"),
    ]
    assert second.context == expected
    assert res.trace[1].rationale == "rationale after 1"
    assert res.usage.rationalyst.calls == 3
    assert res.usage.agent.calls == 3
    assert res.usage.scorer.calls == 3


def prompt_words(*texts: str | None) -> int:
    """The fake services' prompt count: the words of what the prompt is built from."""
    return sum(len((t or "").split()) for t in texts)


async def test_usage_counts_the_prompts_of_every_service_by_phase() -> None:
    rationalyst = FakeModelService("rationalyst")
    agent = agent_with(("s1 is here", "s1b"), ("s2", "s2b"))
    scorer = FakeModelService("scorer")
    ups = fake_upstreams(rationalyst=rationalyst, agent=agent, scorer=scorer)
    res = await reason(req(max_steps=2, n_candidates=2), ups)
    assert res.finish is Finish.forced_answer  # phases rationale, propose, score and answer
    rationales = [prompt_words(r.question, *r.steps) for r in rationalyst.requests("rationale")]
    proposals = [prompt_words(p.question, *p.steps, p.rationale) for p in agent.requests("propose")]
    u = res.usage
    # each call's prompt once, whatever its n: the service counts a shared prompt once
    assert u.rationalyst.prompt_tokens == sum(rationales) > 0
    assert u.agent.prompt_tokens == sum(proposals) > 0
    # the forced answer step's calls (rationale, proposals, scoring) are the answer phase
    assert u.phases["rationale"].prompt_tokens == sum(rationales[:-1])
    assert u.phases["propose"].prompt_tokens == sum(proposals[:-1])
    answer_scored = 100 + len(scorer.requests("score")[-1].continuations)  # the fake's count
    assert u.phases["answer"].prompt_tokens == rationales[-1] + proposals[-1] + answer_scored
    services = (u.rationalyst, u.agent, u.scorer)
    assert sum(p.prompt_tokens or 0 for p in u.phases.values()) == sum(
        x.prompt_tokens or 0 for x in services
    )
    # the budget keeps its meaning: generated + scored, not the generators' prompts
    generated = sum(x.completion_tokens or 0 for x in (u.rationalyst, u.agent, u.scorer, u.reward))
    assert u.budget_tokens == generated + (u.scorer.prompt_tokens or 0)


async def test_select_counts_the_rationalysts_prompt() -> None:
    rationalyst = FakeModelService("rationalyst")
    request = SelectRequest(question="What is 2 + 3?", steps=["2 + 3"], candidates=["= 5", "= 6"])
    res = await select(request, fake_upstreams(rationalyst=rationalyst))
    assert res.usage.rationalyst.prompt_tokens == prompt_words("What is 2 + 3?", "2 + 3")
    assert res.usage.agent.prompt_tokens is None  # not called


async def test_rationale_and_proposals_run_concurrently() -> None:
    ups = fake_upstreams(
        rationalyst=FakeModelService("rationalyst", delay_s=0.2),
        agent=FakeModelService("agent", delay_s=0.2),
    )
    res = await reason(req(max_steps=1), ups)
    t = res.trace[0].timings
    assert t.rationale_ms is not None and t.propose_ms is not None
    assert t.model_ms < t.rationale_ms + t.propose_ms


async def test_explicit_puts_the_rationale_into_the_agent_prompt() -> None:
    rationalyst = FakeModelService("rationalyst", rationale_text="add them")
    agent = agent_with(("a", "b"))
    scorer = FakeModelService("scorer", scores={"b": 0.0})
    ups = fake_upstreams(rationalyst=rationalyst, agent=agent, scorer=scorer)
    res = await reason(req(max_steps=1, heuristic="rationalyst_explicit", n_candidates=2), ups)
    prop = agent.requests("propose")[0]
    assert prop.rationale == "add them"
    score_req = scorer.requests("score")[0]
    assert isinstance(score_req.context, list)
    assert not any(m.content.startswith("Rationale: ") for m in score_req.context)
    assert res.trace[0].chosen == 1
    assert res.trace[0].rationale == "add them"


async def test_likelihood_scores_without_rationale() -> None:
    rationalyst, scorer = FakeModelService("rationalyst"), FakeModelService("scorer")
    res = await reason(
        req(max_steps=2, heuristic="likelihood"),
        fake_upstreams(rationalyst=rationalyst, scorer=scorer),
    )
    assert rationalyst.calls == []
    assert len(scorer.requests("score")) == 3  # two steps and the answer step
    ctx = scorer.requests("score")[0].context
    assert ctx[-1] == ChatMessage(role="user", content="What is 2 + 3?")
    assert res.trace[0].rationale is None


async def test_random_is_seeded_and_never_scores() -> None:
    agent = agent_with(tuple(f"c{i}" for i in range(8)))

    async def run(seed: int) -> list[int]:
        scorer = FakeModelService("scorer")
        res = await reason(
            req(max_steps=6, heuristic="random", n_candidates=8, seed=seed),
            fake_upstreams(agent=agent, scorer=scorer),
        )
        assert scorer.calls == []
        assert all(c.score is None for s in res.trace for c in s.candidates)
        assert res.seed == seed
        return [s.chosen for s in res.trace]

    first = await run(7)
    assert first == await run(7)
    assert len(set(first)) > 1
    assert first != await run(8)


async def test_greedy_proposes_one_candidate_at_temperature_zero() -> None:
    rationalyst, agent, scorer = (
        FakeModelService("rationalyst"),
        FakeModelService("agent", proposals=lambda r: [f"only {len(r.steps)}"] * r.n),
        FakeModelService("scorer"),
    )
    res = await reason(
        req(max_steps=2, heuristic="greedy", n_candidates=5),
        fake_upstreams(rationalyst=rationalyst, agent=agent, scorer=scorer),
    )
    assert [(p.n, p.temperature) for p in agent.requests("propose")] == [(1, 0.0)] * 3
    assert rationalyst.calls == [] and scorer.calls == []
    assert len(res.trace[0].candidates) == 1
    assert any("n_candidates ignored" in w for w in res.warnings)


async def test_seed_makes_proposals_reproducible_per_step() -> None:
    agent = FakeModelService("agent", proposals=lambda r: [f"{c}{len(r.steps)}" for c in "ab"])
    await reason(req(max_steps=3, seed=40), fake_upstreams(agent=agent))
    assert [p.seed for p in agent.requests("propose")] == [40, 41, 42, 43]


async def test_custom_few_shot_and_decay_reach_the_services() -> None:
    demos = [Demo(question="1+1?", steps=["The answer is: 2"])]
    agent, scorer = agent_with(("a", "b")), FakeModelService("scorer")
    await reason(
        req(max_steps=1, heuristic="likelihood", few_shot=[d.model_dump() for d in demos],
            decay=0.9),
        fake_upstreams(agent=agent, scorer=scorer),
    )  # fmt: skip
    assert agent.requests("propose")[0].few_shot == demos
    score_req = scorer.requests("score")[0]
    assert score_req.decay == 0.9
    assert score_req.context[1] == ChatMessage(role="user", content="1+1?")


# -- degradation --------------------------------------------------------------------------


async def test_rationalyst_down_continues_as_likelihood() -> None:
    rationalyst = FakeModelService(
        "rationalyst", fail=ServiceUnavailable("rationalyst is unreachable")
    )
    scorer = FakeModelService("scorer")
    res = await reason(req(max_steps=3), fake_upstreams(rationalyst=rationalyst, scorer=scorer))
    assert len(res.steps) == 4  # three steps and the answer step
    assert res.heuristic_requested is Heuristic.rationalyst
    assert res.heuristic_used is Heuristic.likelihood
    assert [f.service for f in res.fallbacks] == ["rationalyst"]
    assert res.fallbacks[0].to_heuristic is Heuristic.likelihood
    assert any("rationalyst unavailable" in w for w in res.warnings)
    assert len(rationalyst.calls) == 1  # not retried on later steps
    assert len(scorer.requests("score")) == 3  # the third step has one new candidate left
    assert all(not m.content.startswith("Rationale") for m in scorer.requests("score")[0].context)
    assert [s.heuristic for s in res.trace] == [Heuristic.likelihood] * 4


async def test_scorer_down_continues_as_random() -> None:
    scorer = FakeModelService("scorer", fail=DOWN, fail_from_call=1)
    res = await reason(req(max_steps=3, seed=1), fake_upstreams(scorer=scorer))
    assert len(res.steps) == 4  # three steps and the answer step
    assert res.heuristic_used is Heuristic.random
    assert [s.heuristic for s in res.trace] == [
        Heuristic.rationalyst,
        Heuristic.random,
        Heuristic.random,
        Heuristic.random,
    ]
    assert res.fallbacks[0].service == "scorer" and res.fallbacks[0].step == 1
    assert any("scorer unavailable" in w for w in res.warnings)
    assert len(scorer.calls) == 2


@pytest.mark.parametrize("service", ["rationalyst", "scorer"])
async def test_slow_service_is_a_timeout_not_a_change_of_method(service: str) -> None:
    # A service that does not answer in time is busy, not down: the request fails with 504
    # rather than silently continuing with a weaker heuristic.
    slow = FakeModelService(service, fail=UpstreamTimeout(f"{service} did not answer"))
    with pytest.raises(UpstreamTimeout, match=service):
        await reason(req(max_steps=1), fake_upstreams(**{service: slow}))


@pytest.mark.parametrize("service", ["rationalyst", "scorer"])
async def test_strict_mode_raises_instead_of_degrading(service: str) -> None:
    failing = FakeModelService(service, fail=ServiceUnavailable(f"{service} is unreachable"))
    with pytest.raises(ServiceUnavailable, match=service):
        await reason(req(max_steps=2, strict=True), fake_upstreams(**{service: failing}))


async def test_strict_timeout_is_a_timeout() -> None:
    scorer = FakeModelService("scorer", fail=UpstreamTimeout("scorer did not answer"))
    with pytest.raises(UpstreamTimeout):
        await reason(req(max_steps=1, strict=True), fake_upstreams(scorer=scorer))


async def test_agent_down_always_raises() -> None:
    agent = FakeModelService("agent", fail=ServiceUnavailable("agent is unreachable"))
    with pytest.raises(ServiceUnavailable, match="agent"):
        await reason(req(max_steps=2), fake_upstreams(agent=agent))


async def test_unparsable_upstream_answer_counts_as_down() -> None:
    class Broken(FakeModelService):
        async def score(self, req: ScoreRequest):  # type: ignore[override]
            raise ValueError("1 validation error for ScoreResponse")

    res = await reason(req(max_steps=1), fake_upstreams(scorer=Broken("scorer")))
    assert res.heuristic_used is Heuristic.random


# -- deadline -----------------------------------------------------------------------------


async def test_deadline_returns_best_so_far() -> None:
    agent = FakeModelService("agent", delay_s=0.15)
    res = await reason(req(max_steps=20, deadline_s=0.5), fake_upstreams(agent=agent))
    assert res.deadline_reached
    assert 1 <= len(res.steps) < 20
    assert len(res.trace) == len(res.steps)
    assert any("deadline" in w for w in res.warnings)


async def test_deadline_never_hangs_on_a_stuck_service() -> None:
    scorer = FakeModelService("scorer", delay_s=3600)
    res = await asyncio.wait_for(
        reason(req(max_steps=3, deadline_s=0.2), fake_upstreams(scorer=scorer)), timeout=5
    )
    assert res.deadline_reached
    assert res.steps == []


async def test_server_cap_applies_without_a_request_deadline() -> None:
    scorer = FakeModelService("scorer", delay_s=3600)
    res = await reason(req(max_steps=3), fake_upstreams(scorer=scorer), max_deadline_s=0.2)
    assert res.deadline_reached


# -- /v1/select -----------------------------------------------------------------------------


def sel(**kw: object) -> SelectRequest:
    kw.setdefault("question", "What is 2 + 3?")
    kw.setdefault("steps", ["2 + 3 = 5."])
    kw.setdefault("candidates", ["The answer is: 6", "The answer is: 5"])
    return SelectRequest.model_validate(kw)


async def test_select_ranks_given_candidates_with_the_rationale() -> None:
    scorer = FakeModelService("scorer", scores={"The answer is: 5": -0.1})
    rationalyst = FakeModelService("rationalyst", rationale_text="state the sum")
    res = await select(sel(), fake_upstreams(rationalyst=rationalyst, scorer=scorer))
    assert res.chosen == 1
    assert res.chosen_text == "The answer is: 5"
    assert res.scores == [-1.0, -0.1]
    assert res.rationale == "state the sum"
    (score_req,) = scorer.requests("score")
    assert score_req.context[-1].content == "Rationale: state the sum"


async def test_select_uses_a_given_rationale_without_calling_the_rationalyst() -> None:
    rationalyst = FakeModelService("rationalyst")
    res = await select(sel(rationale="mine"), fake_upstreams(rationalyst=rationalyst))
    assert rationalyst.calls == []
    assert res.rationale == "mine"


async def test_select_scores_a_lone_candidate() -> None:
    res = await select(sel(candidates=["only"], heuristic="likelihood"), fake_upstreams())
    assert res.scores == [-1.0]
    assert res.chosen == 0


async def test_select_explicit_is_treated_as_rationalyst() -> None:
    res = await select(sel(heuristic="rationalyst_explicit"), fake_upstreams())
    assert res.heuristic_used is Heuristic.rationalyst
    assert res.warnings


async def test_select_random_is_seeded() -> None:
    cands = [f"c{i}" for i in range(10)]
    a = await select(sel(candidates=cands, heuristic="random", seed=3), fake_upstreams())
    b = await select(sel(candidates=cands, heuristic="random", seed=3), fake_upstreams())
    assert a.chosen == b.chosen
    assert a.scores == [None] * 10


async def test_select_scorer_down_falls_back_or_raises_in_strict() -> None:
    ups = fake_upstreams(scorer=FakeModelService("scorer", fail=DOWN))
    res = await select(sel(), ups)
    assert res.heuristic_used is Heuristic.random
    with pytest.raises(ServiceUnavailable):
        await select(sel(strict=True), ups)


def test_select_rejects_greedy() -> None:
    with pytest.raises(ValueError, match="does not rank"):
        sel(heuristic="greedy")
