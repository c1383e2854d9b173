"""The OpenAI face of the gateway on fake model services: where the search goes
(reasoning_format), usage, include_usage, stop, the token budget, reasoning_effort, refused
parameters in OpenAI's error shape; and the trace store behind GET /v1/traces/{id}."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from gateway.app import create_app
from gateway.openai_compat import StopText
from gateway.settings import GatewaySettings
from gateway.testing import FakeModelService, fake_upstreams
from gateway.traces import TraceStore
from shared.errors import NotFound
from shared.gateway_schemas import Finish, Heuristic, ReasonResponse

pytestmark = pytest.mark.unit

PROPOSALS = (("2 + 3 = 5.", "2 + 3 = 6."), ("The answer is: 5",))
MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


@contextlib.asynccontextmanager
async def openai_client(**settings: Any) -> AsyncIterator[tuple[AsyncOpenAI, httpx.AsyncClient]]:
    agent = FakeModelService("agent", proposals=PROPOSALS)
    app = create_app(GatewaySettings(**settings), clients=fake_upstreams(agent=agent))
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        oa = AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http)
        try:
            yield oa, http
        finally:
            await http.aclose()


async def test_non_stream_puts_the_search_in_reasoning_content_and_real_usage() -> None:
    async with openai_client() as (oa, _):
        done = await oa.chat.completions.create(model="rationalyst", messages=MESSAGES)  # type: ignore[arg-type]
    message = done.choices[0].message
    assert message.content == "2 + 3 = 5.\nThe answer is: 5"
    reasoning = message.model_extra["reasoning_content"]  # type: ignore[index]
    assert "Step 1" in reasoning and "2 + 3 = 6." in reasoning  # the candidate not chosen too
    assert "<- chosen" in reasoning
    trace = done.model_extra["rationalyst"]  # type: ignore[index]
    services = [trace["usage"][name] for name in ("rationalyst", "agent", "scorer")]
    generated = sum(s["completion_tokens"] or 0 for s in services)
    assert done.usage is not None
    assert done.usage.completion_tokens == generated > 0
    chosen = sum(t["candidates"][t["chosen"]]["num_tokens"] for t in trace["trace"])
    details = done.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == generated - chosen
    # the prompts of every service: the rationalyst's and the agent's, the scorer's contexts
    assert all(s["prompt_tokens"] > 0 for s in services)
    assert done.usage.prompt_tokens == sum(s["prompt_tokens"] for s in services)


@pytest.mark.parametrize("fmt", ["reasoning_content", "reasoning", "think", "none"])
async def test_stream_reasoning_formats(fmt: str) -> None:
    async with openai_client() as (oa, _):
        stream = await oa.chat.completions.create(
            model="rationalyst",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"reasoning_format": fmt},
        )
        chunks = [c async for c in stream]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    field = {"reasoning_content": "reasoning_content", "reasoning": "reasoning"}.get(fmt)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get(field) or ""
        for c in chunks
        if c.choices and field
    )
    solution = "2 + 3 = 5.\nThe answer is: 5"
    if fmt == "think":
        assert content.startswith("<think>\n**Step 1**")
        assert content.endswith("</think>\n\n" + solution)
    else:
        assert content == solution
    if field:
        assert "**Step 1**" in reasoning and "**Step 2**" in reasoning
        # the search arrives before the answer: each step's chunk carries its reasoning
        step_chunks = [c for c in chunks if c.model_extra.get("rationalyst_step")]  # type: ignore[union-attr]
        assert all((c.choices[0].delta.model_extra or {}).get(field) for c in step_chunks)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens > 0 and usage_chunk.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    # the usage chunk counts the prompts of every service the response's usage reports
    (final,) = [c.model_extra["rationalyst"] for c in chunks if c.model_extra.get("rationalyst")]  # type: ignore[union-attr]
    services = [final["usage"][name] for name in ("rationalyst", "agent", "scorer")]
    assert all(s["prompt_tokens"] > 0 for s in services)
    assert usage_chunk.usage.prompt_tokens == sum(s["prompt_tokens"] for s in services)


async def test_stream_without_include_usage_sends_no_usage_chunk() -> None:
    async with openai_client() as (oa, _):
        stream = await oa.chat.completions.create(
            model="rationalyst",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_default_reasoning_format_is_a_setting() -> None:
    async with openai_client(reasoning_format="think") as (oa, _):
        done = await oa.chat.completions.create(model="rationalyst", messages=MESSAGES)  # type: ignore[arg-type]
    content = done.choices[0].message.content or ""
    assert content.startswith("<think>\n") and "</think>\n\n2 + 3 = 5." in content


async def test_stop_cuts_the_answer_and_stops_the_search() -> None:
    async with openai_client() as (oa, _):
        done = await oa.chat.completions.create(
            model="rationalyst",
            messages=MESSAGES,  # type: ignore[arg-type]
            stop=["= 5"],
        )
        stream = await oa.chat.completions.create(
            model="rationalyst",
            messages=MESSAGES,  # type: ignore[arg-type]
            stop="= 5",
            stream=True,
            extra_body={"reasoning_format": "none"},
        )
        chunks = [c async for c in stream]
    assert done.choices[0].message.content == "2 + 3 "
    assert done.choices[0].finish_reason == "stop"
    assert done.model_extra["rationalyst"]["steps"] == ["2 + 3 = 5."]  # type: ignore[index]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "2 + 3 "
    final = chunks[-1].model_extra["rationalyst"]  # type: ignore[index]
    assert final["steps"] == ["2 + 3 = 5."]  # no second step was searched for
    assert any("stop" in w for w in final["warnings"])
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stop_text_holds_back_a_stop_string_split_across_pieces() -> None:
    text = StopText(("END",))
    sent = [text.push("abc E"), text.push("N"), text.push("D more")]
    assert "".join(sent) + text.flush() == "abc "
    assert text.stopped
    plain = StopText(())
    assert plain.push("abc") + plain.flush() == "abc"


async def test_max_completion_tokens_lowers_max_steps_or_is_refused() -> None:
    async with openai_client() as (oa, _):
        body = {
            "n_candidates": 2,
            "max_step_tokens": 10,
            "max_rationale_tokens": 10,
            "max_steps": 9,
        }
        done = await oa.chat.completions.create(
            model="rationalyst",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=100,  # 30 a step: 3 fit, one kept for a forced answer
            extra_body=body,
        )
        warnings = done.model_extra["rationalyst"]["warnings"]  # type: ignore[index]
        assert any("max_steps lowered to 2" in w for w in warnings), warnings
        with pytest.raises(BadRequestError) as refused:
            await oa.chat.completions.create(
                model="rationalyst",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=40,
                extra_body=body,
            )
    err = refused.value.body
    assert isinstance(err, dict) and err["param"] == "max_tokens", err
    assert "40 tokens" in err["message"]


async def test_reasoning_effort_presets_and_explicit_options_win(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gateway import openai_compat
    from shared.gateway_schemas import GatewayChatRequest

    def request(**extra: Any) -> Any:
        chat = GatewayChatRequest(model="rationalyst", messages=MESSAGES, **extra)  # type: ignore[arg-type]
        return openai_compat.to_reason_request(chat, "rationalyst")[0]

    low, high = request(reasoning_effort="low"), request(reasoning_effort="high")
    assert (low.n_candidates, low.max_steps) == (2, 6)
    assert (high.n_candidates, high.max_steps) == (6, 32)
    assert request(reasoning_effort="high", max_steps=4).max_steps == 4
    async with openai_client() as (oa, _):
        with pytest.raises(BadRequestError) as refused:
            await oa.chat.completions.create(
                model="rationalyst",
                messages=MESSAGES,  # type: ignore[arg-type]
                reasoning_effort="minimal",
            )
    assert refused.value.body["param"] == "reasoning_effort"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"top_p": 0.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 2}, "n"),
        ({"n_candidates": 99}, "n_candidates"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ],
)
async def test_unsupported_parameters_are_openai_bad_requests(
    extra: dict[str, Any], param: str
) -> None:
    async with openai_client() as (oa, http):
        with pytest.raises(BadRequestError) as refused:
            await oa.chat.completions.create(
                model="rationalyst",
                messages=MESSAGES,  # type: ignore[arg-type]
                extra_body=extra,
            )
        r = await http.post(
            "/v1/chat/completions", json={"model": "rationalyst", "messages": MESSAGES, **extra}
        )
    err = refused.value.body
    assert isinstance(err, dict)
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert param in err["message"]
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param", "code"}


async def test_defaults_of_unsupported_parameters_are_accepted() -> None:
    async with openai_client() as (oa, _):
        done = await oa.chat.completions.create(
            model="rationalyst",
            messages=MESSAGES,  # type: ignore[arg-type]
            top_p=1,
            presence_penalty=0,
            logprobs=False,
            response_format={"type": "text"},
        )
    assert done.choices[0].message.content


async def test_unknown_model_is_openai_not_found() -> None:
    async with openai_client() as (oa, _):
        with pytest.raises(NotFoundError) as missing:
            await oa.chat.completions.create(model="gpt-4", messages=MESSAGES)  # type: ignore[arg-type]
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_a_stream_failing_midway_sends_an_openai_error() -> None:
    from shared.errors import ServiceUnavailable

    scorer = FakeModelService("scorer", fail=ServiceUnavailable("scorer gone"), fail_from_call=1)
    upstreams = fake_upstreams(agent=FakeModelService("agent"), scorer=scorer)
    app = create_app(GatewaySettings(), clients=upstreams)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "rationalyst", "messages": MESSAGES, "stream": True,
                  "strict": True, "max_steps": 3},
        )  # fmt: skip
    lines = [
        line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")
    ]
    error = json.loads(lines[-2])["error"]
    assert lines[-1] == "[DONE]"
    assert error["type"] == "server_error" and error["code"] == "service_unavailable"
    assert "scorer gone" in error["message"]


# -- the trace store -----------------------------------------------------------------------


async def test_traces_by_id_after_reason_stream_and_chat() -> None:
    async with openai_client() as (oa, http):
        r = await http.post(
            "/v1/reason", json={"question": "What is 2 + 3?"}, headers={"X-Request-Id": "t1"}
        )
        assert r.status_code == 200
        s = await http.post(
            "/v1/reason",
            json={"question": "What is 2 + 3?", "stream": True},
            headers={"X-Request-Id": "t2"},
        )
        assert "event: done" in s.text
        done = await oa.chat.completions.create(model="rationalyst", messages=MESSAGES)  # type: ignore[arg-type]
        got = [await http.get(f"/v1/traces/{i}") for i in ("t1", "t2", done.id)]
        missing = await http.get("/v1/traces/none-such")
    assert [g.status_code for g in got] == [200, 200, 200]
    assert got[0].json() == r.json()
    assert got[1].json()["id"] == "t2" and got[1].json()["steps"]
    assert got[2].json()["id"] == done.id.removeprefix("chatcmpl-")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "trace_id"


def response(rid: str) -> ReasonResponse:
    return ReasonResponse(
        id=rid, question="q", answer="5", steps=["s"], finished=True, finish=Finish.answer,
        answer_kind="number", answer_kind_source="detected", few_shot_source="default",
        few_shot_kind=None, heuristic_requested=Heuristic.greedy, heuristic_used=Heuristic.greedy,
        timings={"total_ms": 1.0, "model_ms": 1.0, "overhead_ms": 0.0},
    )  # fmt: skip


async def test_trace_store_keeps_the_last_n() -> None:
    store = TraceStore(2)
    for rid in ("a", "b", "c"):
        store.put(response(rid))
    assert (await store.get("c")).id == "c" and (await store.get("chatcmpl-b")).id == "b"
    with pytest.raises(NotFound):
        await store.get("a")
    await store.aclose()


async def test_trace_store_with_redis_down_still_answers_from_memory() -> None:
    from shared.errors import ServiceUnavailable

    store = TraceStore(1, redis_url="redis://127.0.0.1:1/0", ttl_s=60, timeout_s=0.5)
    store.put(response("a"))
    store.put(response("b"))  # "a" leaves memory; its Redis write failed
    assert (await store.get("b")).id == "b"
    with pytest.raises(ServiceUnavailable, match="trace store"):
        await store.get("a")
    await store.aclose()


@pytest.mark.parametrize("trace_tokens", [False, True])
async def test_trace_tokens_asks_the_scorer_for_token_logprobs(trace_tokens: bool) -> None:
    scorer = FakeModelService("scorer")
    agent = FakeModelService("agent", proposals=PROPOSALS)
    app = create_app(GatewaySettings(), clients=fake_upstreams(agent=agent, scorer=scorer))
    body = {"question": "What is 2 + 3?", "heuristic": "likelihood", "trace_tokens": trace_tokens}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        r = await c.post("/v1/reason", json=body)
    assert r.status_code == 200, r.text
    assert [q.return_tokens for q in scorer.requests("score")] == [trace_tokens]
    # the fake scores each continuation as one token: its text at its score
    distinct = [c for c in r.json()["trace"][0]["candidates"] if c["duplicate_of"] is None]
    assert len(distinct) == 2
    want = [
        [{"token": c["text"], "logprob": c["score"]}] if trace_tokens else None for c in distinct
    ]
    assert [c["tokens"] for c in distinct] == want
    nodes = [n for n in r.json()["tree"] if n["depth"] == 0]
    assert [n["tokens"] for n in nodes] == want  # the step's tree nodes carry them too
