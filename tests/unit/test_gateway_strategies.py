"""Search strategies on fake model services: the tree of `step`, beam search's pool, ties,
finished beams, batching and degradation, budgets and request validation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.loop import ServiceCounter
from gateway.scoring import RewardSolutionScorer
from gateway.search import build_search, run_to_end
from gateway.testing import FakeModelService, fake_upstreams
from shared.errors import InvalidRequest, ServiceUnavailable
from shared.gateway_schemas import (
    Aggregation,
    Finish,
    Heuristic,
    ReasonRequest,
    ReasonResponse,
    Strategy,
)
from shared.schemas import ProposeRequest, ScoreRequest, TokenLogprob

pytestmark = pytest.mark.unit


def req(**kw: object) -> ReasonRequest:
    kw.setdefault("question", "What is 2 + 3?")
    kw.setdefault("seed", 1)
    return ReasonRequest.model_validate(kw)


async def run(request: ReasonRequest, **services: FakeModelService) -> ReasonResponse:
    return await run_to_end(build_search(request, fake_upstreams(**services)))  # type: ignore[arg-type]


def tree_agent(
    first: Sequence[str], then: dict[str, Sequence[str]], answer: str = "5"
) -> FakeModelService:
    """Depth 0 proposes ``first`` (the first n); a path whose last step is k proposes
    then[k]; the forced answer step states ``answer``."""

    def propose(r: ProposeRequest) -> list[str]:
        if r.step_prefix:
            return [answer] * r.n
        texts = list(first) if not r.steps else list(then.get(r.steps[-1], ["stuck"]))
        return [texts[i % len(texts)] for i in range(r.n)]

    return FakeModelService("agent", proposals=propose)


def by_text(res: ReasonResponse) -> dict[str, str]:
    return {n.text: n.status for n in res.tree}


# -- the tree of `step` --------------------------------------------------------------------


async def test_step_tree_is_the_path_plus_pruned_candidates() -> None:
    agent = FakeModelService("agent", proposals=(("a", "b"), ("c", "The answer is: 5")))
    scorer = FakeModelService("scorer", scores={"a": -2.0, "b": -1.0, "The answer is: 5": 0.0})
    res = await run(req(heuristic="likelihood", n_candidates=2), agent=agent, scorer=scorer)
    assert res.steps == ["b", "The answer is: 5"]
    assert len(res.trace) == 2  # today's trace is kept as it is
    assert [(n.id, n.parent, n.depth, n.text, n.status) for n in res.tree] == [
        ("n0", None, 0, "a", "pruned"),
        ("n1", None, 0, "b", "chosen"),
        ("n2", "n1", 1, "c", "pruned"),
        ("n3", "n1", 1, "The answer is: 5", "chosen"),
    ]
    assert res.tree[1].score == -1.0 and res.tree[3].answer == "5"
    assert res.tree[2].answer is None and res.tree[0].rationale is None


# -- beam ----------------------------------------------------------------------------------

SCORES = {"a": -1.0, "b": -0.5, "a1": -0.1, "a2": -3.0, "b1": -2.0, "b2": -0.5}


async def test_beam_keeps_exactly_the_top_n_of_the_pool_in_one_scorer_call() -> None:
    agent = tree_agent(["a", "b", "c"], {"a": ["a1", "a2"], "b": ["b1", "b2"]})
    scorer = FakeModelService("scorer", scores=SCORES)
    res = await run(
        req(strategy="beam", n_beams=2, beam_width=2, max_steps=2, heuristic="likelihood"),
        agent=agent,
        scorer=scorer,
    )
    # depth 0: the empty path proposes n_beams; depth 1: each beam proposes beam_width.
    assert [len(r.steps) for r in agent.requests("propose")][:3] == [0, 1, 1]
    # Pool means: a1 -0.55, a2 -2.0, b1 -1.25, b2 -0.5: the top two are kept.
    status = by_text(res)
    assert {t for t, s in status.items() if s == "pruned"} == {"a2", "b1"}
    depth1 = [n for n in res.tree if n.depth == 1]
    assert sum(n.status != "pruned" for n in depth1) == 2
    assert next(n for n in depth1 if n.text == "a1").aggregate == pytest.approx(-0.55)
    # One scorer call per search step, the candidates of both beams together.
    search_calls = scorer.requests("score")[:2]
    assert [sorted(r.continuations) for r in search_calls] == [
        ["a", "b"],
        ["a1", "a2", "b1", "b2"],
    ]
    assert search_calls[1].contexts is not None and search_calls[1].context_index is not None
    assert len(set(search_calls[1].context_index)) == 2
    # No beam finished: the best (b -> b2) got the forced answer step and is the answer.
    assert res.steps[:2] == ["b", "b2"] and res.answer == "5"
    assert res.finish is Finish.forced_answer and res.strategy is Strategy.beam
    chosen = [n for n in res.tree if n.status == "chosen"]
    assert [n.text for n in chosen] == res.steps
    assert [n.parent for n in chosen] == [None, chosen[0].id, chosen[1].id]


async def test_beam_ties_are_broken_by_pool_order_deterministically() -> None:
    def make() -> tuple[FakeModelService, FakeModelService]:
        agent = tree_agent(["a", "b"], {"a": ["a1", "a2"], "b": ["b1", "b2"]})
        return agent, FakeModelService("scorer", default_score=-1.0)

    results = []
    for _ in range(2):
        agent, scorer = make()
        res = await run(
            req(strategy="beam", n_beams=2, beam_width=2, max_steps=2, heuristic="likelihood"),
            agent=agent,
            scorer=scorer,
        )
        results.append([(n.id, n.text, n.status) for n in res.tree])
    assert results[0] == results[1]
    status = {t: s for _, t, s in results[0]}
    assert status["b1"] == status["b2"] == "pruned"  # the earlier beam's candidates win
    assert status["a1"] == "chosen" and status["a2"] == "kept"


async def test_finished_beams_are_set_aside_and_the_best_one_answers() -> None:
    agent = tree_agent(
        ["a", "b"],
        {"a": ["The answer is: 1", "a1"], "b": ["The answer is: 2", "b1"], "a1": ["x"]},
    )
    scores = {"a": -1.0, "b": -1.0, "The answer is: 1": -0.2, "The answer is: 2": -0.1}
    scorer = FakeModelService("scorer", scores={**scores, "a1": -3.0, "b1": -0.3})
    res = await run(
        req(strategy="beam", n_beams=2, beam_width=2, max_steps=4, heuristic="likelihood"),
        agent=agent,
        scorer=scorer,
    )
    # Both answers are in the top 2 of the pool: both finished, no beam left live.
    assert res.answer == "2" and res.finish is Finish.answer and res.finished
    status = by_text(res)
    assert status["The answer is: 2"] == "chosen" and status["The answer is: 1"] == "finished"
    assert status["a1"] == status["b1"] == "pruned"
    assert len(scorer.requests("score")) == 2  # it stopped: every slot is finished


async def test_a_finished_beam_frees_its_slot_for_the_rest() -> None:
    agent = tree_agent(
        ["a", "b"],
        {"a": ["The answer is: 1", "a1"], "b": ["b1", "b2"], "b1": ["The answer is: 3"]},
    )
    scores = {"a": -1.0, "b": -1.0, "The answer is: 1": -0.1, "b1": -0.2, "b2": -5.0}
    scorer = FakeModelService("scorer", scores={**scores, "a1": -4.0, "The answer is: 3": -0.1})
    res = await run(
        req(strategy="beam", n_beams=2, beam_width=2, max_steps=4, heuristic="likelihood"),
        agent=agent,
        scorer=scorer,
    )
    # Step 1 keeps "answer 1" (finished) and b1 (live); step 2 has one slot for b1's
    # candidate, which finishes with path mean (-1 - 0.2 - 0.1) / 3 = -0.43 > -0.55.
    assert res.answer == "3"
    assert by_text(res)["The answer is: 1"] == "finished"


async def test_beam_asks_one_rationale_per_distinct_prefix() -> None:
    agent = tree_agent(["a", "b"], {"a": ["a1", "a2"], "b": ["b1", "b2"]})
    rationalyst = FakeModelService("rationalyst")
    res = await run(
        req(strategy="beam", n_beams=2, beam_width=2, max_steps=2),
        agent=agent,
        rationalyst=rationalyst,
    )
    prefixes = [tuple(r.steps) for r in rationalyst.requests("rationale")]
    assert prefixes[:3] == [(), ("a",), ("b",)] or prefixes[:3] == [(), ("b",), ("a",)]
    assert len(set(prefixes)) == len(prefixes)
    assert all(n.rationale == "think about the next step" for n in res.tree)


async def test_beam_scorer_down_mid_search_degrades_and_the_tree_shows_where() -> None:
    agent = tree_agent(["a", "b"], {"a": ["a1", "a2"], "b": ["b1", "b2"]})
    scorer = FakeModelService("scorer", fail=ServiceUnavailable("scorer: gone"), fail_from_call=1)
    res = await run(
        req(strategy="beam", n_beams=2, beam_width=2, max_steps=2, heuristic="likelihood"),
        agent=agent,
        scorer=scorer,
    )
    assert [(f.step, f.service, f.to_heuristic.value) for f in res.fallbacks] == [
        (1, "scorer", "random")
    ]
    depth1 = [n for n in res.tree if n.depth == 1]
    assert any("scorer unavailable" in w for w in depth1[0].warnings)
    assert all(n.score is None for n in depth1)
    assert sum(n.status != "pruned" for n in depth1) == 2


async def test_beam_stops_at_its_budget_with_the_best_so_far() -> None:
    agent = tree_agent(["a", "b"], {"a": ["a1", "a2"], "b": ["b1", "b2"], "a1": ["x", "y"]})
    scorer = FakeModelService("scorer", scores=SCORES)
    res = await run(
        req(
            strategy="beam",
            n_beams=2,
            beam_width=2,
            max_steps=5,
            heuristic="likelihood",
            max_step_tokens=8,
            max_tokens_budget=250,
        ),
        agent=agent,
        scorer=scorer,
    )
    # Each step costs ~100 scored tokens (the fake's prompt) plus a few generated ones.
    assert res.budget_reached and res.finish is Finish.budget
    assert res.usage.budget_tokens <= 250
    assert res.steps == ["b", "b2"]
    assert res.usage.phases["score"].calls == 2 and "answer" not in res.usage.phases


def by_context(r: ScoreRequest) -> list[float]:
    """A score per continuation that depends on its context: -1 after the first, -2 after
    the second, ..."""
    return [-1.0 - i for i in r.context_index or [0] * len(r.continuations)]


@pytest.mark.parametrize("trace_tokens", [False, True])
async def test_beam_trace_tokens_colour_each_node_by_its_own_scoring(trace_tokens: bool) -> None:
    # Both beams propose "x": the same text after two prefixes, scored differently; the
    # forced answer step has two answers to score.
    then = {"a": ["x", "a2"], "b": ["x", "b2"]}

    def propose(r: ProposeRequest) -> list[str]:
        if r.step_prefix:
            return ["5", "6"]
        return ["a", "b"] if not r.steps else then.get(r.steps[-1], ["stuck", "stuck"])

    agent = FakeModelService("agent", proposals=propose)
    scorer = FakeModelService("scorer", scores=by_context)
    res = await run(
        req(
            strategy="beam",
            n_beams=2,
            beam_width=2,
            max_steps=2,
            heuristic="likelihood",
            trace_tokens=trace_tokens,
        ),
        agent=agent,
        scorer=scorer,
    )
    assert all(r.return_tokens is trace_tokens for r in scorer.requests("score"))
    xs = [n for n in res.tree if n.text == "x"]
    assert len(xs) == 2 and xs[0].score != xs[1].score
    scored = [n for n in res.tree if n.score is not None]
    assert len(scored) == len(res.tree) == 8  # 2 + 4 in the search, the forced answer's 2
    for n in scored:  # the fake scores a continuation as one token: its text at its score
        want = [TokenLogprob(token=n.text, logprob=n.score)] if trace_tokens else None
        assert n.tokens == want, n


async def test_best_of_n_trace_tokens_colour_each_step_node() -> None:
    agent = FakeModelService("agent", solutions=SOLUTIONS)
    scorer = FakeModelService("scorer", scores=STEP_SCORES)
    res = await run(
        req(strategy="best_of_n", n=4, heuristic="likelihood", trace_tokens=True),
        agent=agent,
        scorer=scorer,
    )
    assert res.tree and all(n.score is not None for n in res.tree)
    assert all(n.tokens == [TokenLogprob(token=n.text, logprob=n.score)] for n in res.tree)


# -- budgets and validation ----------------------------------------------------------------


async def test_step_budget_stop_and_usage_per_phase() -> None:
    agent = FakeModelService("agent", proposals=(("a", "b"), ("c", "d"), ("e", "f")))
    res = await run(
        req(heuristic="likelihood", n_candidates=2, max_step_tokens=4, max_tokens_budget=150),
        agent=agent,
    )
    assert res.budget_reached and res.finish is Finish.budget and len(res.steps) == 1
    u = res.usage
    assert u.budget_tokens == (u.agent.completion_tokens or 0) + (u.scorer.prompt_tokens or 0)
    assert (u.agent.prompt_tokens or 0) > 0  # reported in usage, not spent from the budget
    assert u.phases["propose"].calls == 1 and u.phases["score"].calls == 1
    assert any("max_tokens_budget" in w for w in res.warnings)


async def test_unbudgeted_run_files_the_answer_step_under_its_phase() -> None:
    agent = FakeModelService("agent", proposals=(("a", "b"),))
    res = await run(req(heuristic="likelihood", n_candidates=2, max_steps=1), agent=agent)
    assert res.finish is Finish.forced_answer
    assert res.usage.phases["answer"].calls >= 1 and res.usage.phases["propose"].calls == 1
    assert not res.budget_reached


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"strategy": "beam", "beam_width": 5, "n_beams": 4}, "beam_width", "exceeds"),
        ({"max_tokens_budget": 10}, "max_tokens_budget", "below the cost"),
        ({"strategy": "beam", "max_tokens_budget": 300}, "max_tokens_budget", "below"),
        ({"heuristic": "prm"}, "heuristic", "GATEWAY_REWARD_URL"),
        ({"heuristic": "orm", "strategy": "beam"}, "heuristic", "GATEWAY_REWARD_URL"),
        ({"strategy": "self_improve", "max_tokens_budget": 9999}, "max_tokens_budget", "budget"),
    ],
)
def test_bad_option_combinations_are_422_naming_the_field(
    options: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        build_search(req(**options), fake_upstreams())
    assert info.value.field == field and words in info.value.message


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"strategy": "dfs"}, "strategy"),
        ({"beam_width": 0}, "beam_width"),
        ({"n_beams": 17}, "n_beams"),
        ({"n": 65}, "n"),
        ({"n": 0}, "n"),
        ({"aggregation": "max"}, "aggregation"),
    ],
)
def test_out_of_range_options_fail_validation_naming_the_field(
    options: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError) as info:
        req(**options)
    assert field in str(info.value)


# -- best_of_n, vote, weighted_vote ----------------------------------------------------------

SOLUTIONS = (
    ("p", "The answer is: 10"),
    ("The answer is: 11",),
    ("q", "The answer is: 12"),
    ("r", "s", "t", "The answer is: 13"),
)
STEP_SCORES = {
    "p": -2.0,
    "The answer is: 10": -0.05,
    "The answer is: 11": -0.9,
    "q": -0.6,
    "The answer is: 12": -0.6,
    "r": -0.1,
    "s": -0.1,
    "t": -0.1,
    "The answer is: 13": -1.0,
}


@pytest.mark.parametrize(
    ("aggregation", "answer"), [("min", "12"), ("prod", "11"), ("last", "10"), ("mean", "13")]
)
async def test_best_of_n_picks_the_max_by_each_aggregation(aggregation: str, answer: str) -> None:
    agent = FakeModelService("agent", solutions=SOLUTIONS)
    scorer = FakeModelService("scorer", scores=STEP_SCORES)
    res = await run(
        req(strategy="best_of_n", n=4, heuristic="likelihood", aggregation=aggregation),
        agent=agent,
        scorer=scorer,
    )
    assert res.answer == answer and res.strategy is Strategy.best_of_n
    # One rollout for all n, one scorer call for every step of every solution.
    assert [r.n for r in agent.requests("rollout")] == [4]
    (score_req,) = scorer.requests("score")
    assert sorted(score_req.continuations) == sorted(STEP_SCORES)
    chosen = [n for n in res.tree if n.status == "chosen"]
    assert [n.text for n in chosen] == res.steps
    assert chosen[-1].answer == answer and chosen[-1].aggregate is not None
    assert sum(n.status == "finished" for n in res.tree) == 3
    assert res.usage.phases["rollout"].calls == 1 and res.usage.phases["score"].calls == 1


async def test_vote_takes_the_most_frequent_normalized_answer() -> None:
    solutions = [
        ("a", "The answer is: 5"),
        ("b", "The answer is: 7.0"),
        ("c", "The answer is: 5"),
        ("d", "The answer is **7**."),
        ("e", "The answer is: 7"),
        ("f", "no answer"),
    ]
    agent = FakeModelService("agent", solutions=solutions)
    scorer = FakeModelService("scorer")
    res = await run(req(strategy="vote", n=6), agent=agent, scorer=scorer)
    assert res.answers == {"5": 2.0, "7": 3.0}
    assert res.steps == ["b", "The answer is: 7.0"]  # the first solution of the winner
    assert scorer.calls == []  # voting scores nothing


async def test_vote_ties_go_to_the_answer_reached_first() -> None:
    solutions = [("The answer is: 9",), ("The answer is: 4",), ("The answer is: 4",)]
    solutions.append(("The answer is: 9",))
    res = await run(req(strategy="vote", n=4), agent=FakeModelService("agent", solutions=solutions))
    assert res.answer == "9" and res.answers == {"9": 2.0, "4": 2.0}


async def test_weighted_vote_sums_scores_where_plain_vote_counts() -> None:
    solutions = [("x", "The answer is: 1"), ("y", "The answer is: 1"), ("z", "The answer is: 2")]
    scores = {"x": -3.0, "y": -3.0, "z": -0.1, "The answer is: 1": -3.0, "The answer is: 2": -0.1}

    async def go(strategy: str) -> ReasonResponse:
        return await run(
            req(strategy=strategy, n=3, heuristic="likelihood"),
            agent=FakeModelService("agent", solutions=solutions),
            scorer=FakeModelService("scorer", scores=scores),
        )

    assert (await go("vote")).answer == "1"
    weighted = await go("weighted_vote")
    assert weighted.answer == "2"
    assert weighted.answers["2"] == pytest.approx(0.904837, abs=1e-5)  # exp(-0.1)
    assert weighted.answers["1"] == pytest.approx(2 * 0.049787, abs=1e-5)  # 2 exp(-3)


async def test_best_of_n_budget_drops_the_solutions_past_it() -> None:
    long = ("one two three four five six seven eight nine ten", "The answer is: 3")
    agent = FakeModelService("agent", solutions=[("The answer is: 1",), long, long])
    res = await run(
        req(strategy="best_of_n", n=3, max_step_tokens=4, max_tokens_budget=20), agent=agent
    )
    assert res.budget_reached and res.answer == "1"
    assert len({n.id for n in res.tree}) == 1


async def test_solutions_past_the_deadline_return_the_best_so_far() -> None:
    agent = FakeModelService("agent", delay_s=0.5)
    res = await run(req(strategy="vote", n=2, deadline_s=0.05), agent=agent)
    assert res.deadline_reached and res.steps == [] and res.finish is Finish.deadline


# -- deadline and cancellation apply to every strategy -------------------------------------


class SlowAfterFirstStep(FakeModelService):
    """Proposes at once at depth 0, then takes a second per call."""

    async def propose(self, req: ProposeRequest):  # type: ignore[no-untyped-def]
        if req.steps:
            await asyncio.sleep(1.0)
        return await super().propose(req)


async def test_beam_deadline_returns_the_best_beam_so_far() -> None:
    agent = SlowAfterFirstStep("agent", proposals=(("a", "b"),))
    scorer = FakeModelService("scorer", scores={"a": -2.0, "b": -1.0})
    res = await run(
        req(strategy="beam", n_beams=2, beam_width=1, heuristic="likelihood", deadline_s=0.3),
        agent=agent,
        scorer=scorer,
    )
    assert res.deadline_reached and res.steps[0] == "b"
    assert by_text(res)["b"] == "chosen"


async def test_cancel_stops_beam_and_solution_searches() -> None:
    for strategy in ("beam", "vote"):
        agent = SlowAfterFirstStep("agent", proposals=(("a", "b"),), delay_s=0.0)
        if strategy == "vote":
            agent.delay_s = 5.0
        search = build_search(
            req(strategy=strategy, n_beams=2, beam_width=1, n=2, heuristic="likelihood"),
            fake_upstreams(agent=agent),
        )
        task = asyncio.create_task(run_to_end(search))
        await asyncio.sleep(0.2)
        search.cancel()
        res = await asyncio.wait_for(task, 2.0)
        assert res.cancelled and res.finish is Finish.cancelled, strategy
        assert any("cancelled" in w for w in res.warnings)


# -- a reward model plugs in behind the solution scorer ------------------------------------


class FakeReward:
    """A reward service's answer: PRM step scores per solution, aggregated as it does."""

    def __init__(self, steps: dict[str, float]) -> None:
        self.steps = steps
        self.calls: list[list[list[str]]] = []

    async def solutions(self, solutions: Sequence[Sequence[str]]) -> Any:
        self.calls.append([list(s) for s in solutions])
        results = []
        for s in solutions:
            p = [self.steps[t] for t in s]
            results.append(
                SimpleNamespace(
                    step_scores=p, min=min(p), prod=math.prod(p), last=p[-1], mean=sum(p) / len(p)
                )
            )
        return SimpleNamespace(results=results, usage=SimpleNamespace(prompt_tokens=40))


