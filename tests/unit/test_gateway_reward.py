"""The `prm`/`orm` step heuristics: candidates scored by the reward service in one call, the
fallback to `likelihood` when it is down, the 422 when none is configured, /ready."""

from __future__ import annotations

import pytest

from gateway.loop import reason, select
from gateway.reward import RewardScorer
from gateway.testing import FakeModelService, fake_upstreams
from shared.errors import InvalidRequest, ServiceUnavailable
from shared.gateway_schemas import Heuristic, ReasonRequest, SelectRequest

pytestmark = pytest.mark.unit

DOWN = ServiceUnavailable("reward is down")
STEPS = ["2 + 3 = 5."]
CANDIDATES = ["The answer is: 6", "The answer is: 5", "The answer is: 4"]


def sel(**kw: object) -> SelectRequest:
    kw.setdefault("question", "What is 2 + 3?")
    kw.setdefault("steps", STEPS)
    kw.setdefault("candidates", CANDIDATES)
    kw.setdefault("heuristic", "prm")
    return SelectRequest.model_validate(kw)


def reward_service(**kw: object) -> FakeModelService:
    return FakeModelService(
        "reward", step_scores={"The answer is: 5": 0.9, "2 + 3 = 5.": 0.8}, **kw
    )  # type: ignore[arg-type]


async def test_select_prm_ranks_by_the_candidates_step_score_in_one_call() -> None:
    reward = reward_service()
    scorer = FakeModelService("scorer")
    rationalyst = FakeModelService("rationalyst")
    res = await select(sel(), fake_upstreams(reward=reward, scorer=scorer, rationalyst=rationalyst))
    assert res.chosen == 1 and res.chosen_text == "The answer is: 5"
    assert res.scores == [0.5, 0.9, 0.5]
    assert res.heuristic_used is Heuristic.prm
    (req,) = reward.requests("reward")
    assert req.question == "What is 2 + 3?"
    assert req.solutions == [[*STEPS, c] for c in CANDIDATES]  # trajectory + candidate
    assert scorer.calls == [] and rationalyst.calls == []
    assert res.fallbacks == []


async def test_prm_without_a_reward_service_is_a_422_naming_heuristic() -> None:
    with pytest.raises(InvalidRequest) as err:
        await select(sel(), fake_upstreams())
    assert err.value.field == "heuristic"
    assert "GATEWAY_REWARD_URL" in err.value.message


async def test_reward_down_falls_back_to_likelihood_or_raises_in_strict() -> None:
    scorer = FakeModelService("scorer", scores={"The answer is: 4": -0.2})
    ups = fake_upstreams(reward=reward_service(fail=DOWN), scorer=scorer)
    res = await select(sel(), ups)
    assert res.heuristic_used is Heuristic.likelihood
    assert res.chosen_text == "The answer is: 4"
    (fallback,) = res.fallbacks
    assert fallback.service == "reward"
    assert fallback.from_heuristic is Heuristic.prm
    assert fallback.to_heuristic is Heuristic.likelihood
    assert any("reward unavailable" in w for w in res.warnings)
    with pytest.raises(ServiceUnavailable):
        await select(sel(strict=True), ups)


async def test_reason_with_prm_scores_each_step_with_the_reward_service() -> None:
    agent = FakeModelService(
        "agent", proposals=(("Add them.", "Guess."), ("The answer is: 5", "The answer is: 6"))
    )
    reward = FakeModelService(
        "reward", step_scores={"Add them.": 0.9, "Guess.": 0.1, "The answer is: 5": 0.8}
    )
    req = ReasonRequest(question="What is 2 + 3?", heuristic="prm", n_candidates=2, max_steps=3)
    res = await reason(req, fake_upstreams(agent=agent, reward=reward))
    assert res.steps == ["Add them.", "The answer is: 5"]
    first, second = reward.requests("reward")
    assert first.solutions == [["Add them."], ["Guess."]]
    assert second.solutions == [
        ["Add them.", "The answer is: 5"],
        ["Add them.", "The answer is: 6"],
    ]
    assert res.usage.reward.calls == 2


async def test_reward_scorer_ranks_whole_solutions_by_an_aggregate() -> None:
    reward = FakeModelService("reward", step_scores={"a": 0.9, "b": 0.2, "c": 0.6})
    scorer = RewardScorer(reward, "q")  # type: ignore[arg-type]
    assert await scorer.scores([["a", "b"], ["c", "c"]], "min") == pytest.approx([0.2, 0.6])
    assert await scorer.scores([["a", "b"]], "prod") == pytest.approx([0.18])
    assert scorer.calls == 2 and scorer.prompt_tokens == 30


async def test_ready_includes_the_reward_service_only_when_configured() -> None:
    from tests.unit.test_gateway_api import served

    async with served(fake_upstreams()) as client:
        r = await client.get("/ready")
    assert r.status_code == 200
    assert "reward" not in r.json()["services"]
    async with served(fake_upstreams(reward=reward_service(ready_ok=False))) as client:
        r = await client.get("/ready")
    assert r.status_code == 503
    assert "reward" in r.json()["error"]["message"]
    async with served(fake_upstreams(reward=reward_service())) as client:
        r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json()["services"]["reward"] == "ready"


