"""In-memory stand-ins for the model services, for unit tests of the loop and the app.

A :class:`FakeModelService` answers like the real service from a small script: the agent's
candidates per step, the scorer's score per candidate text, the rationalyst's rationale, a
chat completion's text, a text completion's. It
records every request, can fail (raise a typed error) from a given call on, and can be slow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.upstreams import Upstreams
from shared.errors import ServiceError
from shared.openai_schemas import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    OAChatMessage,
    Usage,
)
from shared.reward import aggregates
from shared.schemas import (
    Candidate,
    ContinuationScore,
    ProposeRequest,
    ProposeResponse,
    RationaleRequest,
    RationaleResponse,
    RewardRequest,
    RewardResponse,
    RewardResult,
    RewardUsage,
    RolloutCompletion,
    RolloutRequest,
    RolloutResponse,
    RolloutUsage,
    ScoreRequest,
    ScoreResponse,
    TokenLogprob,
)
from shared.steps import is_finished, solution_answer

RolloutScript = Sequence[Sequence[str]] | Callable[[RolloutRequest], Sequence[Sequence[str]]]
ProposeScript = Sequence[Sequence[str]] | Callable[[ProposeRequest], Sequence[str]]
"""Candidates per step (indexed by the number of steps so far; the last entry repeats), or a
function of the request. With a ``step_prefix`` in the request, each scripted text is what the
model writes after the prefix, as with the real service (a text that already opens with the
prefix is taken whole)."""


@dataclass
class FakeModelService:
    """One fake model service; serves every endpoint like the real one does."""

    name: str
    proposals: ProposeScript = (("Step one.", "Step two.", "Step three."),)
    scores: dict[str, float] | Callable[[ScoreRequest], Sequence[float]] = field(
        default_factory=dict
    )
    default_score: float = -1.0
    step_scores: dict[str, float] = field(default_factory=dict)
    """What /v1/reward gives each step (by its text; 0.5 otherwise)."""
    reward_kind: Literal["prm", "orm"] = "prm"
    """The kind of reward model /v1/reward says it serves."""
    rationale_text: str | Callable[[RationaleRequest], str] = "think about the next step"
    chat_text: str | Callable[[ChatCompletionRequest], str] = "Hello."
    """What /v1/chat/completions answers (text, or a function of the request)."""
    completion_text: str | Callable[[CompletionRequest], str] = "Hello."
    """What /v1/completions answers (text, or a function of the request)."""
    solutions: RolloutScript = (("2 + 3 = 5.", "The answer is: 5"),)
    """What /v1/rollout writes: completion i is solutions[i % len] (or a function of the
    request giving the n solutions)."""
    fail: ServiceError | None = None
    fail_from_call: int = 0
    """``fail`` is raised by every call numbered >= this (0 = from the first call)."""
    delay_s: float = 0.0
    ready_ok: bool = True
    calls: list[tuple[str, Any]] = field(default_factory=list)
    closed: bool = False

    async def _enter(self, kind: str, req: Any) -> None:
        self.calls.append((kind, req))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None and len(self.calls) > self.fail_from_call:
            raise self.fail

    def requests(self, kind: str) -> list[Any]:
        return [req for k, req in self.calls if k == kind]

    async def rationale(self, req: RationaleRequest) -> RationaleResponse:
        await self._enter("rationale", req)
        text = self.rationale_text(req) if callable(self.rationale_text) else self.rationale_text
        return RationaleResponse(
            rationale=text,
            mean_logprob=-0.5,
            num_tokens=len(text.split()),
            finish_reason="stop",
            prompt_tokens=_prompt_words(req.question, *req.steps),
        )

    async def propose(self, req: ProposeRequest) -> ProposeResponse:
        await self._enter("propose", req)
        if callable(self.proposals):
            texts = list(self.proposals(req))
        else:
            script = self.proposals[min(len(req.steps), len(self.proposals) - 1)]
            texts = [script[i % len(script)] for i in range(req.n)]
        if req.step_prefix:
            texts = [_after_prefix(req.step_prefix, t) for t in texts]
        return ProposeResponse(
            candidates=[
                Candidate(
                    text=t, mean_logprob=-0.4, num_tokens=len(t.split()), finish_reason="stop"
                )
                for t in texts
            ],
            prompt_tokens=_prompt_words(req.question, *req.steps, req.rationale or ""),
        )

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        await self._enter("score", req)
        if callable(self.scores):
            values = list(self.scores(req))
        else:
            values = [self.scores.get(c, self.default_score) for c in req.continuations]
        texts = req.continuations

        def tokens(i: int, v: float) -> list[TokenLogprob] | None:
            """With ``return_tokens``: the continuation as one token of log-prob ``v``."""
            if not req.return_tokens or i >= len(texts):
                return None
            return [TokenLogprob(token=texts[i], logprob=v)]

        return ScoreResponse(
            scores=[
                ContinuationScore(
                    score=v,
                    sum=v,
                    mean=v,
                    decayed_sum=v,
                    decayed_mean=v,
                    num_tokens=1,
                    tokens=tokens(i, v),
                )
                for i, v in enumerate(values)
            ],
            prompt_tokens=100 + len(values),
        )

    async def rollout(self, req: RolloutRequest) -> RolloutResponse:
        await self._enter("rollout", req)
        if callable(self.solutions):
            sols = [list(s) for s in self.solutions(req)]
        else:
            sols = [list(self.solutions[i % len(self.solutions)]) for i in range(req.n)]
        completions = []
        for solution in sols:
            steps = solution[: req.max_steps]
            tokens = sum(len(s.split()) for s in steps)
            completions.append(
                RolloutCompletion(
                    steps=steps,
                    answer=solution_answer([*req.steps, *steps]),
                    finished=is_finished(steps),
                    completion_tokens=tokens,
                )
            )
        return RolloutResponse(
            id="rollout-fake",
            completions=completions,
            usage=RolloutUsage(
                prompt_tokens=50, completion_tokens=sum(c.completion_tokens for c in completions)
            ),
        )

    async def reward(self, req: RewardRequest) -> RewardResponse:
        """PRM-like: each step scores ``step_scores[step]`` (default 0.5)."""
        await self._enter("reward", req)
        results = []
        for steps in req.solutions:
            values = [self.step_scores.get(s, 0.5) for s in steps]
            results.append(RewardResult(step_scores=values, **aggregates(values)))
        return RewardResponse(
            id="reward-fake",
            model=self.name,
            kind=self.reward_kind,
            results=results,
            usage=RewardUsage(prompt_tokens=10 * len(req.solutions)),
        )

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletionResponse:
        await self._enter("chat", req)
        text = self.chat_text(req) if callable(self.chat_text) else self.chat_text
        message = OAChatMessage(role="assistant", content=text)
        return ChatCompletionResponse(
            id="chatcmpl-fake",
            choices=[ChatCompletionChoice(message=message, finish_reason="stop")],
        )

    async def complete(self, req: CompletionRequest) -> CompletionResponse:
        await self._enter("complete", req)
        text = self.completion_text(req) if callable(self.completion_text) else self.completion_text
        n = len(text.split())
        return CompletionResponse(
            id="cmpl-fake",
            choices=[CompletionChoice(text=text, finish_reason="stop")],
            usage=Usage(prompt_tokens=10, completion_tokens=n, total_tokens=10 + n),
        )

    async def ready(self) -> bool:
        return self.ready_ok

    async def aclose(self) -> None:
        self.closed = True


def _prompt_words(*texts: str) -> int:
    """A fake prompt's token count: the words of what the real prompt is built from."""
    return sum(len(t.split()) for t in texts)


def _after_prefix(prefix: str, text: str) -> str:
    if text.startswith(prefix):
        return text
    return f"{prefix} {text}" if text else prefix


def fake_upstreams(
    *,
    rationalyst: FakeModelService | None = None,
    agent: FakeModelService | None = None,
    scorer: FakeModelService | None = None,
    reward: FakeModelService | None = None,
) -> Upstreams:
    """Three fakes (defaults where not given), and a reward service when given."""
    return Upstreams(
        rationalyst=rationalyst or FakeModelService("rationalyst"),
        agent=agent or FakeModelService("agent"),
        scorer=scorer or FakeModelService("scorer"),
        reward=reward,
    )
