"""The gateway's HTTP contract on fake model services: endpoints, streaming, errors, auth,
readiness, metrics and the OpenAI-compatible face."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import FakeModelService, fake_upstreams
from gateway.upstreams import Upstreams
from shared.errors import ServiceUnavailable, UpstreamTimeout

pytestmark = pytest.mark.unit

Q = {"question": "What is 2 + 3?", "max_steps": 3}
ANSWERING = FakeModelService(
    "agent", proposals=(("2 + 3 = 5.", "2 + 3 = 6."), ("The answer is: 5",))
)


def agent() -> FakeModelService:
    return FakeModelService("agent", proposals=ANSWERING.proposals)


@contextlib.asynccontextmanager
async def served(
    upstreams: Upstreams | None = None, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        GatewaySettings(**settings), clients=upstreams or fake_upstreams(agent=agent())
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# -- /v1/reason -----------------------------------------------------------------------------


async def test_reason_returns_steps_answer_and_trace() -> None:
    async with served() as client:
        r = await client.post("/v1/reason", json=Q, headers={"X-Request-Id": "rid-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["steps"] == ["2 + 3 = 5.", "The answer is: 5"]
    assert body["answer"] == "5"
    assert body["finished"] is True
    assert body["id"] == "rid-1"
    assert r.headers["x-request-id"] == "rid-1"
    step = body["trace"][0]
    assert {"rationale", "candidates", "chosen", "timings", "heuristic"} <= step.keys()
    assert {"rationale_ms", "propose_ms", "score_ms"} <= step["timings"].keys()
    assert body["usage"]["scorer"]["calls"] == 1  # step 2 had a single candidate
    assert body["heuristic_requested"] == body["heuristic_used"] == "rationalyst"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "   "}, "question"),
        ({"question": "x" * 4001}, "question"),
        ({"question": "q", "n_candidates": 0}, "n_candidates"),
        ({"question": "q", "n_candidates": 17}, "n_candidates"),
        ({"question": "q", "max_steps": 0}, "max_steps"),
        ({"question": "q", "max_steps": 65}, "max_steps"),
        ({"question": "q", "heuristic": "oracle"}, "heuristic"),
        ({"question": "q", "bogus": 1}, "bogus"),
        ({"question": "q", "temperature": 3}, "temperature"),
        ({"question": "q", "deadline_s": 0}, "deadline_s"),
        ({"question": "q", "few_shot": [{"question": "x", "steps": []}]}, "few_shot[0].steps"),
        ({}, "question"),
    ],
)
async def test_reason_bad_input_is_422_naming_the_field(body: dict[str, Any], field: str) -> None:
    async with served() as client:
        r = await client.post("/v1/reason", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["field"] == field
    assert error["request_id"] == r.headers["x-request-id"]


async def test_malformed_json_is_422() -> None:
    async with served() as client:
        r = await client.post(
            "/v1/reason", content=b'{"question": ', headers={"Content-Type": "application/json"}
        )
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "body"


async def test_question_limit_follows_the_settings() -> None:
    async with served(max_question_chars=10) as client:
        r = await client.post("/v1/reason", json={"question": "x" * 11})
    assert r.status_code == 422
    assert "at most 10" in r.json()["error"]["message"]


async def test_agent_down_is_503_naming_it() -> None:
    ups = fake_upstreams(agent=FakeModelService("agent", fail=ServiceUnavailable("agent: down")))
    async with served(ups) as client:
        r = await client.post("/v1/reason", json=Q)
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "service_unavailable"
    assert "agent" in r.json()["error"]["message"]


async def test_scorer_down_degrades_or_503_in_strict() -> None:
    scorer = FakeModelService("scorer", fail=ServiceUnavailable("scorer is unreachable"))
    async with served(fake_upstreams(agent=agent(), scorer=scorer)) as client:
        r = await client.post("/v1/reason", json=Q)
        strict = await client.post("/v1/reason", json={**Q, "strict": True})
    assert r.status_code == 200
    assert r.json()["heuristic_used"] == "random"
    assert r.json()["fallbacks"][0]["service"] == "scorer"
    assert strict.status_code == 503
    assert "scorer" in strict.json()["error"]["message"]


async def test_upstream_timeout_in_strict_mode_is_504() -> None:
    scorer = FakeModelService("scorer", fail=UpstreamTimeout("scorer did not answer in time"))
    async with served(fake_upstreams(agent=agent(), scorer=scorer)) as client:
        r = await client.post("/v1/reason", json={**Q, "strict": True})
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "timeout"


async def test_busy_gateway_answers_503() -> None:
    slow = FakeModelService("agent", delay_s=0.5)
    async with served(
        fake_upstreams(agent=slow), max_concurrent_requests=1, queue_timeout_s=0.05
    ) as client:
        first = asyncio.create_task(client.post("/v1/reason", json={**Q, "max_steps": 1}))
        await asyncio.sleep(0.1)
        second = await client.post("/v1/reason", json={**Q, "max_steps": 1})
        assert (await first).status_code == 200
    assert second.status_code == 503
    assert "busy" in second.json()["error"]["message"]


# -- streaming ------------------------------------------------------------------------------


async def test_reason_stream_sends_one_event_per_step_then_done() -> None:
    async with served() as client:
        r = await client.post("/v1/reason", json={**Q, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [e for e, _ in events if e != "node"] == ["step", "step", "done"]
    assert events[0][1]["index"] == 0
    assert events[-1][1]["steps"] == ["2 + 3 = 5.", "The answer is: 5"]
    # Each step's tree nodes follow its step event; the final tree holds them all.
    nodes = [d for e, d in events if e == "node"]
    assert nodes and all(n["event"] == "node" for n in nodes)
    assert [n["id"] for n in nodes] == [n["id"] for n in events[-1][1]["tree"]]
    assert [n["text"] for n in nodes if n["status"] == "chosen"] == events[-1][1]["steps"]


async def test_stream_error_after_start_is_the_last_event() -> None:
    scorer = FakeModelService("scorer", fail=ServiceUnavailable("scorer: gone"), fail_from_call=1)
    ups = fake_upstreams(agent=FakeModelService("agent"), scorer=scorer)
    async with served(ups) as client:
        r = await client.post("/v1/reason", json={**Q, "stream": True, "strict": True})
    events = sse_events(r.text)
    assert [e for e, _ in events if e != "node"] == ["step", "error"]
    error = events[-1][1]["error"]
    assert error["type"] == "service_unavailable"
    assert error["request_id"] == r.headers["x-request-id"]


async def test_stream_failing_before_the_first_step_is_a_plain_error() -> None:
    ups = fake_upstreams(agent=FakeModelService("agent", fail=ServiceUnavailable("agent: down")))
    async with served(ups) as client:
        r = await client.post("/v1/reason", json={**Q, "stream": True})
        # the slot was released: a later request is not refused as busy
        again = await client.post("/v1/reason", json={**Q, "stream": True})
    assert r.status_code == 503
    assert again.status_code == 503
    assert "agent" in again.json()["error"]["message"]


# -- /v1/select -----------------------------------------------------------------------------


async def test_select_ranks_candidates() -> None:
    scorer = FakeModelService("scorer", scores={"b": -0.1})
    async with served(fake_upstreams(scorer=scorer)) as client:
        r = await client.post(
            "/v1/select",
            json={"question": "q", "steps": ["s"], "candidates": ["a", "b", "c"]},
        )
    assert r.status_code == 200, r.text
    assert r.json()["chosen"] == 1
    assert r.json()["scores"] == [-1.0, -0.1, -1.0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": "q", "candidates": []}, "candidates"),
        ({"question": "q", "candidates": [""]}, "candidates[0]"),
        ({"question": "q", "candidates": ["a"], "heuristic": "greedy"}, "heuristic"),
        ({"question": "", "candidates": ["a"]}, "question"),
    ],
)
async def test_select_bad_input_is_422(body: dict[str, Any], field: str) -> None:
    async with served() as client:
        r = await client.post("/v1/select", json=body)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == field


# -- auth -----------------------------------------------------------------------------------


async def test_api_keys_require_a_bearer_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with served(api_keys="k-one,k-two") as client:
        missing = await client.post("/v1/reason", json=Q)
        wrong = await client.post("/v1/reason", json=Q, headers={"Authorization": "Bearer no"})
        ok = await client.post("/v1/reason", json=Q, headers={"Authorization": "Bearer k-two"})
        health = await client.get("/health")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "unauthorized"
    assert missing.json()["error"]["request_id"]
    assert wrong.status_code == 401
    assert ok.status_code == 200
    assert health.status_code == 200
    assert "k-one" not in caplog.text and "k-two" not in caplog.text


def test_settings_hide_keys() -> None:
    s = GatewaySettings(api_keys="secret-key")
    assert "secret-key" not in repr(s)
    assert s.api_key_values() == ["secret-key"]


def test_settings_reject_bad_urls() -> None:
    with pytest.raises(ValueError, match="http"):
        GatewaySettings(scorer_url="localhost:8103")


# -- health, readiness, metrics ---------------------------------------------------------------


async def test_ready_names_the_services_that_are_down() -> None:
    ups = fake_upstreams(scorer=FakeModelService("scorer", ready_ok=False))
    async with served(ups) as client:
        r = await client.get("/ready")
    assert r.status_code == 503
    assert "scorer" in r.json()["error"]["message"]
    assert "agent" not in r.json()["error"]["message"]
    async with served() as client:
        ok = await client.get("/ready")
    assert ok.status_code == 200
    assert ok.json()["services"] == {"rationalyst": "ready", "agent": "ready", "scorer": "ready"}


async def test_metrics_count_searches_candidates_and_fallbacks() -> None:
    scorer = FakeModelService("scorer", fail=ServiceUnavailable("scorer down"))
    async with served(fake_upstreams(agent=agent(), scorer=scorer)) as client:
        await client.post("/v1/reason", json=Q)
        text = (await client.get("/metrics")).text
    assert 'gateway_searches_total{endpoint="reason",outcome="answered"' in text
    assert "gateway_candidates_total 6.0" in text
    assert "gateway_duplicate_candidates_total 3.0" in text
    assert 'gateway_fallbacks_total{from_heuristic="rationalyst",service="scorer"' in text
    assert "gateway_steps_per_answer_count 1.0" in text
    assert 'gateway_stage_seconds_count{stage="propose"} 2.0' in text
    assert "gateway_http_requests_total" in text


async def test_unknown_route_uses_the_envelope() -> None:
    async with served() as client:
        r = await client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["request_id"]


async def test_lifespan_closes_only_clients_it_created() -> None:
    ups = fake_upstreams()
    async with served(ups):
        pass
    assert not any(c.closed for c in ups.by_name().values())  # type: ignore[attr-defined]


# -- OpenAI-compatible ----------------------------------------------------------------------


CHAT = {"model": "rationalyst", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}


async def test_chat_completion_content_is_the_solution() -> None:
    async with served() as client:
        r = await client.post(
            "/v1/chat/completions",
            json={
                **CHAT,
                "messages": [{"role": "system", "content": "be brief"}, *CHAT["messages"]],
                "heuristic": "likelihood",
                "max_steps": 4,
                "user": "tolerated-extra",
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "2 + 3 = 5.\nThe answer is: 5"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["rationalyst"]["heuristic_requested"] == "likelihood"
    assert any("ignored" in w for w in body["rationalyst"]["warnings"])


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({**CHAT, "model": "gpt-4"}, 404, "model"),
        ({**CHAT, "messages": [{"role": "system", "content": "x"}]}, 400, "messages"),
        ({**CHAT, "n_candidates": 40}, 400, "n_candidates"),
        ({**CHAT, "heuristic": "oracle"}, 400, "heuristic"),
        ({**CHAT, "n": 2}, 400, "n"),
        ({**CHAT, "model": "rationalyst-dfs"}, 404, "model"),
        ({**CHAT, "model": "rationalyst-vote", "strategy": "beam"}, 400, "strategy"),
        ({**CHAT, "strategy": "beam", "beam_width": 3, "n_beams": 2}, 400, "beam_width"),
        ({**CHAT, "n_solutions": 65}, 400, "n_solutions"),
        ({**CHAT, "heuristic": "prm", "strategy": "best_of_n"}, 400, "heuristic"),
    ],
)
async def test_chat_bad_input(body: dict[str, Any], status: int, field: str) -> None:
    async with served() as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == field  # OpenAI's error body


async def test_openai_client_completion_stream_and_models() -> None:
    from openai import AsyncOpenAI

    app = create_app(GatewaySettings(api_keys="k"), clients=fake_upstreams(agent=agent()))
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        oa = AsyncOpenAI(base_url="http://test/v1", api_key="k", http_client=http)
        models = await oa.models.list()
        assert [m.id for m in models.data] == [
            "rationalyst",
            "rationalyst-beam",
            "rationalyst-best-of-n",
            "rationalyst-vote",
            "rationalyst-weighted-vote",
        ]
        done = await oa.chat.completions.create(
            model="rationalyst",
            messages=[{"role": "user", "content": "What is 2 + 3?"}],
            extra_body={"heuristic": "random", "n_candidates": 2, "seed": 1},
        )
        assert done.choices[0].message.content.endswith("The answer is: 5")
        trace = done.model_extra["rationalyst"]  # type: ignore[index]
        assert trace["heuristic_used"] == "random"
        stream = await oa.chat.completions.create(
            model="rationalyst",
            messages=[{"role": "user", "content": "What is 2 + 3?"}],
            stream=True,
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text == "2 + 3 = 5.\nThe answer is: 5"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].model_extra["rationalyst"]["answer"] == "5"  # type: ignore[index]
        await http.aclose()


async def test_openai_stream_error_raises_in_the_client() -> None:
    from openai import APIError, AsyncOpenAI

    scorer = FakeModelService("scorer", fail=ServiceUnavailable("scorer gone"), fail_from_call=1)
    app = create_app(
        GatewaySettings(), clients=fake_upstreams(agent=FakeModelService("agent"), scorer=scorer)
    )
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        oa = AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http)
        stream = await oa.chat.completions.create(
            model="rationalyst",
            messages=[{"role": "user", "content": "q"}],
            stream=True,
            extra_body={"strict": True, "max_steps": 3},
        )
        with pytest.raises(APIError, match="scorer gone"):
            async for _ in stream:
                pass
        await http.aclose()


async def test_openai_client_selects_a_strategy_by_model_id_and_by_extra_body() -> None:
    from openai import AsyncOpenAI

    solutions = [("a", "The answer is: 4"), ("b", "The answer is: 5"), ("c", "The answer is: 5")]
    ups = fake_upstreams(agent=FakeModelService("agent", solutions=solutions))
    app = create_app(GatewaySettings(api_keys="k"), clients=ups)
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        oa = AsyncOpenAI(base_url="http://test/v1", api_key="k", http_client=http)
        messages = [{"role": "user", "content": "What is 2 + 3?"}]
        by_id = await oa.chat.completions.create(
            model="rationalyst-vote",
            messages=messages,  # type: ignore[arg-type]
            extra_body={"n_solutions": 3},
        )
        assert by_id.model == "rationalyst-vote"
        trace = by_id.model_extra["rationalyst"]  # type: ignore[index]
        assert trace["strategy"] == "vote" and trace["answers"] == {"4": 1.0, "5": 2.0}
        assert by_id.choices[0].message.content == "b\nThe answer is: 5"
        by_body = await oa.chat.completions.create(
            model="rationalyst",
            messages=messages,  # type: ignore[arg-type]
            extra_body={"strategy": "beam", "n_beams": 2, "beam_width": 1, "max_steps": 3},
        )
        trace = by_body.model_extra["rationalyst"]  # type: ignore[index]
        assert trace["strategy"] == "beam" and trace["tree"]
        assert [n["text"] for n in trace["tree"] if n["status"] == "chosen"] == trace["steps"]
        await http.aclose()
