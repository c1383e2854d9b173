"""Step-selection heuristics: which candidate next step to keep.

A heuristic says what a step needs (a rationale? in the agent's prompt? how many candidates?)
and ranks distinct candidates. Each request builds its own instances with
:func:`build_heuristic` (the `random` one holds the request's seeded generator); there are no
module-level singletons.

`rationalyst_explicit`: the rationale is written into the agent's prompt, so the candidates are
already guided by it. They are then ranked by the scorer's likelihood WITHOUT the rationale
(scoring them with it again would reward agreeing with text the agent was just conditioned
on); with a single distinct candidate there is nothing to rank and the scorer is not called.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from shared.gateway_schemas import Heuristic

ScoreFn = Callable[[Sequence[str], str | None], Awaitable[list[float]]]
"""Scores continuations of the current trajectory, with a rationale in the context or not."""


@dataclass(frozen=True)
class Ranking:
    """Scores of the distinct candidates (None where the heuristic does not score) and the
    index of the chosen one."""

    scores: list[float | None]
    chosen: int


def argmax(scores: Sequence[float]) -> int:
    """Index of the highest score, the first one on ties; NaN counts as -inf."""
    best, best_value = 0, -math.inf
    for i, value in enumerate(scores):
        v = -math.inf if math.isnan(value) else value
        if v > best_value:
            best, best_value = i, v
    return best


class StepHeuristic(Protocol):
    """A step-selection rule."""

    kind: Heuristic
    wants_rationale: bool
    """The rationalyst writes a rationale for every step."""
    rationale_in_prompt: bool
    """The rationale goes into the agent's prompt (explicit supervision)."""
    uses_scorer: bool

    def num_candidates(self, requested: int) -> int:
        """How many candidates the agent proposes per step."""
        ...

    async def rank(
        self, candidates: Sequence[str], rationale: str | None, score: ScoreFn
    ) -> Ranking:
        """Rank distinct, non-empty candidates. ``score`` calls the scorer (once)."""
        ...


async def _rank_by_scorer(
    candidates: Sequence[str], rationale: str | None, score: ScoreFn
) -> Ranking:
    scores = await score(candidates, rationale)
    return Ranking(scores=list(scores), chosen=argmax(scores))


class RationalystHeuristic:
    """Implicit supervision: mean log P(candidate | trajectory, rationale) under the scorer."""

    kind = Heuristic.rationalyst
    wants_rationale = True
    rationale_in_prompt = False
    uses_scorer = True

    def num_candidates(self, requested: int) -> int:
        return requested

    async def rank(
        self, candidates: Sequence[str], rationale: str | None, score: ScoreFn
    ) -> Ranking:
        return await _rank_by_scorer(candidates, rationale, score)


class LikelihoodHeuristic:
    """Mean log P(candidate | trajectory) under the scorer, no rationale."""

    kind = Heuristic.likelihood
    wants_rationale = False
    rationale_in_prompt = False
    uses_scorer = True

    def num_candidates(self, requested: int) -> int:
        return requested

    async def rank(
        self, candidates: Sequence[str], rationale: str | None, score: ScoreFn
    ) -> Ranking:
        return await _rank_by_scorer(candidates, None, score)


class ExplicitRationalystHeuristic(LikelihoodHeuristic):
    """Explicit supervision: the agent proposes with the rationale; the scorer's likelihood
    without the rationale ranks the candidates."""

    kind = Heuristic.rationalyst_explicit
    wants_rationale = True
    rationale_in_prompt = True


class RandomHeuristic:
    """Uniform pick among the candidates from the request's seeded generator."""

    kind = Heuristic.random
    wants_rationale = False
    rationale_in_prompt = False
    uses_scorer = False

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def num_candidates(self, requested: int) -> int:
        return requested

    async def rank(
        self, candidates: Sequence[str], rationale: str | None, score: ScoreFn
    ) -> Ranking:
        return Ranking(scores=[None] * len(candidates), chosen=self.rng.randrange(len(candidates)))


class GreedyHeuristic:
    """Plain chain of thought: one candidate per step, taken as is."""

    kind = Heuristic.greedy
    wants_rationale = False
    rationale_in_prompt = False
    uses_scorer = False

    def num_candidates(self, requested: int) -> int:
        return 1

    async def rank(
        self, candidates: Sequence[str], rationale: str | None, score: ScoreFn
    ) -> Ranking:
        return Ranking(scores=[None] * len(candidates), chosen=0)


class RewardHeuristic(LikelihoodHeuristic):
    """The reward model's P(good) of trajectory + candidate (``prm``: the candidate's step
    score; ``orm``: the partial solution's outcome score), ranked like the likelihood. The
    loop hands it a score function backed by the reward service
    (:class:`gateway.reward.RewardScorer`)."""

    uses_scorer = False
    uses_reward = True

    def __init__(self, kind: Heuristic) -> None:
        self.kind = kind


def uses_reward(heuristic: StepHeuristic) -> bool:
    """Whether the heuristic scores with the reward service rather than the scorer."""
    return bool(getattr(heuristic, "uses_reward", False))


def build_heuristic(kind: Heuristic, *, rng: random.Random) -> StepHeuristic:
    """A fresh heuristic of ``kind``; ``rng`` is the request's seeded generator."""
    match kind:
        case Heuristic.rationalyst:
            return RationalystHeuristic()
        case Heuristic.rationalyst_explicit:
            return ExplicitRationalystHeuristic()
        case Heuristic.likelihood:
            return LikelihoodHeuristic()
        case Heuristic.random:
            return RandomHeuristic(rng)
        case Heuristic.greedy:
            return GreedyHeuristic()
        case Heuristic.prm | Heuristic.orm:
            return RewardHeuristic(kind)
    raise ValueError(f"unknown heuristic {kind!r}")  # pragma: no cover


def without_rationale(kind: Heuristic) -> Heuristic:
    """What a heuristic degrades to when the rationalyst is down."""
    return Heuristic.likelihood if kind in _NEEDS_RATIONALE else kind


def without_scorer(kind: Heuristic) -> Heuristic:
    """What a heuristic degrades to when the scorer is down."""
    return Heuristic.random if kind in _NEEDS_SCORER else kind


def without_reward(kind: Heuristic) -> Heuristic:
    """What a heuristic degrades to when the reward service is down."""
    return Heuristic.likelihood if kind in (Heuristic.prm, Heuristic.orm) else kind


_NEEDS_RATIONALE = frozenset({Heuristic.rationalyst, Heuristic.rationalyst_explicit})
_NEEDS_SCORER = frozenset(
    {Heuristic.rationalyst, Heuristic.rationalyst_explicit, Heuristic.likelihood}
)
