"""The transformers engine on the embedded model (CPU, float32), against direct forward passes."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from services.model_server.engines import transformers_engine
from services.model_server.engines.base import (
    Engine,
    SamplingParams,
    ScoreJob,
    common_prefix_len,
)
from services.model_server.engines.transformers_engine import TransformersEngine
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError, InvalidRequest
from tests.integration.reference import chat, full_logprobs, job_of, prompt_ids

pytestmark = pytest.mark.integration

TOL = 1e-4


@pytest.fixture(scope="module")
async def engine(model_path: Path) -> AsyncIterator[TransformersEngine]:
    settings = ModelServerSettings(device="cpu", dtype="float32", batch_wait_ms=20.0)
    eng = TransformersEngine(settings, str(model_path))
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
def reference(model_path: Path) -> Any:
    """An independent copy of the model for direct, cache-free forward passes."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()


@pytest.fixture
def batches(engine: TransformersEngine) -> Iterator[list[tuple[str, int]]]:
    """Records the engine's ``on_batch`` calls during one test."""
    seen: list[tuple[str, int]] = []
    engine.on_batch = lambda kind, rows: seen.append((kind, rows))
    yield seen
    engine.on_batch = None


def greedy_reference(
    reference: Any, engine: TransformersEngine, ids: list[int], n: int
) -> list[int]:
    with torch.inference_mode():
        out = reference.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=engine.tokenizer.eos_token_id,
            pad_token_id=engine.tokenizer.eos_token_id,
        )
    new = [int(t) for t in out[0, len(ids) :]]
    eos = engine.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


async def check_score(engine: TransformersEngine, reference: Any, job: ScoreJob) -> int:
    windows, prompt_tokens = await engine.score(job)
    assert len(windows) == len(job.texts)
    for ids, (lo, hi), window in zip(job.token_ids, job.windows, windows, strict=True):
        assert window.token_ids == ids[lo:hi]
        assert len(window.tokens) == len(window.logprobs) == hi - lo
        expected = full_logprobs(reference, ids)
        for j, got in zip(range(lo, hi), window.logprobs, strict=True):
            if j == 0:
                assert got is None
            else:
                assert got is not None
                assert abs(got - float(expected[j - 1, ids[j]])) < TOL, (j, window.tokens)
    return prompt_tokens


