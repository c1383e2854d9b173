"""The remote engine against real OpenAI-compatible servers in subprocesses, compared with
direct transformers forward passes: our own model service (``python -m services.model_server``,
transformers engine, float32) and, where vLLM is installed, vLLM's OpenAI server."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from gateway.ensemble import free_port, start_process, stop_processes
from services.model_server.engines.base import Engine, SamplingParams, ScoreJob, encode
from services.model_server.engines.remote_engine import RemoteEngine
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError, InvalidRequest, ServiceUnavailable, UpstreamTimeout
from tests.integration.reference import chat, full_logprobs, job_of

pytestmark = pytest.mark.integration

# The upstream runs the same float32 weights through transformers; JSON carries the floats.
# Measured: ~1e-5 per token (batching and KV-cache reuse upstream); the bound leaves room.
TOL = 1e-3


@pytest.fixture(scope="module")
def upstream(model_service_factory: Callable[..., list[Any]]) -> str:
    """A scorer service on the embedded model in float32: the real server under test."""
    (service,) = model_service_factory("scorer", env={"MODEL_SERVER_DTYPE": "float32"})
    return str(service.url)


def remote_settings(url: str, model_path: Path, **overrides: Any) -> ModelServerSettings:
    values: dict[str, Any] = {
        "engine": "remote",
        "remote_url": url,
        "model": "scorer",  # the name the upstream serves
        "tokenizer": str(model_path),
        **overrides,
    }
    return ModelServerSettings(**values)


@pytest.fixture(scope="module")
async def engine(upstream: str, model_path: Path) -> AsyncIterator[RemoteEngine]:
    eng = RemoteEngine(remote_settings(upstream, model_path))
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
def reference(model_path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()


async def test_remote_engine_satisfies_protocol(engine: RemoteEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.kind == "remote"
    assert engine.healthy()
    assert engine.max_model_len == 2048


@pytest.mark.parametrize(
    ("context", "continuations"),
    [
        ("The total is 12", ["34 apples", " apples", "0", "3."]),  # merge at the boundary
        ("She opened the win", ["dow.", "ter coat and put it on", "e"]),
        ("CHAT", ["The answer is 4.", "4", " Four", "Let me think: 2 + 2 = 4.", "I don't know."]),
    ],
)
async def test_score_matches_transformers(
    engine: RemoteEngine, reference: Any, context: str, continuations: list[str]
) -> None:
    if context == "CHAT":
        context = chat(engine, "What is 2 + 2?")
    job = job_of(context, continuations)
    windows, prompt_tokens = await engine.score(job)
    assert prompt_tokens <= sum(len(ids) for ids in job.token_ids)
    worst = 0.0
    for ids, (lo, hi), window in zip(job.token_ids, job.windows, windows, strict=True):
        assert window.token_ids == ids[lo:hi]  # the same windows as every other engine
        assert len(window.tokens) == len(window.logprobs) == hi - lo
        expected = full_logprobs(reference, ids)
        for j, got in zip(range(lo, hi), window.logprobs, strict=True):
            assert got is not None
            worst = max(worst, abs(got - float(expected[j - 1, ids[j]])))
    print(f"max |remote - transformers| = {worst:.2e}")
    assert worst < TOL


async def test_score_window_at_text_start_has_none_first(engine: RemoteEngine) -> None:
    windows, _ = await engine.score(ScoreJob(texts=["Hello world"], spans=[(0, 11)]))
    assert windows[0].logprobs[0] is None
    assert all(lp is not None for lp in windows[0].logprobs[1:])


async def test_generate_n2_returns_raw_model_logprobs(engine: RemoteEngine, reference: Any) -> None:
    ids = encode(engine.tokenizer, chat(engine, "Write one sentence about the sea."))[0]
    params = SamplingParams(max_tokens=8, n=2, temperature=0.8, seed=5)
    completions = await engine.generate(ids, params)
    assert len(completions) == 2
    for c in completions:
        assert c.finish_reason in ("stop", "length")
        assert 1 <= len(c.token_ids) == len(c.logprobs) <= 8
        assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        expected = full_logprobs(reference, ids + c.token_ids)
        for k, (tok, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
            assert abs(lp - float(expected[len(ids) + k - 1, tok])) < TOL
    again = await engine.generate(ids, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]


async def test_generate_stop_string_and_length(engine: RemoteEngine) -> None:
    ids = encode(engine.tokenizer, chat(engine, "Count from one to ten in words."))[0]
    [free] = await engine.generate(ids, SamplingParams(max_tokens=12, temperature=0.0))
    assert free.finish_reason == "length"
    assert len(free.token_ids) == 12
    stop = free.text.split()[2]
    [stopped] = await engine.generate(
        ids, SamplingParams(max_tokens=12, temperature=0.0, stop=(stop,))
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]


async def test_upstream_rejection_is_engine_error_with_its_message(engine: RemoteEngine) -> None:
    ids = encode(engine.tokenizer, "Hello")[0]
    with pytest.raises(EngineError, match="n must be <= 16"):
        await engine.generate(ids, SamplingParams(max_tokens=2, n=17))
    with pytest.raises(InvalidRequest):  # checked locally, never sent
        await engine.generate([], SamplingParams(max_tokens=2))
    assert engine.healthy()


async def test_unreachable_upstream_is_service_unavailable(model_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    eng = RemoteEngine(remote_settings(url, model_path))
    await eng.start()  # an upstream that is down does not stop the start
    try:
        assert eng.healthy()
        with pytest.raises(ServiceUnavailable, match="remote backend unreachable"):
            await eng.generate([1, 2, 3], SamplingParams(max_tokens=2))
        with pytest.raises(ServiceUnavailable):
            await eng.score(ScoreJob(texts=["a b"], spans=[(1, 3)]))
    finally:
        await eng.close()
    assert not eng.healthy()


async def test_slow_upstream_is_upstream_timeout(upstream: str, model_path: Path) -> None:
    eng = RemoteEngine(remote_settings(upstream, model_path, request_timeout_s=0.05))
    await eng.start()
    try:
        ids = encode(eng.tokenizer, "Tell me a long story.")[0]
        with pytest.raises(UpstreamTimeout):
            await eng.generate(ids, SamplingParams(max_tokens=40, temperature=0.0))
    finally:
        await eng.close()


@pytest.fixture(scope="module")
def vllm_upstream(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM's OpenAI server on the embedded model (float32, eager), until the module ends."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
        "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "2048", "--dtype", "float32",
    ]  # fmt: skip
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = start_process("vllm-serve", cmd, url, log_dir=tmp_path_factory.mktemp("vllm"), env=env)
    try:
        deadline = time.monotonic() + float(os.environ.get("RATIONALYST_TEST_READY_TIMEOUT", "600"))
        while True:
            if not proc.alive():
                pytest.fail(f"vllm serve exited:\n{proc.log_tail()}")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy in time:\n{proc.log_tail()}")
            time.sleep(1.0)
        yield url
    finally:
        stop_processes([proc])


@pytest.mark.vllm
async def test_vllm_openai_server_as_upstream(
    vllm_upstream: str, model_path: Path, reference: Any
) -> None:
    """vLLM prints decoded token strings (EOS included): the engine maps them back to ids."""
    eng = RemoteEngine(remote_settings(vllm_upstream, model_path, model="smol", max_model_len=None))
    await eng.start()
    try:
        assert eng.max_model_len == 2048  # from vLLM's /v1/models
        context = chat(eng, "What is 2 + 2?")
        job = job_of(context, ["The answer is 4.", "4", " Four", "Ünïcødé 😀!"])
        windows, _ = await eng.score(job)
        for ids, (lo, hi), window in zip(job.token_ids, job.windows, windows, strict=True):
            assert window.token_ids == ids[lo:hi]
            expected = full_logprobs(reference, ids)
            for j, got in zip(range(lo, hi), window.logprobs, strict=True):
                assert got is not None
                assert abs(got - float(expected[j - 1, ids[j]])) < TOL
        ids = encode(eng.tokenizer, context)[0]
        completions = await eng.generate(ids, SamplingParams(max_tokens=16, n=2, seed=3))
        assert len(completions) == 2
        for c in completions:
            assert eng.tokenizer.eos_token_id not in c.token_ids
            assert c.text == eng.tokenizer.decode(c.token_ids, skip_special_tokens=True)
            expected = full_logprobs(reference, ids + c.token_ids)
            for k, (tok, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
                assert abs(lp - float(expected[len(ids) + k - 1, tok])) < TOL
    finally:
        await eng.close()


async def test_rollout_through_the_remote_engine(engine: RemoteEngine) -> None:
    """/v1/rollout's work on this engine: the first step as one n-sample request, later
    steps as concurrent requests to the upstream; a seed reproduces the completions."""
    from services.model_server.handlers import ModelService
    from services.model_server.metrics import ModelMetrics
    from shared.schemas import Role, RolloutRequest

    service = ModelService(ModelServerSettings(role=Role.agent), engine, ModelMetrics())
    req = RolloutRequest(
        question="Tom has 3 apples and buys 5 more. How many?",
        n=2, seed=3, max_steps=2, max_step_tokens=16,
    )  # fmt: skip
    first = await service.rollout(req)
    again = await service.rollout(req)
    assert len(first.completions) == 2
    for c in first.completions:
        assert 1 <= len(c.steps) <= 2
        assert all(s and s == s.strip() for s in c.steps)
        assert c.completion_tokens > 0
    assert [c.steps for c in again.completions] == [c.steps for c in first.completions]


async def test_propose_and_rationale_through_the_remote_engine_report_prompt_tokens(
    engine: RemoteEngine,
) -> None:
    """The generators' prompt_tokens on this engine: the prompt the service rendered and
    sent to the upstream as token ids, propose's n candidates counted once."""
    from services.model_server import prompts
    from services.model_server.handlers import ModelService
    from services.model_server.metrics import ModelMetrics
    from shared.schemas import ProposeRequest, RationaleRequest, Role

    service = ModelService(ModelServerSettings(role=Role.agent), engine, ModelMetrics())
    tok = engine.tokenizer
    question, steps = "Tom has 3 apples and buys 5 more. How many?", ["3 + 5 = 8."]
    rationale_req = RationaleRequest(question=question, steps=steps, max_tokens=8)
    rationale = await service.rationale(rationale_req)
    want = encode(tok, prompts.rationale_prompt(tok, service.system, rationale_req))[0]
    assert rationale.prompt_tokens == len(want) > 0
    propose_req = ProposeRequest(question=question, steps=steps, n=2, seed=1, max_tokens=8)
    proposals = await service.propose(propose_req)
    assert len(proposals.candidates) == 2
    want = encode(tok, prompts.propose_prompt(tok, service.system, propose_req))[0]
    assert proposals.prompt_tokens == len(want) > 0
