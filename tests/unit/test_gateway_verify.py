"""POST /v1/verify on fake model services: scripted and LLM verdicts, the choice between them,
bad input, and an LLM verifier that is down or answers nonsense."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import FakeModelService, fake_upstreams
from gateway.upstreams import Upstreams
from shared.clients import ModelServiceClient
from shared.errors import EngineError, InvalidRequest, ServiceUnavailable, UpstreamTimeout
from shared.openai_schemas import ChatCompletionRequest, OAChatMessage
from shared.tasks import arithmetic, word_sorting

pytestmark = pytest.mark.unit

EXPR = "((7 - -1 + -1) - (-7 + 3 * -9))"
ARITH = {
    "task": "multistep_arithmetic",
    "question": arithmetic.question_text(EXPR),
    "solution": "\n".join(arithmetic.rationale(EXPR)),
}
WORDS = ["pear", "apple", "plum"]
WRONG_WORDS = "\n".join(word_sorting.rationale(WORDS)).replace('"plum"="l" (12)', '"plum"="m" (13)')
SORT = {"task": "word_sorting", "question": word_sorting.question_text(WORDS)}
DATE = {
    "task": "date_understanding",
    "question": "Today is 3/5/2021. What is the date tomorrow in MM/DD/YYYY?",
    "solution": "(1) Tomorrow is one day later: 03/07/2021.\n"
    "(Final response) So the answer is 03/07/2021.",
}
LLM_ERROR = (
    'Earliest error step: (1)\nError segment: "03/07/2021"\nError reason: It is two days later.'
)


@contextlib.asynccontextmanager
async def served(
    upstreams: Upstreams | None = None, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewaySettings(**settings), clients=upstreams or fake_upstreams())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def scorer_saying(text: str, **kwargs: Any) -> FakeModelService:
    return FakeModelService("scorer", chat_text=text, **kwargs)


# -- scripted ---------------------------------------------------------------------------------


async def test_verify_scripted_gold_solution_is_all_correct() -> None:
    ups = fake_upstreams()
    async with served(ups) as client:
        r = await client.post("/v1/verify", json=ARITH, headers={"X-Request-Id": "rid-v"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["correct"] is True and body["unparseable"] is False
    assert body["verifier"] == "scripted"
    assert body["task"] == "multistep_arithmetic_seen"
    assert body["feedback"] == "Step (1) to (4) are correct. The final response is also correct."
    assert body["step"] is None and body["model_output"] is None
    assert body["id"] == "rid-v"
    assert not ups.scorer.calls and not ups.agent.calls  # type: ignore[attr-defined]


async def test_verify_scripted_wrong_solution_names_step_segment_and_reason() -> None:
    async with served() as client:
        r = await client.post("/v1/verify", json={**SORT, "solution": WRONG_WORDS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["correct"] is False
    assert (body["step"], body["step_index"]) == ("3", 2)
    assert body["segment"] == '"plum"="m" (13)'
    assert body["reason"] == 'the second letter of "plum" should be "l"'
    assert body["feedback"] == (
        'Step (1) to (2) are correct. In step (3) the part ""plum"="m" (13)" is incorrect. '
        'This is because the second letter of "plum" should be "l".'
    )


async def test_verify_scripted_unreadable_solution_is_the_error_marker() -> None:
    async with served() as client:
        r = await client.post("/v1/verify", json={**ARITH, "solution": "It is 41, I think."})
    assert r.status_code == 200
    body = r.json()
    assert body["unparseable"] is True and body["correct"] is False
    assert body["feedback"] == "[ERROR]"
    assert body["detail"]


# -- llm --------------------------------------------------------------------------------------


async def test_verify_task_without_a_script_asks_the_llm_verifier() -> None:
    scorer = scorer_saying(LLM_ERROR)
    async with served(fake_upstreams(scorer=scorer), verifier_max_tokens=100) as client:
        r = await client.post("/v1/verify", json=DATE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verifier"] == "llm"
    assert (body["step"], body["step_index"], body["segment"]) == ("1", 0, "03/07/2021")
    assert body["feedback"] == (
        'In step (1) the part "03/07/2021" is incorrect. This is because it is two days later.'
    )
    assert body["model_output"] == LLM_ERROR
    (req,) = scorer.requests("chat")
    assert isinstance(req, ChatCompletionRequest)
    assert req.temperature == 0.0 and req.max_tokens == 100
    prompt = req.messages[-1].text()
    assert DATE["question"] in prompt and DATE["solution"] in prompt
    assert prompt.startswith("Task: Infer a date")


async def test_verify_llm_can_be_chosen_for_a_scripted_task_and_the_service_set() -> None:
    agent = FakeModelService("agent", chat_text="Earliest error step: None\nError segment: None")
    async with served(fake_upstreams(agent=agent), verifier_service="agent") as client:
        r = await client.post("/v1/verify", json={**ARITH, "verifier": "llm"})
    assert r.status_code == 200, r.text
    assert r.json()["verifier"] == "llm"
    assert r.json()["correct"] is True
    assert len(agent.requests("chat")) == 1


async def test_verify_llm_answering_nonsense_is_an_unparseable_verdict() -> None:
    async with served(fake_upstreams(scorer=scorer_saying("Looks great!!"))) as client:
        r = await client.post("/v1/verify", json=DATE)
    assert r.status_code == 200
    body = r.json()
    assert body["unparseable"] is True and body["feedback"] == "[ERROR]"
    assert body["model_output"] == "Looks great!!"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (ServiceUnavailable("scorer is unreachable at http://x"), 503, "service_unavailable"),
        (EngineError("scorer: engine failed"), 503, "engine_error"),
        (UpstreamTimeout("scorer did not answer in time"), 504, "timeout"),
    ],
)
async def test_verify_llm_verifier_down_is_named_in_the_error(
    error: Exception, status: int, kind: str
) -> None:
    scorer = FakeModelService("scorer", fail=error)  # type: ignore[arg-type]
    async with served(fake_upstreams(scorer=scorer)) as client:
        r = await client.post("/v1/verify", json=DATE)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == kind
    assert err["message"].startswith("llm verifier (scorer service): ")


async def test_verify_solution_the_llm_verifier_refuses_is_422_on_solution() -> None:
    scorer = FakeModelService("scorer", fail=InvalidRequest("messages: too long", field="messages"))
    async with served(fake_upstreams(scorer=scorer)) as client:
        r = await client.post("/v1/verify", json=DATE)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "solution"


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**ARITH, "task": "no_such_task"}, "task"),
        ({**ARITH, "task": "jsonl:/etc/passwd"}, "task"),
        ({**ARITH, "task": ""}, "task"),
        ({**ARITH, "solution": ""}, "solution"),
        ({**ARITH, "solution": "  \n "}, "solution"),
        ({**ARITH, "solution": "(1) x\n" * 3000}, "solution"),
        ({**ARITH, "question": ""}, "question"),
        ({**ARITH, "question": "What is two plus two?"}, "question"),
        ({**ARITH, "verifier": "oracle"}, "verifier"),
        ({**DATE, "verifier": "scripted"}, "verifier"),
        ({**ARITH, "steps": []}, "steps"),
        ({"task": "word_sorting", "solution": "(1) x"}, "question"),
    ],
)
async def test_verify_bad_input_is_422_naming_the_field(body: dict[str, Any], field: str) -> None:
    async with served() as client:
        r = await client.post("/v1/verify", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["field"] == field


async def test_verify_solution_limit_follows_the_settings() -> None:
    async with served(max_solution_chars=20) as client:
        r = await client.post("/v1/verify", json=ARITH)
    assert r.status_code == 422
    assert "at most 20" in r.json()["error"]["message"]


async def test_verify_counts_verdicts_in_metrics() -> None:
    async with served(fake_upstreams(scorer=scorer_saying("?"))) as client:
        await client.post("/v1/verify", json=ARITH)
        await client.post("/v1/verify", json={**SORT, "solution": WRONG_WORDS})
        await client.post("/v1/verify", json=DATE)
        text = (await client.get("/metrics")).text
    assert 'gateway_verifications_total{verdict="correct",verifier="scripted"} 1.0' in text
    assert 'gateway_verifications_total{verdict="incorrect",verifier="scripted"} 1.0' in text
    assert 'gateway_verifications_total{verdict="unparseable",verifier="llm"} 1.0' in text


# -- the client call --------------------------------------------------------------------------


async def test_verify_client_chat_posts_an_openai_chat_completion() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.url.path == "/v1/chat/completions"
        choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
        return httpx.Response(200, json={"id": "c", "choices": [choice], "extra": 1})

    client = ModelServiceClient("scorer", "http://s", transport=httpx.MockTransport(handler))
    async with client:
        req = ChatCompletionRequest(
            messages=[OAChatMessage(role="user", content="x")], max_tokens=5, temperature=0.0
        )
        response = await client.chat(req)
    assert response.text() == "hi"
    assert seen[0]["max_tokens"] == 5 and seen[0]["messages"] == [{"role": "user", "content": "x"}]
