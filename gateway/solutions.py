"""Strategies over whole solutions: ``best_of_n``, ``vote`` and ``weighted_vote``.

1. the agent writes ``n`` whole solutions in ONE ``/v1/rollout`` call (decoded together,
   sharing the prompt; completion i is reproducible from the seed);
2. ``best_of_n`` and ``weighted_vote``: every solution is scored by the heuristic's
   :class:`~gateway.scoring.SolutionScorer` (``likelihood``/``rationalyst``: each step's mean
   token log-probability after its prefix, all steps of all solutions in one batched scorer
   call, aggregated by ``aggregation``; ``random``: a seeded random value; ``greedy``: none);
3. the answer:
   - ``best_of_n``: the solution with the best score (the first on ties);
   - ``vote``: the most frequent normalized final answer (:func:`shared.tasks.answers.canonical`
     for the question's answer kind; ties: the answer reached first), its first solution;
   - ``weighted_vote``: the answer with the largest sum of its solutions' weights (a
     log-prob score counts as its probability, exp(score); unscored solutions count 1), its
     best-scored solution.

Budget: the rollout's tokens are known only once it returns; solutions past
``max_tokens_budget`` (their generated tokens, twice over when they are to be scored) are
dropped, the first one always kept, and ``budget_reached`` says so. Deadline, cancellation and
degradation follow :class:`~gateway.loop.Reasoner`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

from gateway.loop import Reasoner
from gateway.scoring import ScoredSolution, build_solution_scorer, rank_key
from gateway.upstreams import Upstreams
from shared.gateway_schemas import (
    Heuristic,
    NodeStatus,
    ReasonRequest,
    ReasonResponse,
    Strategy,
    TreeNode,
)
from shared.schemas import RolloutCompletion, RolloutRequest
from shared.steps import is_finished, solution_answer
from shared.tasks.answers import canonical


class SolutionsSearch(Reasoner):
    """One ``best_of_n`` / ``vote`` / ``weighted_vote`` request."""

    def __init__(self, request: ReasonRequest, upstreams: Upstreams, **options: Any) -> None:
        """``options`` as :class:`Reasoner`'s (deadline, request id, answer grace)."""
        super().__init__(request, upstreams, **options)
        self.solutions: list[RolloutCompletion] = []
        self.scored: list[ScoredSolution] | None = None
        self.answers: dict[str, float] = {}
        self.model_ms = 0.0

    @property
    def scores_solutions(self) -> bool:
        return self.request.strategy is not Strategy.vote and self.heuristic.kind not in (
            Heuristic.greedy,
        )

    async def _rollout(self) -> None:
        r = self.request
        req = RolloutRequest(
            question=self.question,
            steps=[],
            n=r.n,
            temperature=self.temperature,
            seed=self.seed,
            max_steps=r.max_steps,
            max_step_tokens=r.max_step_tokens,
            few_shot=self.demos,
            answer_kind=self.few_shot.answer_kind,
        )
        res = await self._call("agent", self.upstreams.agent.rollout(req), "rollout")
        self.count(
            "agent",
            "rollout",
            prompt=res.usage.prompt_tokens,
            completion=res.usage.completion_tokens,
        )
        self.solutions = list(res.completions)

    def _fit_budget(self) -> None:
        """Keep the solutions (in order, at least one) whose tokens fit the budget."""
        budget = self.request.max_tokens_budget
        if budget is None or not self.solutions:
            return
        factor = 2 if self.scores_solutions else 1
        spent, kept = 0, 0
        for s in self.solutions:
            spent += factor * s.completion_tokens
            if spent > budget and kept:
                break
            kept += 1
        if kept < len(self.solutions):
            self.budget_reached = True
            self.warnings.append(
                f"max_tokens_budget {budget}: {kept} of {len(self.solutions)} solutions fit it; "
                "the rest were dropped"
            )
            self.solutions = self.solutions[:kept]

    async def _search(self) -> None:
        t = time.perf_counter()
        try:
            await self._rollout()
            self._fit_budget()
            if self.scores_solutions and self.solutions:
                if self.heuristic.kind is Heuristic.rationalyst_explicit:
                    self.warnings.append(
                        "rationalyst_explicit scores whole solutions as likelihood (the "
                        "rollout has no rationale in its prompt)"
                    )
                scorer = build_solution_scorer(self)
                self.scored = await scorer.score(
                    [s.steps for s in self.solutions], self.request.aggregation
                )
        finally:
            self.model_ms += (time.perf_counter() - t) * 1000.0

    def _choose(self) -> int | None:
        """The index of the answer's solution."""
        if not self.solutions:
            return None
        values = [s.value for s in self.scored] if self.scored else [None] * len(self.solutions)
        strategy = self.request.strategy
        if strategy is Strategy.best_of_n:
            return max(range(len(values)), key=lambda i: (rank_key(values[i]), -i))
        log_domain = bool(self.scored) and self.heuristic.uses_scorer
        weights: list[float] = []
        for v in values:
            if strategy is Strategy.vote or v is None:
                weights.append(1.0)
            else:
                weights.append(math.exp(v) if log_domain else v)
        kind, options = self.few_shot.answer_kind, self.few_shot.options
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(self.solutions):
            answer = s.answer if s.answer is not None else solution_answer(s.steps)
            key = canonical(kind, answer, options) if answer is not None else None
            if key is not None:
                groups.setdefault(key, []).append(i)
        if not groups:
            self.warnings.append("no solution states an answer that reads as " + kind.value)
            return max(range(len(values)), key=lambda i: (rank_key(values[i]), -i))
        self.answers = {k: round(sum(weights[i] for i in g), 6) for k, g in groups.items()}
        winner = max(groups, key=lambda k: self.answers[k])  # dict order: first reached wins
        members = groups[winner]
        if strategy is Strategy.vote:
            return members[0]
        return max(members, key=lambda i: (rank_key(values[i]), -i))

    def _nodes(self, chosen: int | None) -> list[TreeNode]:
        nodes: list[TreeNode] = []
        for i, s in enumerate(self.solutions):
            scored = self.scored[i] if self.scored else None
            parent: str | None = None
            finished = is_finished(s.steps)
            for depth, text in enumerate(s.steps):
                last = depth == len(s.steps) - 1
                status: NodeStatus
                if i == chosen:
                    status = "chosen"
                elif last and finished:
                    status = "finished"
                else:
                    status = "pruned"
                node = TreeNode(
                    id=f"n{len(nodes)}",
                    parent=parent,
                    depth=depth,
                    text=text,
                    score=scored.step_scores[depth] if scored else None,
                    aggregate=scored.value if scored and last else None,
                    status=status,
                    rationale=scored.rationales[depth] if scored else None,
                    answer=solution_answer(s.steps) if last and finished else None,
                    tokens=self.scored_tokens(s.steps[:depth], text),
                )
                nodes.append(node)
                parent = node.id
        return nodes

    async def run(self) -> AsyncGenerator[TreeNode | ReasonResponse, None]:
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        timeout = asyncio.timeout_at(deadline if math.isfinite(deadline) else None)
        try:
            async with timeout:
                self._step_timeout = timeout
                await self._search()
        except TimeoutError:
            if not timeout.expired():
                raise
            what = "the solutions" if not self.solutions else "scoring the solutions"
            if self.cancelled:
                self.warnings.append(f"cancelled during {what}; returning the best so far")
            else:
                self.deadline_reached = True
                self.warnings.append(
                    f"deadline of {self.deadline_s:g}s reached during {what}; returning the "
                    "best so far"
                )
            self.scored = None
        finally:
            self._step_timeout = None
        chosen = self._choose()
        self.tree = self._nodes(chosen)
        for node in self.tree:
            yield node
        if chosen is not None:
            self.steps = list(self.solutions[chosen].steps)
            self.finished = is_finished(self.steps)
        elif not self.cancelled and not self.deadline_reached:
            self.out_of_candidates = True
            self.warnings.append("the agent wrote no solution")
        response = self.response(time.perf_counter() - start)
        response.strategy = self.request.strategy
        response.answers = self.answers
        total, model = response.timings.total_ms, round(self.model_ms, 3)
        response.timings.model_ms = model
        response.timings.overhead_ms = round(total - model, 3)
        yield response
