"""The model service's HTTP contract on a fake engine: validation, envelopes, limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.model_server.app import create_app
from services.model_server.handlers import aggregate
from services.model_server.settings import ModelServerSettings
from shared.schemas import ProposeResponse, RationaleResponse, Role

pytestmark = pytest.mark.unit


def settings(**kw: Any) -> ModelServerSettings:
    return ModelServerSettings(role=Role.agent, max_n=4, max_continuations=3, **kw)


async def test_propose_returns_n_candidates(fake_engine, asgi_client) -> None:
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post("/v1/propose", json={"question": "1+1?", "n": 3})
    assert r.status_code == 200, r.text
    assert [c["text"] for c in r.json()["candidates"]] == ["Step 0.", "Step 1.", "Step 2."]
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/propose", {"question": "q", "n": 5}, "n"),
        ("/v1/propose", {"question": "q", "n": 0}, "n"),
        ("/v1/propose", {"question": "", "n": 1}, "question"),
        ("/v1/propose", {"question": "q", "steps": [""]}, "steps[0]"),
        ("/v1/propose", {"question": "q", "bogus": 1}, "bogus"),
        ("/v1/propose", {"question": "q", "temperature": "hot"}, "temperature"),
        ("/v1/propose", {"question": "q", "max_tokens": 5000}, "max_tokens"),
        ("/v1/rationale", {"steps": []}, "question"),
        ("/v1/score", {"context": "a", "continuations": []}, "continuations"),
        ("/v1/score", {"context": "a", "continuations": ["b", "c", "d", "e"]}, "continuations"),
        ("/v1/score", {"context": "a", "continuations": [""]}, "continuations[0]"),
        ("/v1/score", {"context": [], "continuations": ["b"]}, "context"),
        ("/v1/score", {"context": "a", "continuations": ["b"], "decay": 0}, "decay"),
        ("/v1/score", {"context": "a", "continuations": ["b", "c"], "given": ["x"]}, "given"),
        (
            "/v1/score",
            {"context": "a", "contexts": ["b"], "continuations": ["c"], "context_index": [2]},
            "context_index",
        ),
        (
            "/v1/score",
            {"context": "a", "continuations": ["c"], "context_index": [0, 0]},
            "context_index",
        ),
        ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": [10**9]}, "prompt"),  # outside the vocabulary
        ("/v1/completions", {"prompt": [[5], [7, -3 + 10**12]]}, "prompt[1]"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 9}, "n"),
        # Unknown fields pass (OpenAI clients send them); a known one of another type does not.
        ("/v1/chat/completions", {"messages": [{"role": "user"}], "stream": 0.0}, "stream"),
        ("/v1/completions", {"prompt": "a", "temperature": "0.5"}, "temperature"),
        ("/v1/completions", {"prompt": "a", "echo": "yes"}, "echo"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    fake_engine, asgi_client, path: str, body: dict[str, Any], field: str
) -> None:
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post(path, json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["field"] == field
    assert error["request_id"]


@pytest.mark.parametrize(
    ("path", "body", "n", "max_tokens"),
    [
        ("/v1/propose", {"question": "q"}, 2, 8),  # defaults n=3, max_tokens=128
        ("/v1/rationale", {"question": "q"}, 1, 8),
        ("/v1/completions", {"prompt": "a"}, 1, 8),  # default max_tokens=16
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 1, 8),
    ],
)
async def test_defaults_over_the_limits_are_lowered_to_them(
    fake_engine, asgi_client, path: str, body: dict[str, Any], n: int, max_tokens: int
) -> None:
    app = create_app(
        ModelServerSettings(role=Role.agent, max_n=2, max_tokens_limit=8), engine=fake_engine
    )
    async with asgi_client(app) as client:
        r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    ((kind, params),) = fake_engine.calls
    assert kind == "generate"
    assert (params.n, params.max_tokens) == (n, max_tokens)


async def test_malformed_json_is_422(fake_engine, asgi_client) -> None:
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post(
            "/v1/score", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert r.status_code == 422
    assert "JSON" in r.json()["error"]["message"]


async def test_prompt_longer_than_context_is_422(fake_engine, asgi_client) -> None:
    fake_engine.max_model_len = 64
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post("/v1/propose", json={"question": "why? " * 100})
        s = await client.post("/v1/score", json={"context": "x " * 100, "continuations": ["y"]})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "steps"
    assert s.status_code == 422
    assert s.json()["error"]["field"] == "continuations[0]"


async def test_engine_failure_is_503_and_not_ready(fake_engine, asgi_client) -> None:
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        assert (await client.get("/ready")).status_code == 200
        fake_engine.fail = RuntimeError("boom")
        r = await client.post("/v1/propose", json={"question": "q"})
        assert r.status_code == 503
        assert "boom" in r.json()["error"]["message"]
        fake_engine.fail = MemoryError()
        r = await client.post("/v1/propose", json={"question": "q"})
        assert r.status_code == 503
        ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["error"]["type"] == "engine_error"


async def test_not_ready_until_loaded(fake_engine, asgi_client) -> None:
    gate = asyncio.Event()

    async def slow_start() -> None:
        await gate.wait()

    fake_engine.start = slow_start
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        assert (await client.get("/health")).status_code == 200
        r = await client.get("/ready")
        assert r.status_code == 503
        assert "loading" in r.json()["error"]["message"]
        assert (await client.post("/v1/propose", json={"question": "q"})).status_code == 503
        gate.set()
        for _ in range(50):
            if (await client.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/ready")).status_code == 200


async def test_engine_timeout_is_504(fake_engine, asgi_client) -> None:
    async def hang(*_: Any) -> Any:
        await asyncio.sleep(10)

    fake_engine.generate = hang
    app = create_app(settings(request_timeout_s=0.05), engine=fake_engine)
    async with asgi_client(app) as client:
        r = await client.post("/v1/propose", json={"question": "q"})
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "timeout"


async def test_internal_token_required_when_set(fake_engine, asgi_client) -> None:
    app = create_app(settings(internal_token="s3cret"), engine=fake_engine)
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 200
        r = await client.post("/v1/propose", json={"question": "q"})
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "unauthorized"
        ok = await client.post(
            "/v1/propose", json={"question": "q"}, headers={"Authorization": "Bearer s3cret"}
        )
    assert ok.status_code == 200


async def test_score_aggregates_and_chat_context(fake_engine, asgi_client) -> None:
    body = {
        "context": [{"role": "user", "content": "What is 2+2?"}],
        "continuations": ["It is 4.", "Four"],
        "decay": 0.9,
        "aggregate": "decayed_sum",
    }
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    (_, job) = fake_engine.calls[-1]
    # The continuation is scored as the next assistant turn of the service's chat template.
    assert job.texts[0].endswith("<|im_start|>assistant\nIt is 4.")
    for s in r.json()["scores"]:
        lps = [t["logprob"] for t in s["tokens"]]
        assert s["num_tokens"] == len(lps)
        assert s["score"] == pytest.approx(s["decayed_sum"])
        assert s["decayed_sum"] == pytest.approx(sum(0.9**i * lp for i, lp in enumerate(lps)))
        assert s["mean"] == pytest.approx(sum(lps) / len(lps))
    assert "".join(t["token"] for t in r.json()["scores"][0]["tokens"]) == "It is 4."


async def test_score_given_text_conditions_without_being_scored(fake_engine, asgi_client) -> None:
    body = {
        "context": [{"role": "user", "content": "Tom has 3 apples."}],
        "continuations": ["He has 8.", "He has 8."],
        "given": ["<BOT>Add the 5 he buys.<EOT>\n", ""],
    }
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    (_, job) = fake_engine.calls[-1]
    assert job.texts[0].endswith("assistant\n<BOT>Add the 5 he buys.<EOT>\nHe has 8.")
    assert job.texts[1].endswith("assistant\nHe has 8.")
    assert [job.texts[i][a:b] for i, (a, b) in enumerate(job.spans)] == ["He has 8."] * 2
    with_r, without = r.json()["scores"]
    assert [t["token"] for t in with_r["tokens"]] == [t["token"] for t in without["tokens"]]
    assert "".join(t["token"] for t in with_r["tokens"]) == "He has 8."


async def test_score_continuations_of_several_contexts_in_one_batch(
    fake_engine, asgi_client
) -> None:
    body = {
        "context": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A."}],
        "contexts": [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B."}]],
        "continuations": ["A2.", "B2.", "A3."],
        "context_index": [0, 1, 0],
    }
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    (_, job) = fake_engine.calls[-1]
    assert len(job.texts) == 3 and len(r.json()["scores"]) == 3
    assert "A.<|im_end|>" in job.texts[0] and "B." not in job.texts[0]
    assert "B.<|im_end|>" in job.texts[1] and job.texts[1].endswith("assistant\nB2.")
    assert [job.texts[i][a:b] for i, (a, b) in enumerate(job.spans)] == ["A2.", "B2.", "A3."]


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"context": []}, "context"), ({"context": "Q", "contexts": ["A", []]}, "contexts")],
)
async def test_score_an_empty_chat_is_a_422_naming_it(
    fake_engine, asgi_client, extra: dict[str, object], field: str
) -> None:
    body = {"context": "Q", "continuations": ["A", "B"], **extra}
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post("/v1/score", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith(field)


def test_aggregate_formulas() -> None:
    agg = aggregate([-1.0, -2.0, -3.0], 0.5)
    assert agg["sum"] == -6.0
    assert agg["mean"] == -2.0
    assert agg["decayed_sum"] == pytest.approx(-1.0 - 1.0 - 0.75)
    assert agg["decayed_mean"] == pytest.approx(-2.75 / 3)


async def test_rationale_prompt_follows_reference_format(fake_engine, asgi_client) -> None:
    app = create_app(ModelServerSettings(role=Role.rationalyst), engine=fake_engine)
    calls: list[list[int]] = []
    original = fake_engine.generate

    async def spy(ids: list[int], params: Any) -> Any:
        calls.append(ids)
        return await original(ids, params)

    fake_engine.generate = spy
    async with asgi_client(app) as client:
        r = await client.post(
            "/v1/rationale", json={"question": "Q?", "steps": ["First.", "Second."]}
        )
    assert r.status_code == 200, r.text
    assert r.json()["rationale"] == "Step 0."
    prompt = fake_engine.tokenizer.decode(calls[0])
    assert "Question: Q?\nAnswer: First. Second." in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("role", "path", "body"),
    [
        (Role.rationalyst, "/v1/rationale", {"question": "Q?", "steps": ["First."]}),
        (Role.agent, "/v1/propose", {"question": "Q?", "steps": ["First."], "n": 3}),
    ],
)
async def test_generators_report_the_prompt_tokens_the_engine_got(
    fake_engine, asgi_client, role: Role, path: str, body: dict[str, Any]
) -> None:
    calls: list[list[int]] = []
    original = fake_engine.generate

    async def spy(ids: list[int], params: Any) -> Any:
        calls.append(ids)
        return await original(ids, params)

    fake_engine.generate = spy
    app = create_app(ModelServerSettings(role=role, max_n=4), engine=fake_engine)
    async with asgi_client(app) as client:
        r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    (ids,) = calls  # one engine call: propose's n candidates share one prompt, counted once
    assert r.json()["prompt_tokens"] == len(ids) > 0


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (
            RationaleResponse,
            {"rationale": "r", "mean_logprob": -1.0, "num_tokens": 1, "finish_reason": "stop"},
        ),
        (ProposeResponse, {"candidates": []}),
    ],
)
def test_generator_responses_require_prompt_tokens(model: type[BaseModel], body: dict) -> None:
    """The gateway counts every generator's prompt: an answer without it does not parse."""
    with pytest.raises(ValidationError, match="prompt_tokens"):
        model.model_validate(body)
    assert model.model_validate({**body, "prompt_tokens": 7}).prompt_tokens == 7  # type: ignore[attr-defined]
    schema = model.model_json_schema()
    assert "prompt_tokens" in schema["required"]
    assert schema["properties"]["prompt_tokens"]["description"]


