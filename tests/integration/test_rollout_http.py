"""POST /v1/rollout on the embedded SmolLM2, one agent service over real HTTP, through the
shared client: steps cut by the shared rule, answers read by the shared extraction, a seed
that reproduces the completions, and a prefix that is continued, not repeated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from shared.clients import ModelServiceClient
from shared.schemas import RolloutRequest
from shared.steps import ends_solution, solution_answer

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"


@pytest.fixture(scope="module")
def agent_url(model_service_factory: Callable[..., list[Any]]) -> str:
    # float32: a seed then reproduces the samples even when the batch shapes differ.
    (service,) = model_service_factory("agent", env={"MODEL_SERVER_DTYPE": "float32"})
    return str(service.url)


def test_rollout_completes_solutions_reproducibly(agent_url: str) -> None:
    async def run() -> tuple[Any, Any, Any]:
        async with ModelServiceClient("agent", agent_url, timeout=300) as client:
            req = RolloutRequest(question=QUESTION, n=3, seed=5, max_steps=3, max_step_tokens=32)
            first = await client.rollout(req)
            again = await client.rollout(req)
            step = first.completions[0].steps[0]
            cont = await client.rollout(
                RolloutRequest(
                    question=QUESTION, steps=[step], n=2, seed=9, max_steps=2, max_step_tokens=32
                )
            )
            return first, again, cont

    first, again, cont = asyncio.run(run())
    assert len(first.completions) == 3
    for c in first.completions:
        assert 1 <= len(c.steps) <= 3
        assert all(s and s == s.strip() for s in c.steps)
        assert c.finished == ends_solution(c.steps[-1])
        assert c.answer == (solution_answer(c.steps) if c.finished else None)
        assert c.completion_tokens > 0
    assert first.usage.completion_tokens == sum(c.completion_tokens for c in first.completions)
    # the same seed gives the same completions
    assert [c.steps for c in again.completions] == [c.steps for c in first.completions]
    # a prefix is continued: the completions hold only the steps after it
    step = first.completions[0].steps[0]
    assert len(cont.completions) == 2
    for c in cont.completions:
        if ends_solution(step):  # the prefix is a whole solution already
            assert (c.steps, c.finished, c.answer) == ([], True, solution_answer([step]))
        else:
            assert 1 <= len(c.steps) <= 2
            assert c.answer == (solution_answer([step, *c.steps]) if c.finished else None)
