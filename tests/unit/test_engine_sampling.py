"""The transformers engine's sampler at the numeric edges of every accepted parameter, and
one row's failure staying that row's: no request can break the engine for the others."""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import pytest
import torch

from services.model_server.engines.base import GREEDY_BELOW, SamplingParams
from services.model_server.engines.in_process import is_fatal
from services.model_server.engines.transformers_engine import (
    TransformersEngine,
    _Batch,
    _Request,
    _Row,
    _row_seed,
)
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError

pytestmark = pytest.mark.unit

VOCAB = 50
TINY = sys.float_info.min  # the smallest positive normal double
SUBNORMAL = 5e-324


class Tokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def engine() -> TransformersEngine:
    eng = TransformersEngine(ModelServerSettings(), "/nonexistent")
    eng.tokenizer = Tokenizer()
    eng._eos = frozenset({0})
    return eng


def row(params: SamplingParams, index: int = 0) -> _Row:
    loop = asyncio.new_event_loop()
    req = _Request(
        prompt=[1, 2],
        params=params,
        max_tokens=params.max_tokens,
        future=loop.create_future(),
        results=[None] * params.n,
        remaining=params.n,
    )
    r = _Row(req=req, index=index)
    r.generator = torch.Generator()
    r.generator.manual_seed(_row_seed(params.seed, index))
    return r


def logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 8


@pytest.mark.parametrize("temperature", [0.0, SUBNORMAL, TINY, 1e-40, GREEDY_BELOW / 2])
def test_tiny_temperatures_are_greedy(temperature: float) -> None:
    eng, lg = engine(), logits()
    params = SamplingParams(max_tokens=4, temperature=temperature, seed=1)
    assert params.greedy and params.normalized().temperature == 0.0
    assert eng._sample(lg, row(params)) == int(torch.argmax(lg))


@pytest.mark.parametrize("temperature", [GREEDY_BELOW, 1e-4, 0.01, 1.0, 2.0])
@pytest.mark.parametrize("top_p", [TINY, 1e-12, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 2**63 - 1, None])
def test_sampling_is_safe_at_the_bounds(temperature: float, top_p: float, seed: int | None) -> None:
    eng = engine()
    params = SamplingParams(max_tokens=4, temperature=temperature, top_p=top_p, seed=seed)
    for k in range(5):
        lg = logits(k)
        token = eng._sample(lg, row(params))
        assert 0 <= token < VOCAB
        if top_p <= 1e-12:  # only the most likely token survives top-p
            assert token == int(torch.argmax(lg))


def test_huge_logits_do_not_overflow() -> None:
    eng = engine()
    lg = torch.full((VOCAB,), -1e30)
    lg[7] = 3e38  # near float32's limit: logits / temperature would be inf
    params = SamplingParams(max_tokens=4, temperature=GREEDY_BELOW, seed=3)
    assert eng._sample(lg, row(params)) == 7


def test_a_fixed_seed_reproduces_a_sample() -> None:
    eng = engine()
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=2**63 - 1)
    first = [eng._sample(logits(k), row(params)) for k in range(8)]
    assert first == [eng._sample(logits(k), row(params)) for k in range(8)]


def test_nan_logits_fail_only_their_row() -> None:
    eng = engine()
    rows = [row(SamplingParams(max_tokens=4, temperature=1.0, seed=i)) for i in range(3)]
    batch = _Batch(
        rows=rows,
        cache=None,
        mask=torch.ones(3, 2, dtype=torch.long),
        positions=torch.tensor([2, 2, 2]),
        last=torch.zeros(3, dtype=torch.long),
        mergeable=True,
    )
    lg = torch.stack([logits(0), torch.full((VOCAB,), math.nan), logits(2)])
    lg[0, 0] = lg[2, 0] = -1e9  # not EOS, so healthy rows go on
    finished = eng._sample_into(batch, lg)
    assert finished == [rows[1]]
    assert isinstance(rows[1].error, EngineError) and "not numbers" in rows[1].error.message
    assert rows[0].error is None and rows[2].error is None
    assert len(rows[0].tokens) == len(rows[2].tokens) == 1
    assert eng.fatal is None  # the engine serves on


@pytest.mark.parametrize(
    ("exc", "fatal"),
    [
        (RuntimeError("probability tensor contains either `inf`, `nan` or element < 0"), False),
        (ValueError("bad shape"), False),
        (MemoryError(), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    ],
)
def test_only_unrecoverable_failures_are_fatal(exc: BaseException, fatal: bool) -> None:
    assert is_fatal(exc) is fatal


def test_a_failing_call_leaves_the_engine_healthy_unless_fatal() -> None:
    eng = engine()
    eng._started, eng._model = True, object()

    def boom(exc: BaseException) -> Any:
        raise exc

    with pytest.raises(EngineError):
        eng._guarded(boom, RuntimeError("probability tensor contains nan"))
    assert eng.healthy() and eng.fatal is None
    with pytest.raises(EngineError):
        eng._guarded(boom, MemoryError())
    assert not eng.healthy() and eng.fatal is not None
