"""Unit-tier fixtures: a fake engine with the real tokenizer, apps served in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.model_server.engines.base import (
    Completion,
    SamplingParams,
    ScoreJob,
    TokenWindow,
    prepare,
)


class FakeEngine:
    """Deterministic engine: candidate i of a request is "Step <i>."; token j of a scored
    window has log-prob -(j + 1) / 10. ``fail`` makes every call raise."""

    kind = "fake"
    model_name = "fake"

    def __init__(self, tokenizer: Any, max_model_len: int = 512) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.fail: Exception | None = None
        self.started = False
        self.calls: list[tuple[str, Any]] = []

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        pass

    def healthy(self) -> bool:
        return not isinstance(self.fail, MemoryError)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        self.calls.append(("generate", params))
        if self.fail:
            raise self.fail
        out = []
        for i in range(params.n):
            text = f"Step {i}."
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            out.append(Completion(text, ids, [-0.5] * len(ids), "stop"))
        return out

    async def score(self, job: ScoreJob) -> tuple[list[TokenWindow], int]:
        self.calls.append(("score", job))
        if self.fail:
            raise self.fail
        prepare(self.tokenizer, job, self.max_model_len)
        windows = []
        for ids, (lo, hi) in zip(job.token_ids, job.windows, strict=True):
            window_ids = ids[lo:hi]
            windows.append(
                TokenWindow(
                    token_ids=window_ids,
                    tokens=[self.tokenizer.decode([t]) for t in window_ids],
                    logprobs=[-(j + 1) / 10 for j in range(len(window_ids))],
                )
            )
        return windows, sum(len(ids) for ids in job.token_ids)


@pytest.fixture(scope="session")
def tokenizer(model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture
def fake_engine(tokenizer: Any) -> FakeEngine:
    return FakeEngine(tokenizer)


@pytest.fixture
def asgi_client() -> Callable[..., Any]:
    """Factory: an httpx client talking to an app in-process, lifespan included."""
    import contextlib

    @contextlib.asynccontextmanager
    async def make(app: Any) -> AsyncIterator[httpx.AsyncClient]:
        async with app.router.lifespan_context(app):
            for _ in range(5):  # let background start-up work (a fake engine's load) run
                await asyncio.sleep(0)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client

    return make
