"""One model service started as its own process on the real SmolLM2, called over real HTTP:
our own endpoints, the official openai client, and /v1/score against a direct forward pass."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent_url(model_service_factory: Callable[..., list[Any]]) -> str:
    # float32 so that scores can be compared with a direct forward pass tightly.
    (service,) = model_service_factory("agent", env={"MODEL_SERVER_DTYPE": "float32"})
    return str(service.url)


@pytest.fixture(scope="module")
def reference_model(model_path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return tok, model


def direct_window_logprobs(tok: Any, model: Any, context: str, continuation: str) -> list[float]:
    """Log-probs of the continuation's tokens from one plain forward of the full text, the
    window found by character offsets (what /v1/score promises)."""
    import torch

    full = context + continuation
    enc = tok(full, return_offsets_mapping=True, add_special_tokens=False)
    ids = torch.tensor([enc["input_ids"]])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    out = []
    for i, (_, end) in enumerate(enc["offset_mapping"]):
        if end > len(context) and i > 0:
            out.append(float(logprobs[i - 1, enc["input_ids"][i]]))
    return out


def test_propose_n4_and_seed_reproduces(agent_url: str) -> None:
    body = {"question": "Tom has 3 apples and buys 5 more. How many?", "n": 4, "seed": 7,
            "max_tokens": 24}  # fmt: skip
    first = httpx.post(f"{agent_url}/v1/propose", json=body, timeout=120)
    again = httpx.post(f"{agent_url}/v1/propose", json=body, timeout=120)
    assert first.status_code == 200, first.text
    candidates = [c["text"] for c in first.json()["candidates"]]
    assert len(candidates) == 4
    assert all(c.strip() for c in candidates)
    assert [c["text"] for c in again.json()["candidates"]] == candidates


def test_rationale_and_propose_report_their_prompt_tokens(agent_url: str, model_path: Path) -> None:
    """prompt_tokens is the length of the prompt the engine was given, as the service
    renders and tokenizes it; propose's n candidates share it, counted once."""
    from transformers import AutoTokenizer

    from services.model_server import prompts
    from services.model_server.engines.base import encode
    from shared.schemas import ProposeRequest, RationaleRequest, Role

    tok = AutoTokenizer.from_pretrained(model_path)
    system = prompts.system_prompt(Role.agent, None)
    body = {"question": "Tom has 3 apples and buys 5 more. How many?", "steps": ["3 + 5 = 8."]}
    rationale = httpx.post(f"{agent_url}/v1/rationale", json={**body, "max_tokens": 8}, timeout=120)
    assert rationale.status_code == 200, rationale.text
    want = encode(tok, prompts.rationale_prompt(tok, system, RationaleRequest(**body)))[0]
    assert rationale.json()["prompt_tokens"] == len(want) > 0
    counts = []
    for n in (1, 3):
        propose = {**body, "n": n, "max_tokens": 8, "seed": 1, "rationale": "add them"}
        r = httpx.post(f"{agent_url}/v1/propose", json=propose, timeout=120)
        assert r.status_code == 200, r.text
        want = encode(tok, prompts.propose_prompt(tok, system, ProposeRequest(**propose)))[0]
        assert r.json()["prompt_tokens"] == len(want) > 0
        counts.append(r.json()["prompt_tokens"])
    assert counts[0] == counts[1]


@pytest.mark.parametrize(
    ("context", "continuations"),
    [
        ("The total is 12", ["34 apples.", " apples.", "3"]),
        ("Question: what is 7 times 6?\nAnswer:", [" 42", " It is 42.", " forty-two", " 41"]),
        ("Once upon a ti", ["me there was a king.", "ger."]),
    ],
)
def test_score_equals_direct_forward(
    agent_url: str, reference_model: tuple[Any, Any], context: str, continuations: list[str]
) -> None:
    r = httpx.post(
        f"{agent_url}/v1/score",
        json={"context": context, "continuations": continuations},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    tok, model = reference_model
    for cont, scored in zip(continuations, r.json()["scores"], strict=True):
        expected = direct_window_logprobs(tok, model, context, cont)
        got = [t["logprob"] for t in scored["tokens"]]
        assert got == pytest.approx(expected, abs=1e-3)
        assert scored["mean"] == pytest.approx(sum(expected) / len(expected), abs=1e-3)


def test_openai_client_completions_and_chat(agent_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{agent_url}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["agent"]

    echo = client.completions.create(
        model="agent", prompt="The capital of France is Paris", max_tokens=0, echo=True,
        logprobs=1,
    )  # fmt: skip
    lp = echo.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.tokens is not None
    assert lp.token_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == "The capital of France is Paris"

    gen = client.completions.create(
        model="agent", prompt="1, 2, 3,", max_tokens=8, n=2, temperature=0.8, seed=3
    )
    assert len(gen.choices) == 2
    assert gen.usage is not None and gen.usage.completion_tokens > 0

    chat = client.chat.completions.create(
        model="agent",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        n=2,
        logprobs=True,
    )
    assert len(chat.choices) == 2
    assert chat.choices[0].message.content
    assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content

    stream = client.chat.completions.create(
        model="agent",
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=16,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip()


def test_bad_inputs_over_http(agent_url: str) -> None:
    too_long = httpx.post(
        f"{agent_url}/v1/score",
        json={"context": "word " * 5000, "continuations": ["x"]},
        timeout=60,
    )
    assert too_long.status_code == 422
    assert too_long.json()["error"]["field"] == "continuations[0]"
    unknown = httpx.post(f"{agent_url}/v1/propose", json={"question": "q", "nn": 2}, timeout=10)
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "nn"


@pytest.mark.parametrize(
    "edges",
    [
        {"temperature": 1e-40},
        {"temperature": 5e-324, "top_p": 5e-324, "seed": 2**63 - 1},
        {"temperature": 2.0, "top_p": 1e-300, "seed": 0},
    ],
)
def test_numeric_edges_never_break_the_service(agent_url: str, edges: dict[str, Any]) -> None:
    body = {"prompt": "The sky is", "max_tokens": 4, "n": 2, "logprobs": 1, **edges}
    r = httpx.post(f"{agent_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2
    # the service still serves everyone
    assert httpx.get(f"{agent_url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{agent_url}/ready", timeout=10).status_code == 200
    ok = httpx.post(
        f"{agent_url}/v1/propose", json={"question": "What is 2 + 2?", "max_tokens": 8}, timeout=120
    )
    assert ok.status_code == 200, ok.text