async def test_select_over_http_with_prm_and_its_422_without_reward() -> None:
    from tests.unit.test_gateway_api import served

    body = {"question": "What is 2 + 3?", "steps": STEPS, "candidates": CANDIDATES}
    async with served(fake_upstreams(reward=reward_service())) as client:
        r = await client.post("/v1/select", json={**body, "heuristic": "prm"})
    assert r.status_code == 200, r.text
    assert r.json()["chosen_text"] == "The answer is: 5"
    async with served(fake_upstreams()) as client:
        r = await client.post("/v1/select", json={**body, "heuristic": "prm"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "heuristic"


def test_reward_url_setting_is_optional_and_checked() -> None:
    from pydantic import ValidationError

    from gateway.settings import GatewaySettings
    from gateway.upstreams import build_upstreams

    assert build_upstreams(GatewaySettings()).reward is None
    ups = build_upstreams(GatewaySettings(reward_url="http://reward:8000/"))
    assert ups.reward is not None and ups.reward.name == "reward"
    with pytest.raises(ValidationError, match="reward_url"):
        GatewaySettings(reward_url="reward:8000")


async def test_chat_with_heuristic_prm_selects_steps_with_the_reward_service() -> None:
    from tests.unit.test_gateway_api import served

    agent = FakeModelService(
        "agent", proposals=(("Add them.", "Guess."), ("The answer is: 5", "The answer is: 6"))
    )
    reward = FakeModelService(
        "reward", step_scores={"Add them.": 0.9, "Guess.": 0.1, "The answer is: 5": 0.8}
    )
    body = {
        "model": "rationalyst",
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        "heuristic": "prm",
        "n_candidates": 2,
        "max_steps": 3,
    }
    async with served(fake_upstreams(agent=agent, reward=reward)) as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert "The answer is: 5" in r.json()["choices"][0]["message"]["content"]
    assert len(reward.requests("reward")) == 2


@pytest.mark.parametrize("strategy", ["beam", "best_of_n", "weighted_vote"])
async def test_reward_down_mid_search_falls_back_to_likelihood_in_every_strategy(
    strategy: str,
) -> None:
    from gateway.search import build_search, run_to_end

    def propose(r: object) -> list[str]:
        steps = getattr(r, "steps", [])
        return ["The answer is: 5"] * r.n if steps else ["Add them.", "Guess."]  # type: ignore[attr-defined]

    agent = FakeModelService(
        "agent",
        proposals=propose,
        solutions=[["Add them.", "The answer is: 5"], ["Guess.", "The answer is: 6"]],
    )
    scorer = FakeModelService("scorer", scores={"Guess.": -0.1, "The answer is: 6": -0.1})
    request = ReasonRequest(
        question="What is 2 + 3?", heuristic="prm", strategy=strategy, n_beams=2, beam_width=1,
        n=2, max_steps=3, seed=1,
    )  # fmt: skip
    ups = fake_upstreams(agent=agent, scorer=scorer, reward=reward_service(fail=DOWN))
    res = await run_to_end(build_search(request, ups))  # type: ignore[arg-type]
    assert res.heuristic_used is Heuristic.likelihood and res.answer is not None
    (fallback,) = res.fallbacks
    assert fallback.service == "reward" and fallback.to_heuristic is Heuristic.likelihood
    assert scorer.requests("score"), "the scorer took over"
    strict = request.model_copy(update={"strict": True})
    with pytest.raises(ServiceUnavailable):
        await run_to_end(build_search(strict, ups))  # type: ignore[arg-type]


@pytest.mark.parametrize(("asked", "served"), [("prm", "orm"), ("orm", "prm")])
async def test_a_reward_model_of_the_other_kind_ranks_with_one_warning(
    asked: str, served: str
) -> None:
    reward = reward_service(reward_kind=served)
    res = await select(sel(heuristic=asked), fake_upstreams(reward=reward))
    assert res.chosen_text == "The answer is: 5"  # its scores are still used
    mismatch = [w for w in res.warnings if "reward service serves" in w]
    assert len(mismatch) == 1 and f"serves a {served}" in mismatch[0]


async def test_reward_of_the_asked_kind_gives_no_warning_over_a_whole_search() -> None:
    agent = FakeModelService("agent", proposals=(("Add them.", "Guess."), ("The answer is: 5",)))
    req = ReasonRequest(question="What is 2 + 3?", heuristic="orm", n_candidates=2, max_steps=3)
    res = await reason(req, fake_upstreams(agent=agent, reward=reward_service(reward_kind="orm")))
    assert not [w for w in res.warnings if "reward service serves" in w]
    req = ReasonRequest(question="What is 2 + 3?", heuristic="prm", n_candidates=2, max_steps=3)
    res = await reason(req, fake_upstreams(agent=agent, reward=reward_service(reward_kind="orm")))
    assert len([w for w in res.warnings if "reward service serves" in w]) == 1  # once, not per step
