"""Scoring with the reward service: the one place the gateway turns trajectories into
``POST /v1/reward`` calls.

:class:`RewardScorer` is deliberately small and free of the step loop: the ``prm``/``orm``
step heuristics call :meth:`RewardScorer.candidates` (every candidate of a step in one
request), and search strategies that rank whole solutions (best-of-N, beam) can call
:meth:`RewardScorer.solutions` with the aggregate they rank by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gateway.upstreams import RewardClient
from shared.errors import InvalidRequest, ServiceUnavailable
from shared.gateway_schemas import Heuristic
from shared.schemas import RewardRequest, RewardResponse

RewardAggregate = Literal["min", "prod", "last", "mean"]

REWARD_HEURISTICS = frozenset({Heuristic.prm, Heuristic.orm})


def require_reward(client: RewardClient | None, heuristic: Heuristic) -> RewardClient:
    """The reward client, or a 422 naming ``heuristic`` when no reward service is
    configured (GATEWAY_REWARD_URL is empty)."""
    if client is None:
        raise InvalidRequest(
            f"heuristic {heuristic.value!r} needs a reward service, and this gateway has none "
            "(set GATEWAY_REWARD_URL, or `rationalyst up --reward-model NAME`)",
            field="heuristic",
        )
    return client


class RewardScorer:
    """Scores solutions of one question with the reward service.

    ``heuristic`` (``prm`` or ``orm``) is what the request asked for; when the service's model
    is of the other kind, the scores are still used (an ORM's outcome score of the trajectory,
    or a PRM's score of the last step) and one line in ``warnings`` says so."""

    def __init__(
        self,
        client: RewardClient,
        question: str,
        *,
        heuristic: Heuristic | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        self.client = client
        self.question = question
        self.heuristic = heuristic
        self.warnings = warnings if warnings is not None else []
        self.prompt_tokens = 0
        self.calls = 0
        self._kind_checked = False

    async def solutions(self, solutions: Sequence[Sequence[str]]) -> RewardResponse:
        """Every solution (a list of steps) in one request; the response as the service
        gave it, checked to hold one result per solution."""
        self.calls += 1
        res = await self.client.reward(
            RewardRequest(question=self.question, solutions=[list(s) for s in solutions])
        )
        if len(res.results) != len(solutions):
            raise ServiceUnavailable(
                f"reward returned {len(res.results)} results for {len(solutions)} solutions"
            )
        self.prompt_tokens += res.usage.prompt_tokens
        self._check_kind(res.kind)
        return res

    def _check_kind(self, served: str) -> None:
        if self._kind_checked or self.heuristic is None:
            return
        self._kind_checked = True
        if served != self.heuristic.value:
            scores = "outcome scores" if served == "orm" else "step scores"
            self.warnings.append(
                f"heuristic {self.heuristic.value!r} asked for a {self.heuristic.value} model, "
                f"but the reward service serves a {served}: ranked by its {scores}"
            )

    async def scores(
        self, solutions: Sequence[Sequence[str]], aggregate: RewardAggregate = "min"
    ) -> list[float]:
        """One score per solution: the aggregate of its step scores (ORM: its score)."""
        res = await self.solutions(solutions)
        return [getattr(r, aggregate) for r in res.results]

    async def candidates(self, steps: Sequence[str], candidates: Sequence[str]) -> list[float]:
        """Each candidate as the next step after ``steps``: the PRM's score of that last
        step (ORM: of the whole trajectory + candidate), all in one request."""
        return await self.scores([[*steps, c] for c in candidates], "last")