class PhaseRun:
    """The accounting a solution scorer uses from its run: calls and tokens per phase."""

    def __init__(self) -> None:
        self.phases: dict[str, ServiceCounter] = {}

    def _phase(self, name: str) -> ServiceCounter:
        return self.phases.setdefault(name, ServiceCounter())

    async def _call(self, service: str, call: Any, phase: str) -> Any:
        self._phase(phase).calls += 1
        return await call

    def count(self, service: str, phase: str, *, prompt: int | None = None) -> None:
        self._phase(phase).add(prompt=prompt)


@pytest.mark.parametrize(("how", "best"), [("min", 1), ("prod", 1), ("last", 0), ("mean", 0)])
async def test_reward_solution_scorer_aggregates_probabilities_in_one_call(
    how: str, best: int
) -> None:
    reward = FakeReward({"a": 0.5, "b": 0.99, "c": 0.7, "d": 0.75})
    run = PhaseRun()
    scorer = RewardSolutionScorer(run, reward, Heuristic.prm)  # type: ignore[arg-type]
    scored = await scorer.score([["a", "b"], ["c", "d"]], Aggregation(how))
    assert len(reward.calls) == 1
    assert scored[0].step_scores == [0.5, 0.99]
    values = [s.value or 0.0 for s in scored]
    assert values.index(max(values)) == best
    if how == "prod":
        assert scored[0].value == pytest.approx(0.495)  # a product, not a log-sum
    assert run.phases["reward"].calls == 1 and run.phases["reward"].prompt_tokens == 40
