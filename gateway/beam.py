"""Beam search over steps (``strategy: beam``).

Per search step, with the live beams (paths not yet stating an answer):

1. every live beam proposes: the single empty path at depth 0 proposes ``n_beams`` next
   steps, later each live beam ``beam_width`` (greedy: one); the rationalyst writes one
   rationale per distinct prefix, beside the proposals (explicit supervision: before them,
   into the agent's prompt) - all beams at once;
2. per beam, candidates repeating its path are dropped and identical ones merged;
3. the whole pool - candidates of every beam - is scored in ONE /v1/score call (each after
   its own prefix; a pool over :data:`~gateway.loop.SCORE_BATCH` continuations is split);
4. each candidate's path score is the ``aggregation`` of its path's step scores; the pool is
   ranked by it (ties: the earlier beam, then the earlier candidate: deterministic) and the
   best ``n_beams - finished`` are kept; kept candidates that state an answer are finished
   beams, set aside; the rest are the next live beams.

It stops when no beam is live, ``n_beams`` have finished, or after ``max_steps``; the answer
is the finished beam with the best path score (when none finished, the best live beam gets
the forced answer step of :mod:`gateway.loop`). Heuristics, degradation, deadline,
cancellation and budget follow :class:`~gateway.loop.Reasoner`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.answering import find_repeats
from gateway.heuristics import without_reward, without_scorer
from gateway.loop import (
    DOWN_ERRORS,
    Reasoner,
    _both,
    _first_error,
    _ms,
    fallback_notes,
    merge_duplicates,
    step_nodes,
)
from gateway.reward import REWARD_HEURISTICS
from gateway.scoring import aggregate, rank_key, reward_scores
from gateway.upstreams import Upstreams
from shared.answers import extract_answer
from shared.gateway_schemas import ReasonRequest, ReasonResponse, Strategy, Timings, TreeNode
from shared.schemas import RationaleResponse
from shared.steps import ends_solution, step_text


@dataclass
class Beam:
    """One path of the search."""

    steps: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    value: float | None = None
    """The path score (aggregated)."""


@dataclass
class _Candidate:
    beam: int
    text: str
    rationale: str | None
    key: float = 0.0
    score: float | None = None
    value: float | None = None


class BeamSearch(Reasoner):
    """One ``strategy: beam`` request; iterate :meth:`run` for tree nodes as they are decided,
    then the response."""

    def __init__(self, request: ReasonRequest, upstreams: Upstreams, **options: Any) -> None:
        """``options`` as :class:`Reasoner`'s (deadline, request id, answer grace)."""
        super().__init__(request, upstreams, **options)
        self.finished_beams: list[Beam] = []
        self.model_ms = 0.0

    def _slots(self) -> int:
        return self.request.n_beams - len(self.finished_beams)

    async def _expand_one(
        self, beam: Beam, n: int, index: int
    ) -> tuple[list[str], RationaleResponse | None]:
        """Rationale and proposals for one beam."""
        h = self.heuristic
        rationale: RationaleResponse | None = None
        if h.wants_rationale and h.rationale_in_prompt:
            rationale = await self.rationale(beam.steps, index, self.request.max_rationale_tokens)
            proposals = await self._propose(
                n, rationale.rationale if rationale else None, index, steps=beam.steps
            )
        elif h.wants_rationale:
            rationale, proposals = await _both(
                self.rationale(beam.steps, index, self.request.max_rationale_tokens),
                self._propose(n, None, index, steps=beam.steps),
            )
        else:
            proposals = await self._propose(n, None, index, steps=beam.steps)
        return [step_text(c.text) for c in proposals.candidates], rationale

    async def _expand(self, index: int, beams: list[Beam]) -> tuple[list[TreeNode], list[Beam]]:
        """One search step: the nodes it decided and the next live beams."""
        start = time.perf_counter()
        requested = self.request.n_beams if index == 0 else self.request.beam_width
        n = self.heuristic.num_candidates(requested)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._expand_one(b, n, index)) for b in beams]
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        pool: list[_Candidate] = []
        for b, task in enumerate(tasks):
            texts, rationale = task.result()
            repeat_of = find_repeats(texts, beams[b].steps)
            skip = [r is not None for r in repeat_of]
            self.repeats += sum(skip)
            distinct, _ = merge_duplicates(texts, skip)
            note = rationale.rationale if rationale else None
            pool.extend(_Candidate(b, texts[i], note) for i in distinct)
        if not pool:
            self.out_of_candidates = True
            self.warnings.append(f"no beam had a usable next step at step {index}; stopping")
            return [], []
        await self._score(pool, beams, index)
        for c in pool:
            if c.value is None:  # a reward model gives the path's score itself
                c.value = aggregate([*beams[c.beam].scores, c.score], self.request.aggregation)
            if c.value is not None:
                c.key = c.value
        # Stable sort: ties keep the pool's order (earlier beam, then earlier candidate).
        ranked = sorted(range(len(pool)), key=lambda i: -rank_key(pool[i].key))
        kept = set(ranked[: self._slots()])
        ms = _ms(time.perf_counter() - start)
        self.model_ms += ms
        notes = fallback_notes(self.fallbacks, index)
        nodes: list[TreeNode] = []
        by_index: dict[int, TreeNode] = {}
        for i, c in enumerate(pool):
            parent = beams[c.beam].nodes[-1] if beams[c.beam].nodes else None
            done = ends_solution(c.text)
            node = TreeNode(
                id=f"n{len(self.tree) + len(nodes)}",
                parent=parent,
                depth=index,
                text=c.text,
                score=c.score,
                aggregate=c.value,
                status=("finished" if done else "kept") if i in kept else "pruned",
                rationale=c.rationale,
                answer=extract_answer(c.text) if done else None,
                timings_ms=ms,
                warnings=notes if not nodes else [],
                tokens=self.scored_tokens(beams[c.beam].steps, c.text),
            )
            nodes.append(node)
            by_index[i] = node
        self._tokens.clear()
        self.tree.extend(nodes)
        live: list[Beam] = []
        for i in ranked[: self._slots()]:
            c, parent_beam = pool[i], beams[pool[i].beam]
            beam = Beam(
                steps=[*parent_beam.steps, c.text],
                nodes=[*parent_beam.nodes, by_index[i].id],
                scores=[*parent_beam.scores, c.score],
                value=c.value,
            )
            if by_index[i].status == "finished":
                self.finished_beams.append(beam)
            else:
                live.append(beam)
        return nodes, live

    async def _score(self, pool: list[_Candidate], beams: list[Beam], index: int) -> None:
        """Score the whole pool in one call (the heuristic's rule for the rationale); after a
        scorer failure, as the degraded heuristic does."""
        reward = getattr(self, "reward", None)
        if self.heuristic.kind in REWARD_HEURISTICS and reward is not None:
            paths = [[*beams[c.beam].steps, c.text] for c in pool]
            try:
                scored = await reward_scores(self, reward, paths, self.request.aggregation)
            except DOWN_ERRORS as exc:  # as the step loop: likelihood from here on
                self._degrade("reward", without_reward(self.heuristic.kind), index, exc)
            else:
                for c, (steps, value) in zip(pool, scored, strict=True):
                    c.score, c.value = steps[-1], value
                return
        h = self.heuristic
        if h.uses_scorer:
            with_rationale = h.wants_rationale and not h.rationale_in_prompt
            items = [
                (beams[c.beam].steps, c.text, c.rationale if with_rationale else None) for c in pool
            ]
            try:
                scores = await self.score_many(items)
            except DOWN_ERRORS as exc:
                self._degrade("scorer", without_scorer(h.kind), index, exc)
            else:
                for c, s in zip(pool, scores, strict=True):
                    c.score = s
                return
        if self.heuristic.kind.value == "random":
            for c in pool:
                c.key = self.rng.random()

    async def run(self) -> AsyncGenerator[TreeNode | ReasonResponse, None]:
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        beams = [Beam()]
        last_cost = 0
        for index in range(self.request.max_steps):
            expand = functools.partial(self._expand, index, beams)
            done = await self._guarded_step(index, deadline, last_cost, expand)
            if done is None:
                break
            (nodes, live), last_cost = done
            for node in nodes:
                yield node
            if self.out_of_candidates:
                break  # the live beams so far stand
            beams = live
            if not beams or self._slots() <= 0:
                break
        best = self._best(beams)
        stopped = self.cancelled or self.budget_reached
        if best is not None and not self.finished_beams and not stopped:
            async for node in self._answer(best, deadline):
                yield node
        best = self._best(beams)
        if best is not None:
            self.steps = list(best.steps)
            self.finished = bool(best.steps) and ends_solution(best.steps[-1])
            chosen = set(best.nodes)
            for node in self.tree:
                if node.id in chosen:
                    node.status = "chosen"
                    yield node
        response = self.response(time.perf_counter() - start)
        response.strategy = Strategy.beam
        total = response.timings.total_ms
        model = round(self.model_ms, 3)
        response.timings = Timings(
            total_ms=total, model_ms=model, overhead_ms=round(total - model, 3)
        )
        yield response

    def _best(self, live: Sequence[Beam]) -> Beam | None:
        """The finished beam with the best path score (the first on ties); without one, the
        best live beam (live beams come ranked)."""
        if self.finished_beams:
            return max(
                enumerate(self.finished_beams), key=lambda ib: (rank_key(ib[1].value), -ib[0])
            )[1]
        return live[0] if live else None

    async def _answer(self, beam: Beam, deadline: float) -> AsyncGenerator[TreeNode, None]:
        """The forced answer step of the loop on the best live beam."""
        self.steps = list(beam.steps)
        trace = await self._force_answer(len(beam.steps), deadline)
        if trace is None:
            return
        parent = beam.nodes[-1] if beam.nodes else None
        nodes = step_nodes(trace, parent, len(self.tree), answer=extract_answer(trace.step))
        for node in nodes:
            node.aggregate = aggregate([*beam.scores, node.score], self.request.aggregation)
            node.status = "finished" if node.status == "chosen" else "pruned"
        self.tree.extend(nodes)
        self.model_ms += trace.timings.model_ms
        chosen = trace.candidates[trace.chosen]
        node = next(n for n in nodes if n.status == "finished")
        self.finished_beams.append(
            Beam(
                steps=[*beam.steps, trace.step],
                nodes=[*beam.nodes, node.id],
                scores=[*beam.scores, chosen.score],
                value=node.aggregate,
            )
        )
        for n in nodes:
            yield n