async def _propose_prompt(fake_engine: Any, asgi_client: Any, body: dict[str, Any]) -> Any:
    """POST /v1/propose; the response and the prompt the engine got."""
    calls: list[list[int]] = []
    original = fake_engine.generate

    async def spy(ids: list[int], params: Any) -> Any:
        calls.append(ids)
        return await original(ids, params)

    fake_engine.generate = spy
    async with asgi_client(create_app(settings(), engine=fake_engine)) as client:
        r = await client.post("/v1/propose", json=body)
    assert r.status_code == 200, r.text
    return r, fake_engine.tokenizer.decode(calls[0])


async def test_propose_with_a_step_prefix_forces_how_the_step_opens(
    fake_engine, asgi_client
) -> None:
    r, prompt = await _propose_prompt(
        fake_engine,
        asgi_client,
        {"question": "1+1?", "steps": ["1 + 1 = 2."], "n": 2, "step_prefix": "The answer is:"},
    )
    assert prompt.endswith("<|im_start|>assistant\nThe answer is:")
    texts = [c["text"] for c in r.json()["candidates"]]
    assert texts == ["The answer is:Step 0.", "The answer is:Step 1."]


async def test_propose_without_demos_uses_the_default_set_of_the_answer_kind(
    fake_engine, asgi_client
) -> None:
    _, numeric = await _propose_prompt(fake_engine, asgi_client, {"question": "What is 2 + 3?"})
    _, yes_no = await _propose_prompt(fake_engine, asgi_client, {"question": "Is ice cold?"})
    assert "A baker makes 24 rolls" in numeric and "Can water turn into ice?" not in numeric
    assert "Can water turn into ice?" in yes_no and "A baker makes 24 rolls" not in yes_no
