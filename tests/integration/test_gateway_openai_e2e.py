"""The openai client against a gateway on the real embedded model: the search in
``reasoning_content`` (stream and not), the include_usage chunk with real token counts, refused
parameters as the SDK's BadRequestError, and the trace kept by id."""

from __future__ import annotations

import httpx
import pytest
from openai import BadRequestError, OpenAI

pytestmark = pytest.mark.integration

SMALL = {"max_steps": 2, "n_candidates": 2, "max_step_tokens": 24, "max_rationale_tokens": 16}
MESSAGES = [{"role": "user", "content": "A pen costs 2 dollars. How much do 4 pens cost?"}]


@pytest.fixture(scope="module")
def oa(gateway_url: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", timeout=300, max_retries=0)


def test_reasoning_content_non_stream_and_trace_by_id(oa: OpenAI, gateway_url: str) -> None:
    done = oa.chat.completions.create(
        model="rationalyst",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_body={**SMALL, "heuristic": "likelihood"},
    )
    message = done.choices[0].message
    trace = done.model_extra["rationalyst"]  # type: ignore[index]
    assert message.content == "\n".join(trace["steps"])
    reasoning = message.model_extra["reasoning_content"]  # type: ignore[index]
    assert reasoning.startswith("**Step 1**")
    for step in trace["trace"]:
        assert all(c["text"] in reasoning for c in step["candidates"])
    assert done.usage is not None and done.usage.completion_tokens > 0
    assert done.usage.prompt_tokens > 0
    details = done.usage.completion_tokens_details
    assert details is not None and 0 < details.reasoning_tokens <= done.usage.completion_tokens
    kept = httpx.get(f"{gateway_url}/v1/traces/{done.id}", timeout=30)
    assert kept.status_code == 200 and kept.json()["steps"] == trace["steps"]


def test_reasoning_content_stream_with_usage_chunk(oa: OpenAI) -> None:
    stream = oa.chat.completions.create(
        model="rationalyst",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        extra_body={**SMALL, "heuristic": "likelihood"},  # the scorer reports prompt tokens
    )
    chunks = list(stream)
    with_choices = [c for c in chunks if c.choices]
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in with_choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in with_choices)
    final = with_choices[-1].model_extra["rationalyst"]  # type: ignore[index]
    assert "**Step 1**" in reasoning
    assert content == "\n".join(final["steps"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"reasoning_effort": "minimal"}, "reasoning_effort"),
        ({"max_completion_tokens": 8}, "max_completion_tokens"),
    ],
)
def test_unsupported_parameters_raise_bad_request(
    oa: OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(BadRequestError) as refused:
        oa.chat.completions.create(model="rationalyst", messages=MESSAGES, **kwargs)  # type: ignore[call-overload]
    body = refused.value.body
    assert isinstance(body, dict) and body["param"] == param, body
    assert body["type"] == "invalid_request_error" and param in body["message"]
