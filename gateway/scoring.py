"""Path scores: aggregating step scores, and scoring whole solutions behind one protocol.

A path (a beam, a sampled solution) has one score per step. :func:`aggregate` makes them one
number: ``min``, ``prod``, ``last`` or ``mean``. Scores of the scorer service are mean token
log-probabilities, so they are aggregated in the log domain (``prod`` is their sum: the log of
the product of the step probabilities); a reward model's scores are probabilities and
aggregate as they are.

:class:`SolutionScorer` is what ``best_of_n`` and ``weighted_vote`` ask of a scorer: one
:class:`ScoredSolution` per solution. :func:`build_solution_scorer` picks the implementation
from the request's heuristic, so a reward model (``prm``/``orm``) plugs in here without the
strategies changing.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.heuristics import without_reward, without_scorer
from gateway.reward import REWARD_HEURISTICS
from shared.gateway_schemas import Aggregation, Heuristic

if TYPE_CHECKING:
    from gateway.loop import _Run


def aggregate(
    scores: Sequence[float | None], how: Aggregation, *, log_domain: bool = True
) -> float | None:
    """One score for a path of step scores; None when a step is unscored or there is none."""
    if not scores or any(s is None for s in scores):
        return None
    values = [float(s) for s in scores if s is not None]
    values = [-math.inf if math.isnan(v) else v for v in values]
    match how:
        case Aggregation.min:
            return min(values)
        case Aggregation.last:
            return values[-1]
        case Aggregation.mean:
            return sum(values) / len(values)
        case Aggregation.prod:
            return sum(values) if log_domain else math.prod(values)
    raise ValueError(f"unknown aggregation {how!r}")  # pragma: no cover


def rank_key(value: float | None) -> float:
    """Sort key of a path score: higher is better; None and NaN rank last."""
    return -math.inf if value is None or math.isnan(value) else value


@dataclass(frozen=True)
class ScoredSolution:
    step_scores: list[float | None]
    value: float | None
    """The aggregated score (None where the heuristic does not score)."""
    rationales: list[str | None]


class SolutionScorer(Protocol):
    """Scores whole solutions (lists of steps) of one question."""

    kind: Heuristic

    async def score(
        self, solutions: Sequence[Sequence[str]], how: Aggregation
    ) -> list[ScoredSolution]: ...


class LikelihoodSolutionScorer:
    """Each step's mean token log-probability after its prefix under the scorer service
    (with the rationalyst's rationale for the prefix when ``kind`` is rationalyst: one
    rationale per distinct prefix), all steps of all solutions in one batched call."""

    def __init__(self, run: _Run, kind: Heuristic) -> None:
        self.run = run
        self.kind = kind

    async def _rationales(self, prefixes: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
        run = self.run
        max_tokens = getattr(getattr(run, "request", None), "max_rationale_tokens", 128)
        out = await asyncio.gather(*(run.rationale(p, len(p), max_tokens) for p in prefixes))
        return {p: r.rationale for p, r in zip(prefixes, out, strict=True) if r is not None}

    async def score(
        self, solutions: Sequence[Sequence[str]], how: Aggregation
    ) -> list[ScoredSolution]:
        run = self.run
        rationales: dict[tuple[str, ...], str] = {}
        if run.heuristic.kind is Heuristic.rationalyst:  # explicit: scored without one
            prefixes = list(dict.fromkeys(tuple(s[:i]) for s in solutions for i in range(len(s))))
            rationales = await self._rationales(prefixes)
            if not run.heuristic.wants_rationale:  # the rationalyst failed: likelihood
                rationales = {}
        items: list[tuple[Sequence[str], str, str | None]] = []
        for solution in solutions:
            for i, step in enumerate(solution):
                prefix = tuple(solution[:i])
                items.append((prefix, step, rationales.get(prefix)))
        flat: list[float | None]
        if not items:
            flat = []
        elif run.heuristic.uses_scorer:
            from gateway.loop import DOWN_ERRORS

            try:
                flat = list(await run.score_many(items))
            except DOWN_ERRORS as exc:
                run._degrade("scorer", without_scorer(run.heuristic.kind), 0, exc)
                return await build_solution_scorer(run).score(solutions, how)
        else:
            flat = [None] * len(items)
        out: list[ScoredSolution] = []
        k = 0
        for solution in solutions:
            scores = flat[k : k + len(solution)]
            notes = [rationales.get(tuple(solution[:i])) for i in range(len(solution))]
            k += len(solution)
            out.append(ScoredSolution(scores, aggregate(scores, how), notes))
        return out


class RandomSolutionScorer:
    """The baseline: a uniform random value per solution (seeded); greedy gives none."""

    def __init__(self, kind: Heuristic, rng: random.Random) -> None:
        self.kind = kind
        self.rng = rng

    async def score(
        self, solutions: Sequence[Sequence[str]], how: Aggregation
    ) -> list[ScoredSolution]:
        return [
            ScoredSolution(
                [None] * len(s),
                self.rng.random() if self.kind is Heuristic.random else None,
                [None] * len(s),
            )
            for s in solutions
        ]


class RewardSolutions(Protocol):
    """What a run's reward scorer offers (``run.reward``: the reward service's client for
    the question): one ``/v1/reward`` call for many solutions, answering ``results`` with
    ``step_scores`` and ``min``/``prod``/``last``/``mean`` each, and ``usage.prompt_tokens``."""

    async def solutions(self, solutions: Sequence[Sequence[str]]) -> Any: ...


async def reward_scores(
    run: _Run, reward: RewardSolutions, paths: Sequence[Sequence[str]], how: Aggregation
) -> list[tuple[list[float | None], float]]:
    """Every path in ONE reward call: its step scores (ORM: none) and its score by ``how``
    (computed by the service; probabilities, so ``prod`` is a product). Counted under the
    phase ``reward`` and in the budget."""
    res = await run._call("reward", reward.solutions([list(p) for p in paths]), "reward")
    run.count("reward", "reward", prompt=int(res.usage.prompt_tokens))
    out: list[tuple[list[float | None], float]] = []
    for result, path in zip(res.results, paths, strict=True):
        steps: list[float | None] = [float(s) for s in result.step_scores]
        out.append((steps or [None] * len(path), float(getattr(result, how.value))))
    return out


class RewardSolutionScorer:
    """A reward model (``prm``/``orm``) scores every solution in one call; the value is its
    ``aggregation`` of the PRM's step probabilities (ORM: the outcome score)."""

    def __init__(self, run: _Run, reward: RewardSolutions, kind: Heuristic) -> None:
        self.run = run
        self.reward = reward
        self.kind = kind

    async def score(
        self, solutions: Sequence[Sequence[str]], how: Aggregation
    ) -> list[ScoredSolution]:
        from gateway.loop import DOWN_ERRORS

        try:
            scored = await reward_scores(self.run, self.reward, solutions, how)
        except DOWN_ERRORS as exc:  # as the step loop: likelihood instead (strict: the error)
            self.run._degrade("reward", without_reward(self.kind), 0, exc)
            return await build_solution_scorer(self.run).score(solutions, how)
        return [ScoredSolution(s, v, [None] * len(s)) for s, v in scored]


def build_solution_scorer(run: _Run) -> SolutionScorer:
    """The solution scorer of the run's current heuristic (it follows its degradations)."""
    kind = run.heuristic.kind
    if kind in REWARD_HEURISTICS:
        assert run.reward is not None  # a run with a reward heuristic has its scorer
        return RewardSolutionScorer(run, run.reward, kind)
    if run.heuristic.uses_scorer:
        return LikelihoodSolutionScorer(run, kind)
    return RandomSolutionScorer(kind, run.rng)
