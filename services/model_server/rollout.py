"""Rollouts: ``n`` completions of a partial solution, each written one step at a time.

A completion continues the agent's chat exactly as the gateway's search does: each step is the
agent's next assistant turn after the question and the steps so far, cut by the shared step
rule (:mod:`shared.steps`); it ends at the first step that states an answer, at an empty turn,
after ``max_steps`` steps, or when the context is full.

Batching. The first step of all ``n`` completions is ONE engine call with ``n`` samples of the
shared prompt (computed once). From then on each completion goes on by itself: its next
prompt is the previous one plus its own step, sent as its own call, and the calls of all
completions are in flight together, so the engine decodes them in one batch (the transformers
engine merges rows into its running batch and takes each prompt's prefix from its prefix cache;
vLLM batches and prefix-caches concurrent requests itself; the remote engine sends them to its
upstream concurrently). A completion that finishes early frees its row at once.

Seeds. With a seed, sample ``i`` of the first call is fixed by ``(seed, i)`` in every engine,
and step ``k >= 1`` of completion ``i`` samples with :func:`step_seed` ``(seed, i, k)``: the
same request gives the same completions, and completion ``i`` does not depend on ``n``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from services.model_server.engines.base import Completion, SamplingParams
from shared.steps import ends_solution, is_finished, step_text

Render = Callable[[Sequence[str]], list[int]]
"""Token ids of the agent's prompt after the given steps (those of the request first)."""
Generate = Callable[[list[int], SamplingParams], Awaitable[list[Completion]]]


def step_seed(seed: int | None, index: int, step: int) -> int | None:
    """The seed of step ``step`` (>= 1) of completion ``index``; None stays None."""
    if seed is None:
        return None
    digest = hashlib.blake2b(f"rollout:{seed}:{index}:{step}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & (2**31 - 1)


@dataclass
class Rollout:
    """One completion: the steps written after the prefix and the tokens sampled for them."""

    steps: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    finished: bool = False


@dataclass
class RolloutResult:
    rollouts: list[Rollout]
    prompt_tokens: int


async def roll_out(
    *,
    prefix: Sequence[str],
    render: Render,
    generate: Generate,
    params: SamplingParams,
    max_steps: int,
    max_model_len: int,
) -> RolloutResult:
    """``params.n`` completions of the solution ``prefix`` (``params.max_tokens`` per step).

    ``render`` builds the prompt after a list of steps; ``generate`` is the engine call. A
    prefix that already ends the solution is returned as ``n`` finished, empty completions.
    """
    n = params.n
    if is_finished(prefix):
        return RolloutResult([Rollout(finished=True) for _ in range(n)], 0)
    first_ids = render(list(prefix))
    rollouts = [Rollout() for _ in range(n)]
    prompt_tokens = len(first_ids)
    first = await generate(first_ids, _fit(params, first_ids, max_model_len))

    async def follow(index: int, out: Completion) -> None:
        nonlocal prompt_tokens
        row = rollouts[index]
        for k in range(1, max_steps + 1):
            row.completion_tokens += len(out.token_ids)
            step = step_text(out.text)
            if not step:
                return
            row.steps.append(step)
            if ends_solution(step):
                row.finished = True
                return
            if k == max_steps:
                return
            ids = render([*prefix, *row.steps])
            if len(ids) >= max_model_len:
                return  # the context is full: the completion stops unfinished
            prompt_tokens += len(ids)
            one = replace(params, n=1, seed=step_seed(params.seed, index, k))
            (out,) = await generate(ids, _fit(one, ids, max_model_len))

    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels the other completions
            for index, out in enumerate(first):
                group.create_task(follow(index, out))
    except ExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return RolloutResult(rollouts, prompt_tokens)


def _fit(params: SamplingParams, ids: list[int], max_model_len: int) -> SamplingParams:
    room = max_model_len - len(ids)
    return replace(params, max_tokens=room) if params.max_tokens > room else params