def test_engine_satisfies_protocol(engine: TransformersEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.kind == "transformers"
    assert engine.healthy()
    assert engine.max_model_len == 2048


CONTINUATION_SETS = {
    "number-boundary": ("The total is 12", ["34 apples", " apples", "0", "3."]),
    "mid-word": (
        "She opened the win",
        ["dow.", "ter coat and put it on before she walked out into the snow", "e"],
    ),
    "single": ("Paris is the capital of", [" France."]),
}


@pytest.mark.parametrize("name", list(CONTINUATION_SETS))
async def test_score_raw_text_matches_full_forward(
    engine: TransformersEngine, reference: Any, name: str
) -> None:
    context, continuations = CONTINUATION_SETS[name]
    await check_score(engine, reference, job_of(context, continuations))


async def test_score_chat_context_eight_continuations_matches_full_forward(
    engine: TransformersEngine, reference: Any
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
    await check_score(engine, reference, job_of(context, continuations))


async def test_score_window_at_text_start_has_none_first(
    engine: TransformersEngine, reference: Any
) -> None:
    job = ScoreJob(texts=["Hello world", "Goodbye now"], spans=[(0, 11), (0, 11)])
    await check_score(engine, reference, job)
    windows, _ = await engine.score(job)
    assert [w.logprobs[0] for w in windows] == [None, None]


async def test_score_prompt_tokens_counts_shared_prefix_once(
    engine: TransformersEngine, reference: Any
) -> None:
    job = job_of(chat(engine, "Name a colour."), ["Red.", "Blue is nice.", "Green", "I like it."])
    prompt_tokens = await check_score(engine, reference, job)
    lengths = [len(ids) for ids in job.token_ids]
    p = min(common_prefix_len(job.token_ids), *(lo for lo, _ in job.windows))
    assert p > 10
    assert prompt_tokens == p + sum(n - p for n in lengths)
    assert prompt_tokens < sum(lengths)


@pytest.mark.parametrize("mode", ["packed", "packed-prefix-pass", "padded"])
async def test_score_large_k_is_chunked_and_still_exact(
    engine: TransformersEngine,
    reference: Any,
    batches: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    # The embedded model packs suffixes into one row (with the prefix in the same call for
    # short contexts, in a pass of its own for long ones); the padded path serves attention
    # kinds that take no custom mask. All must give the same exact scores.
    monkeypatch.setattr(engine, "_packable", mode != "padded")
    if mode == "packed-prefix-pass":
        monkeypatch.setattr(transformers_engine, "_SINGLE_PASS_TOKENS", 1)
    monkeypatch.setattr(engine.settings, "max_batch_size", 2)
    continuations = [" three, four", " four, five", " six and", "! Go on", " x y z"]
    await check_score(engine, reference, job_of("Count: one, two,", continuations))
    assert batches == [("score", 2), ("score", 2), ("score", 1)]


@pytest.mark.parametrize("single_pass_tokens", [1024, 1], ids=["one-call", "prefix-pass"])
async def test_score_texts_diverging_before_their_windows(
    engine: TransformersEngine,
    reference: Any,
    monkeypatch: pytest.MonkeyPatch,
    single_pass_tokens: int,
) -> None:
    # The shared prefix ends before the windows start, and no window starts right after it.
    monkeypatch.setattr(transformers_engine, "_SINGLE_PASS_TOKENS", single_pass_tokens)
    red, blue = "Question A: is it red? Yes it is.", "Question B: is it blue? No it is not."
    job = ScoreJob(
        texts=[red, blue], spans=[(red.index("Yes"), len(red)), (blue.index("No"), len(blue))]
    )
    prompt_tokens = await check_score(engine, reference, job)
    p = common_prefix_len(job.token_ids)
    assert 1 <= p < min(lo for lo, _ in job.windows)
    assert prompt_tokens == p + sum(len(ids) - p for ids in job.token_ids)


async def test_score_one_token_continuations_need_only_the_prefix_pass(
    engine: TransformersEngine, reference: Any, batches: list[tuple[str, int]]
) -> None:
    await check_score(engine, reference, job_of("Is the sky blue? Answer:", [" yes", " no"]))
    assert batches == []


async def test_generate_n_completions_and_seed_reproduces(engine: TransformersEngine) -> None:
    ids = prompt_ids(engine, "Write one sentence about the sea.")
    params = SamplingParams(max_tokens=10, n=4, temperature=1.0, seed=7)
    first = await engine.generate(ids, params)
    assert len(first) == 4
    assert all(1 <= len(c.token_ids) <= 10 for c in first)
    again = await engine.generate(ids, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in first]
    assert [c.text for c in again] == [c.text for c in first]
    other = await engine.generate(ids, SamplingParams(max_tokens=10, n=4, seed=8))
    assert [c.token_ids for c in other] != [c.token_ids for c in first]


async def test_generate_greedy_matches_reference_and_logprobs_match_forward(
    engine: TransformersEngine, reference: Any
) -> None:
    ids = prompt_ids(engine, "List three fruits.")
    [got] = await engine.generate(ids, SamplingParams(max_tokens=12, temperature=0.0))
    assert got.token_ids == greedy_reference(reference, engine, ids, 12)
    assert got.text == engine.tokenizer.decode(got.token_ids, skip_special_tokens=True)
    expected = full_logprobs(reference, ids + got.token_ids)
    for k, (tok, lp) in enumerate(zip(got.token_ids, got.logprobs, strict=True)):
        assert abs(lp - float(expected[len(ids) + k - 1, tok])) < TOL


async def test_generate_sampled_logprobs_are_raw_model_logprobs(
    engine: TransformersEngine, reference: Any
) -> None:
    ids = prompt_ids(engine, "Say something.")
    params = SamplingParams(max_tokens=8, n=2, temperature=0.7, top_p=0.9, seed=3)
    for completion in await engine.generate(ids, params):
        expected = full_logprobs(reference, ids + completion.token_ids)
        for k, (tok, lp) in enumerate(zip(completion.token_ids, completion.logprobs, strict=True)):
            assert abs(lp - float(expected[len(ids) + k - 1, tok])) < TOL


async def test_generate_concurrent_calls_are_batched_and_correct(
    engine: TransformersEngine, reference: Any, batches: list[tuple[str, int]]
) -> None:
    short = prompt_ids(engine, "Hi!")
    long = prompt_ids(engine, "Explain in one sentence why the sky looks blue during the day.")
    sampled = SamplingParams(max_tokens=6, n=2, seed=11)
    solo_sampled = await engine.generate(long, sampled)
    batches.clear()
    results = await asyncio.gather(
        engine.generate(short, SamplingParams(max_tokens=8, temperature=0.0)),
        engine.generate(long, SamplingParams(max_tokens=8, temperature=0.0)),
        engine.generate(long, sampled),
    )
    assert max(rows for kind, rows in batches if kind == "generate") > 1
    assert results[0][0].token_ids == greedy_reference(reference, engine, short, 8)
    assert results[1][0].token_ids == greedy_reference(reference, engine, long, 8)
    # A fixed seed gives the same candidates whatever else shares the batch.
    assert [c.token_ids for c in results[2]] == [c.token_ids for c in solo_sampled]


async def test_generate_request_joins_a_running_batch(
    engine: TransformersEngine, reference: Any
) -> None:
    batches: list[tuple[str, int]] = []
    decoding = asyncio.Event()

    def record(kind: str, rows: int) -> None:
        batches.append((kind, rows))
        decoding.set()

    engine.on_batch = record
    first_ids = prompt_ids(engine, "Tell me a long story about a dragon.")
    later_ids = prompt_ids(engine, "Hi")
    first = asyncio.create_task(
        engine.generate(first_ids, SamplingParams(max_tokens=12, temperature=0.0))
    )
    await decoding.wait()  # the first request was prefilled and is decoding
    later = await engine.generate(later_ids, SamplingParams(max_tokens=6, temperature=0.0))
    [done] = await first
    engine.on_batch = None
    assert ("generate", 2) in batches  # merged into the running batch
    assert done.token_ids == greedy_reference(reference, engine, first_ids, 12)
    assert later[0].token_ids == greedy_reference(reference, engine, later_ids, 6)


async def test_generate_stop_string_truncates(engine: TransformersEngine) -> None:
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


async def test_generate_max_tokens_gives_length(engine: TransformersEngine) -> None:
    ids = prompt_ids(engine, "Write a long poem about autumn.")
    completions = await engine.generate(ids, SamplingParams(max_tokens=5, n=2, seed=1))
    for c in completions:
        assert c.finish_reason == "length"
        assert len(c.token_ids) == len(c.logprobs) == 5


async def test_generate_clips_max_tokens_to_context(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = prompt_ids(engine, "Write a long poem about winter.")
    monkeypatch.setattr(engine, "max_model_len", len(ids) + 3)
    [c] = await engine.generate(ids, SamplingParams(max_tokens=50, temperature=0.0))
    assert len(c.token_ids) <= 3


async def test_generate_rejects_empty_and_oversized_prompts(engine: TransformersEngine) -> None:
    with pytest.raises(InvalidRequest):
        await engine.generate([], SamplingParams(max_tokens=4))
    with pytest.raises(InvalidRequest):
        await engine.generate([1] * engine.max_model_len, SamplingParams(max_tokens=4))


async def test_a_failing_model_call_fails_that_call_and_the_engine_serves_on(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("simulated failure in one forward")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_forward", broken)
        with pytest.raises(EngineError, match="simulated failure"):
            await engine.score(job_of("a b", [" c d"]))
        with pytest.raises(EngineError):
            await engine.generate([1, 2, 3], SamplingParams(max_tokens=2))
        # not out of memory, not a CUDA error: the engine stays healthy for other requests
        assert engine.healthy() and engine.fatal is None
    [c] = await engine.generate([1, 2, 3], SamplingParams(max_tokens=2))
    assert len(c.token_ids) <= 2
    assert engine.healthy()


async def test_unstarted_or_closed_engine_raises_engine_error(model_path: Path) -> None:
    eng = TransformersEngine(ModelServerSettings(device="cpu"), str(model_path))
    assert not eng.healthy()
    with pytest.raises(EngineError):
        await eng.generate([1, 2, 3], SamplingParams(max_tokens=2))
    await eng.close()
    with pytest.raises(EngineError):
        await eng.score(job_of("a", ["b"]))


LONG_CONTEXT = (
    "A farmer keeps sheep, goats and chickens on a small hill farm. Every morning he counts "
    "the animals, feeds them and writes the numbers in a notebook. Today he counted"
)


async def test_scores_after_a_cached_prefix_match_a_full_forward(
    engine: TransformersEngine, reference: Any
) -> None:
    before = engine._prefix.hit_tokens
    await check_score(engine, reference, job_of(LONG_CONTEXT, [" 12 sheep.", " 40 animals."]))
    # Same context, other continuations: its KV comes from the prefix cache this time.
    await check_score(engine, reference, job_of(LONG_CONTEXT, [" 7 goats", " nothing at all."]))
    assert engine._prefix.hit_tokens > before


async def test_generation_after_a_cached_prefix_matches_greedy(
    engine: TransformersEngine, reference: Any
) -> None:
    first = prompt_ids(engine, "Count the animals: 3 sheep and 4 goats. How many?")
    await engine.generate(first, SamplingParams(max_tokens=4, temperature=0.0))
    before = engine._prefix.hit_tokens
    # shares the chat template and most of the question with ``first``
    ids = prompt_ids(engine, "Count the animals: 3 sheep and 4 goats. How many legs?")
    (out,) = await engine.generate(ids, SamplingParams(max_tokens=16, temperature=0.0))
    assert engine._prefix.hit_tokens > before
    assert out.token_ids == greedy_reference(reference, engine, ids, 16)


async def test_hundred_cancellations_leave_the_engine_answering_correctly(
    engine: TransformersEngine, reference: Any
) -> None:
    rng = random.Random(7)
    prompts = [prompt_ids(engine, f"Tell me a story about the number {i}.") for i in range(10)]

    async def cancelled_after(delay_s: float, ids: list[int]) -> None:
        task = asyncio.ensure_future(
            engine.generate(ids, SamplingParams(max_tokens=48, n=2, temperature=1.0, seed=1))
        )
        await asyncio.sleep(delay_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # In waves, so that cancellations land before admission, mid-decode and at the end.
    for wave in range(10):
        await asyncio.gather(
            *(cancelled_after(rng.uniform(0, 0.3), rng.choice(prompts)) for _ in range(10))
        )
        assert engine.healthy(), f"engine failed after wave {wave}"
    ids = prompt_ids(engine, "What is the capital of France?")
    (out,) = await engine.generate(ids, SamplingParams(max_tokens=12, temperature=0.0))
    assert out.token_ids == greedy_reference(reference, engine, ids, 12)
    assert not [r for r in engine._pending if not r.req.future.done()]
