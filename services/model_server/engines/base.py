"""The engine interface: what serving code may ask of a model, apart from HTTP.

Serving code (handlers, routes) imports this module only; :func:`build_engine` picks the
implementation. Engines speak text and token ids; prompt rendering and score aggregation
live in the handlers so that every engine scores exactly the same token windows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from shared.errors import InvalidRequest

FinishReason = Literal["stop", "length"]


GREEDY_BELOW = 1e-5
"""Temperatures below this sample greedily in every engine (vLLM's own threshold): dividing
logits by a temperature of 1e-40 overflows, and the distribution it stands for is the
argmax anyway."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature`` below :data:`GREEDY_BELOW` (0 included) is greedy;
    ``seed`` makes sampling reproducible."""

    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def normalized(self) -> SamplingParams:
        """The same request with a greedy temperature written as 0 (engines and upstream
        servers then never see a subnormal temperature)."""
        if self.greedy and self.temperature != 0.0:
            return replace(self, temperature=0.0)
        return self


@dataclass
class Completion:
    """One sampled continuation. ``logprobs[i]`` is log P(token_i) under the raw model
    distribution (temperature 1), so means are comparable across sampling settings."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason


@dataclass
class TokenWindow:
    """Tokens of one scored span, located in a full tokenization by character offsets.

    ``logprobs[i]`` is log P(token_i | all tokens before it in the full text); it is None only
    for the very first token of a text (nothing conditions it).
    """

    token_ids: list[int]
    tokens: list[str]
    logprobs: list[float | None]


@dataclass
class ScoreJob:
    """Full texts that share a prefix, and the character span to score in each."""

    texts: list[str]
    spans: list[tuple[int, int]]
    # Filled by :meth:`Tokenized.of`; engines read these rather than re-tokenizing.
    token_ids: list[list[int]] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    """A loaded model. All methods are safe to call concurrently from the event loop."""

    kind: str
    model_name: str
    max_model_len: int
    tokenizer: Any  # a transformers PreTrainedTokenizerBase (chat template, offsets)

    async def start(self) -> None:
        """Load the model. Called once by the app's lifespan before serving."""

    async def close(self) -> None:
        """Free resources; in-flight calls may fail with EngineError."""

    def healthy(self) -> bool:
        """False after an unrecoverable engine failure; /ready turns 503."""

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        """``params.n`` continuations of one tokenized prompt."""

    async def score(self, job: ScoreJob) -> tuple[list[TokenWindow], int]:
        """Token log-probs of each text's window, all texts in one batched pass that computes
        their shared prefix once. Returns the windows and the number of distinct tokens
        the pass processed (shared prefix counted once)."""


# --------------------------------------------------------------------------------------------
# Tokenization shared by every engine, so that all of them score the same windows.


def encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text``.

    Special tokens in the text (as chat templates write them) are parsed as such. A BOS is
    added only when the tokenizer adds one and the text does not already start with it, so a
    sequence never carries two.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    enc = tokenizer(
        text, add_special_tokens=add_special, return_offsets_mapping=True, verbose=False
    )
    ids: list[int] = list(enc["input_ids"])
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    return ids, offsets


def window_of(offsets: list[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int]:
    """Indices [lo, hi) of the tokens that overlap the character span ``[start, end)``.

    A token that straddles the boundary between context and continuation belongs to the
    continuation: it cannot be predicted from the context alone. Zero-width tokens (BOS)
    never belong to a window.
    """
    start, end = span
    ends = [e for _, e in offsets]
    lo = bisect.bisect_right(ends, start)
    while lo < len(offsets) and offsets[lo][1] <= offsets[lo][0]:
        lo += 1
    hi = lo
    while hi < len(offsets) and offsets[hi][0] < end:
        hi += 1
    return lo, hi


def prepare(tokenizer: Any, job: ScoreJob, max_model_len: int) -> ScoreJob:
    """Tokenize every text of ``job`` and locate its window (fills ``token_ids``/``windows``).

    Raises InvalidRequest when a text does not fit the model's context or a span holds no token.
    """
    job.token_ids, job.windows = [], []
    for i, (text, span) in enumerate(zip(job.texts, job.spans, strict=True)):
        ids, offsets = encode(tokenizer, text)
        if len(ids) > max_model_len:
            raise InvalidRequest(
                f"context plus continuation {i} is {len(ids)} tokens; the model's context is "
                f"{max_model_len}",
                field=f"continuations[{i}]",
            )
        lo, hi = window_of(offsets, span)
        if hi <= lo:
            raise InvalidRequest(f"continuation {i} holds no token", field=f"continuations[{i}]")
        job.token_ids.append(ids)
        job.windows.append((lo, hi))
    return job


def check_generation(
    prompt_ids: list[int], params: SamplingParams, max_model_len: int, vocab_size: int | None
) -> None:
    """Reject a generation request no engine can serve (each engine calls this first)."""
    if not prompt_ids:
        raise InvalidRequest("the prompt holds no token", field="prompt")
    if params.n < 1:
        raise InvalidRequest("n must be at least 1", field="n")
    if params.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", field="max_tokens")
    if len(prompt_ids) >= max_model_len:
        raise InvalidRequest(
            f"the prompt is {len(prompt_ids)} tokens; the model's context is {max_model_len}",
            field="prompt",
        )
    if vocab_size is not None and any(not 0 <= t < vocab_size for t in prompt_ids):
        raise InvalidRequest("the prompt holds a token id outside the vocabulary", field="prompt")


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n
