"""The propose-score-select loop (RATIONALYST inference) as plain async code.

Per step, with trajectory T = question + steps chosen so far:

1. the rationalyst writes a rationale for T and, at the same time, the agent proposes
   ``n_candidates`` next steps (explicit supervision: the agent waits for the rationale, which
   goes into its prompt);
2. candidates that repeat a step of the trajectory are dropped (when all do, the agent is
   asked once more, hotter; when those all repeat too, the search stops); identical
   candidates (whitespace-normalized) are merged, the first kept;
3. the scorer scores all distinct candidates in ONE /v1/score call, each as the next assistant
   turn after :func:`gateway.prompts.scoring_context`;
4. the best is kept (first on ties; an answer of the wrong kind gives way to one of the
   expected kind, see :mod:`gateway.answering`); the loop stops as soon as the kept step
   states an answer, or after ``max_steps``.

A search that ends without an answer step (max_steps, deadline, no usable candidates) asks the
agent for one more step forced to open with the demos' answer prefix ("The answer is:"),
scored like any step, so that a response carries an answer unless the model writes nothing
readable; ``finish`` says which way it ended.

Degradation (non-strict requests): when the rationalyst is down the run continues as
``likelihood``; when the scorer is down, as ``random``. Each switch is recorded in
``fallbacks`` and ``warnings`` and holds for the rest of the request. A service that is slow
(busy) is waited for, never replaced: only a service that is down changes the method, so
overload shows as latency or as a 503 at the gateway's admission, not as a silently worse
search. In strict mode, and whenever the agent fails, the typed error propagates (503 down,
504 on a call's own timeout). When the deadline passes, or the search is cancelled
(:meth:`Reasoner.cancel`), the step in flight is abandoned (its upstream calls are
cancelled) and the steps chosen so far are returned with ``deadline_reached`` or
``cancelled``.

Nothing here imports FastAPI; :mod:`gateway.handlers` maps results and errors to HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.answering import (
    all_repeat,
    answer_fits,
    choose_few_shot,
    find_repeats,
    prefer_answer_kind,
    retry_temperature,
)
from gateway.heuristics import (
    Ranking,
    StepHeuristic,
    build_heuristic,
    uses_reward,
    without_rationale,
    without_reward,
    without_scorer,
)
from gateway.prompts import scoring_context
from gateway.reward import REWARD_HEURISTICS, RewardScorer, require_reward
from gateway.upstreams import ServiceName, Upstreams
from shared.answer_kinds import AnswerKind
from shared.answers import extract_answer
from shared.errors import InvalidRequest, ServiceError, ServiceUnavailable
from shared.gateway_schemas import (
    CandidateTrace,
    Fallback,
    Finish,
    Heuristic,
    ReasonRequest,
    ReasonResponse,
    SelectRequest,
    SelectResponse,
    ServiceUsage,
    StageTimings,
    StepTrace,
    Timings,
    TreeNode,
    Usage,
)
from shared.schemas import (
    Demo,
    ProposeRequest,
    ProposeResponse,
    RationaleRequest,
    RationaleResponse,
    ScoreRequest,
    TokenLogprob,
)
from shared.steps import ends_solution, solution_answer, step_text

logger = logging.getLogger(__name__)

T = TypeVar("T")

DOWN_ERRORS: tuple[type[ServiceError], ...] = (ServiceUnavailable,)
"""Upstream failures that trigger a fallback (non-strict) instead of failing the request: the
service is unreachable or answered 503. A timeout (UpstreamTimeout) is not one of them."""

_DEFAULT_PHASE: dict[ServiceName, str] = {
    "rationalyst": "rationale",
    "agent": "propose",
    "scorer": "score",
    "reward": "reward",
}

DEFAULT_ANSWER_GRACE_S = 10.0
"""Longest the forced answer step may run past the deadline (GATEWAY_ANSWER_GRACE_S)."""
RETRY_SEED_OFFSET = 1_000_003
SCORE_BATCH = 64
"""Most continuations in one /v1/score call (the model service's default max_continuations)."""
"""Added to a step's seed for the retry after every candidate repeated the trajectory."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def normalize(text: str) -> str:
    """The form in which candidates are compared: whitespace runs collapsed, ends stripped."""
    return " ".join(text.split())


def merge_duplicates(
    texts: Sequence[str], skip: Sequence[bool] | None = None
) -> tuple[list[int], list[int | None]]:
    """Indices of the distinct non-empty candidates (first occurrences) and, per candidate,
    the index of the earlier identical one it duplicates (None for originals and empties).
    Candidates marked in ``skip`` are left out like empty ones."""
    first: dict[str, int] = {}
    distinct: list[int] = []
    duplicate_of: list[int | None] = []
    for i, text in enumerate(texts):
        key = normalize(text)
        if not key or (skip is not None and skip[i]):
            duplicate_of.append(None)
            continue
        if key in first:
            duplicate_of.append(first[key])
        else:
            first[key] = i
            distinct.append(i)
            duplicate_of.append(None)
    return distinct, duplicate_of


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)


@dataclass
class ServiceCounter:
    """Calls and tokens of one model service over a request."""

    calls: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def add(self, *, prompt: int | None = None, completion: int | None = None) -> None:
        if prompt is not None:
            self.prompt_tokens = (self.prompt_tokens or 0) + prompt
        if completion is not None:
            self.completion_tokens = (self.completion_tokens or 0) + completion

    def model(self) -> ServiceUsage:
        return ServiceUsage(
            calls=self.calls,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


@dataclass
class _Selection:
    """One ranked step: the candidates' traces and the chosen index."""

    candidates: list[CandidateTrace]
    chosen: int | None
    duplicates: int
    score_ms: float | None
    heuristic: Heuristic


class _Run:
    """State one request shares across its steps: the heuristic in use (it may degrade),
    fallbacks, warnings, usage, and the seeded generator of the `random` heuristic."""

    def __init__(
        self,
        upstreams: Upstreams,
        *,
        question: str,
        requested: Heuristic,
        strict: bool,
        seed: int | None,
        decay: float,
        demos: Sequence[Demo] | None,
        answer_kind: AnswerKind | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.question = question
        self.requested = requested
        self.strict = strict
        self.seed = seed if seed is not None else new_seed()
        self.rng = random.Random(self.seed)
        self.heuristic: StepHeuristic = build_heuristic(requested, rng=self.rng)
        self.decay = decay
        self.few_shot = choose_few_shot(question, demos, answer_kind)
        self.demos: list[Demo] = self.few_shot.demos
        self.fallbacks: list[Fallback] = []
        self.warnings: list[str] = list(self.few_shot.warnings)
        self.reward: RewardScorer | None = None
        if requested in REWARD_HEURISTICS:  # 422 naming `heuristic` when none is configured
            client = require_reward(upstreams.reward, requested)
            self.reward = RewardScorer(
                client, question, heuristic=requested, warnings=self.warnings
            )
        self.counters: dict[ServiceName, ServiceCounter] = {
            "rationalyst": ServiceCounter(),
            "agent": ServiceCounter(),
            "scorer": ServiceCounter(),
            "reward": ServiceCounter(),
        }
        self.phases: dict[str, ServiceCounter] = {}
        self.phase: str | None = None
        """Set by a strategy to file the next calls under a phase other than the default."""
        self.trace_tokens = False  # per-token log-probs of scored candidates in their traces
        self._tokens: dict[tuple[tuple[str, ...], str], list[TokenLogprob] | None] = {}
        """With ``trace_tokens``: per (prefix steps, candidate), its tokens in its last
        scoring; read into traces and tree nodes, then cleared."""

    # -- accounting ---------------------------------------------------------------------------

    def _phase(self, default: str) -> ServiceCounter:
        return self.phases.setdefault(self.phase or default, ServiceCounter())

    def count(
        self,
        service: ServiceName,
        phase: str,
        *,
        prompt: int | None = None,
        completion: int | None = None,
    ) -> None:
        """Record a call's tokens for its service and its phase."""
        self.counters[service].add(prompt=prompt, completion=completion)
        self._phase(phase).add(prompt=prompt, completion=completion)

    def budget_tokens(self) -> int:
        """Generated tokens of every service plus the tokens the scorer and the reward model
        scored. The prompts the agent and the rationalyst read are in :meth:`usage`, not
        here: the budget bounds the search's own work, what it writes and what it scores to
        choose, while a generator's prompt is mostly the same demos at every call (prefix-
        cached by the engines) and would otherwise spend a small budget on step 0 alone."""
        generated = sum(c.completion_tokens or 0 for c in self.counters.values())
        scored = sum(self.counters[s].prompt_tokens or 0 for s in ("scorer", "reward"))
        return generated + scored

    # -- upstream calls -----------------------------------------------------------------------

    async def _call(self, service: ServiceName, call: Awaitable[T], phase: str = "") -> T:
        """Await one upstream call: count it; a response that does not parse means the
        service is broken, which is reported as it being unavailable."""
        self.counters[service].calls += 1
        self._phase(phase or _DEFAULT_PHASE[service]).calls += 1
        try:
            return await call
        except ServiceError:
            raise
        except ValueError as exc:  # pydantic.ValidationError, JSON decoding
            raise ServiceUnavailable(f"{service} returned an unexpected response: {exc}") from exc

    def _degrade(self, service: ServiceName, to: Heuristic, step: int, exc: ServiceError) -> None:
        if self.strict:
            raise exc
        before = self.heuristic.kind
        self.heuristic = build_heuristic(to, rng=self.rng)
        reason = exc.message
        self.fallbacks.append(
            Fallback(
                step=step, service=service, from_heuristic=before, to_heuristic=to, reason=reason
            )
        )
        self.warnings.append(
            f"{service} unavailable at step {step} ({reason}); continuing as {to.value}"
        )
        logger.warning("%s down at step %d: falling back from %s to %s", service, step, before, to)

    async def rationale(
        self, steps: Sequence[str], step: int, max_tokens: int
    ) -> RationaleResponse | None:
        """The rationale for the trajectory; None after degrading (rationalyst down)."""
        req = RationaleRequest(
            question=self.question, steps=list(steps), max_tokens=max_tokens, temperature=0.0
        )
        try:
            res = await self._call("rationalyst", self.upstreams.rationalyst.rationale(req))
        except DOWN_ERRORS as exc:
            if self.heuristic.wants_rationale:  # beams asking at once degrade once
                self._degrade("rationalyst", without_rationale(self.heuristic.kind), step, exc)
            return None
        self.count("rationalyst", "rationale", prompt=res.prompt_tokens, completion=res.num_tokens)
        return res

    async def score(
        self, steps: Sequence[str], candidates: Sequence[str], rationale: str | None
    ) -> list[float]:
        """Score every candidate in one /v1/score call: (1/L) * sum_i decay**i * log p_i."""
        req = ScoreRequest(
            context=scoring_context(self.question, steps, self.demos, rationale),
            continuations=list(candidates),
            decay=self.decay,
            return_tokens=self.trace_tokens,
        )
        res = await self._call("scorer", self.upstreams.scorer.score(req))
        self.count("scorer", "score", prompt=res.prompt_tokens)
        if self.trace_tokens:
            prefix = tuple(steps)
            self._tokens.update(
                ((prefix, c), s.tokens) for c, s in zip(candidates, res.scores, strict=False)
            )
        if len(res.scores) != len(candidates):
            raise ServiceUnavailable(
                f"scorer returned {len(res.scores)} scores for {len(candidates)} continuations"
            )
        return [s.decayed_sum / s.num_tokens if s.num_tokens else -math.inf for s in res.scores]

    async def score_many(
        self, items: Sequence[tuple[Sequence[str], str, str | None]]
    ) -> list[float]:
        """Score continuations of several prefixes: ``(steps, candidate, rationale)`` each, as
        the next step after its prefix (and rationale), in one /v1/score call per
        :data:`SCORE_BATCH` continuations (one call for every pool up to that size; chunks of
        a larger one run concurrently). Each distinct (prefix, rationale) is one context.
        With ``trace_tokens``, each continuation's tokens are kept for :meth:`scored_tokens`
        (the tree nodes' colouring), as :meth:`score` keeps them for the step trace."""
        chunks = [items[i : i + SCORE_BATCH] for i in range(0, len(items), SCORE_BATCH)]
        results = await asyncio.gather(*(self._score_chunk(c) for c in chunks))
        return [score for chunk in results for score in chunk]

    async def _score_chunk(
        self, items: Sequence[tuple[Sequence[str], str, str | None]]
    ) -> list[float]:
        keys: dict[tuple[tuple[str, ...], str | None], int] = {}
        for steps, _, rationale in items:
            keys.setdefault((tuple(steps), rationale), len(keys))
        contexts = [scoring_context(self.question, k[0], self.demos, k[1]) for k in keys]
        req = ScoreRequest(
            context=contexts[0],
            contexts=contexts[1:] or None,
            context_index=[keys[(tuple(st), r)] for st, _, r in items] if len(keys) > 1 else None,
            continuations=[c for _, c, _ in items],
            decay=self.decay,
            return_tokens=self.trace_tokens,
        )
        res = await self._call("scorer", self.upstreams.scorer.score(req))
        self.count("scorer", "score", prompt=res.prompt_tokens)
        if self.trace_tokens:
            self._tokens.update(
                ((tuple(st), c), s.tokens) for (st, c, _), s in zip(items, res.scores, strict=False)
            )
        if len(res.scores) != len(items):
            raise ServiceUnavailable(
                f"scorer returned {len(res.scores)} scores for {len(items)} continuations"
            )
        return [s.decayed_sum / s.num_tokens if s.num_tokens else -math.inf for s in res.scores]

    async def rank(
        self,
        steps: Sequence[str],
        texts: Sequence[str],
        rationale: str | None,
        step: int,
        *,
        score_single: bool = False,
        skip: Sequence[bool] | None = None,
    ) -> _Selection:
        """Merge duplicates and rank the distinct candidates with the current heuristic.

        A single distinct candidate is taken without a scorer call unless ``score_single``.
        Candidates marked in ``skip`` are neither scored nor chosen.
        """
        distinct, duplicate_of = merge_duplicates(texts, skip)
        traces = [
            CandidateTrace(text=t, duplicate_of=d) for t, d in zip(texts, duplicate_of, strict=True)
        ]
        duplicates = sum(d is not None for d in duplicate_of)
        if not distinct:
            return _Selection(traces, None, duplicates, None, self.heuristic.kind)
        if len(distinct) == 1 and not score_single:
            return _Selection(traces, distinct[0], duplicates, None, self.heuristic.kind)

        scored = False

        async def score_fn(cands: Sequence[str], r: str | None) -> list[float]:
            nonlocal scored
            scored = True
            if uses_reward(self.heuristic):
                return await self.reward_scores(steps, cands)
            return await self.score(steps, cands, r)

        unique = [texts[i] for i in distinct]
        start = time.perf_counter()
        try:
            ranking: Ranking = await self._rank_reward_first(unique, rationale, score_fn, step)
        except DOWN_ERRORS as exc:
            self._degrade("scorer", without_scorer(self.heuristic.kind), step, exc)
            ranking = await self.heuristic.rank(unique, rationale, score_fn)
        score_ms = _ms(time.perf_counter() - start) if scored else None
        by_index = dict(zip(distinct, ranking.scores, strict=True))
        for i, trace in enumerate(traces):
            trace.score = by_index.get(i if trace.duplicate_of is None else trace.duplicate_of)
            if trace.duplicate_of is None:
                trace.tokens = self.scored_tokens(steps, trace.text)
        self._tokens.clear()
        return _Selection(
            traces, distinct[ranking.chosen], duplicates, score_ms, self.heuristic.kind
        )

    def scored_tokens(self, steps: Sequence[str], text: str) -> list[TokenLogprob] | None:
        """With ``trace_tokens``: ``text``'s tokens and log-probs after ``steps`` in its last
        scoring by the scorer (None without, or when the scorer did not score it)."""
        return self._tokens.get((tuple(steps), text))

    async def _rank_reward_first(
        self, unique: Sequence[str], rationale: str | None, score_fn: Any, step: int
    ) -> Ranking:
        """Rank with the heuristic; a reward heuristic whose service is down degrades to
        ``likelihood`` (non-strict) and ranks again with the scorer."""
        try:
            return await self.heuristic.rank(unique, rationale, score_fn)
        except DOWN_ERRORS as exc:
            if not uses_reward(self.heuristic):
                raise
            self._degrade("reward", without_reward(self.heuristic.kind), step, exc)
            return await self.heuristic.rank(unique, rationale, score_fn)

    async def reward_scores(self, steps: Sequence[str], candidates: Sequence[str]) -> list[float]:
        """Every candidate as the next step, scored by the reward service in one call."""
        assert self.reward is not None  # set whenever a reward heuristic was requested
        before = self.reward.prompt_tokens
        scores = await self._call("reward", self.reward.candidates(steps, candidates))
        self.count("reward", "reward", prompt=self.reward.prompt_tokens - before)
        return scores

    def usage(self) -> Usage:
        return Usage(
            rationalyst=self.counters["rationalyst"].model(),
            agent=self.counters["agent"].model(),
            scorer=self.counters["scorer"].model(),
            phases={name: c.model() for name, c in self.phases.items()},
            budget_tokens=self.budget_tokens(),
            reward=self.counters["reward"].model(),
        )


class Reasoner(_Run):
    """One /v1/reason request. Iterate :meth:`run` for per-step traces; the last item is the
    :class:`ReasonResponse`. :func:`reason` runs it to the end."""

    def __init__(
        self,
        request: ReasonRequest,
        upstreams: Upstreams,
        *,
        max_deadline_s: float = 600.0,
        request_id: str | None = None,
        answer_grace_s: float = DEFAULT_ANSWER_GRACE_S,
    ) -> None:
        super().__init__(
            upstreams,
            question=request.question,
            requested=request.heuristic,
            strict=request.strict,
            seed=request.seed,
            decay=request.decay,
            demos=request.few_shot,
            answer_kind=request.answer_kind,
        )
        self.request = request
        self.trace_tokens = request.trace_tokens
        self.answer_grace_s = answer_grace_s
        self.request_id = request_id
        self.deadline_s = min(request.deadline_s or math.inf, max_deadline_s)
        self.steps: list[str] = []
        self.trace: list[StepTrace] = []
        self.finished = False
        self.deadline_reached = False
        self.cancelled = False
        self._step_timeout: asyncio.Timeout | None = None
        self.forced_answer = False
        self.out_of_candidates = False
        self.budget_reached = False
        self.repeats = 0
        self.tree: list[TreeNode] = []
        if request.heuristic is Heuristic.greedy:
            if "n_candidates" in request.model_fields_set and request.n_candidates != 1:
                self.warnings.append("greedy proposes one candidate per step; n_candidates ignored")
            # Plain chain of thought decodes greedily unless the caller chose a temperature.
            self.temperature = (
                request.temperature if "temperature" in request.model_fields_set else 0.0
            )
        else:
            self.temperature = request.temperature

    async def _propose(
        self,
        n: int,
        rationale: str | None,
        step: int,
        *,
        temperature: float | None = None,
        seed_offset: int = 0,
        prefix: str | None = None,
        steps: Sequence[str] | None = None,
    ) -> ProposeResponse:
        seed = self.request.seed
        req = ProposeRequest(
            question=self.question,
            steps=list(self.steps if steps is None else steps),
            n=n,
            temperature=self.temperature if temperature is None else temperature,
            seed=None if seed is None else seed + step + seed_offset,
            max_tokens=self.request.max_step_tokens,
            few_shot=self.demos,
            rationale=rationale,
            step_prefix=prefix,
        )
        phase = "answer" if prefix else "propose"
        res = await self._call("agent", self.upstreams.agent.propose(req), phase)
        completion = sum(c.num_tokens for c in res.candidates)
        self.count("agent", phase, prompt=res.prompt_tokens, completion=completion)
        return res

    async def _step(self, index: int, *, forced: bool = False) -> StepTrace | None:
        """Run one step; None when the agent proposed nothing usable (the run ends).

        ``forced``: the answer step, every candidate opening with the demos' answer prefix;
        candidates that state no readable answer are not chosen, and there is no retry.
        """
        start = time.perf_counter()
        h = self.heuristic
        n = h.num_candidates(self.request.n_candidates)
        prefix = self.few_shot.answer_prefix if forced else None
        rationale: RationaleResponse | None = None
        rationale_ms: float | None = None
        propose_ms: float | None = None

        async def timed_rationale() -> RationaleResponse | None:
            nonlocal rationale_ms
            t = time.perf_counter()
            try:
                return await self.rationale(self.steps, index, self.request.max_rationale_tokens)
            finally:
                rationale_ms = _ms(time.perf_counter() - t)

        async def timed_propose(r: str | None, **kw: Any) -> ProposeResponse:
            nonlocal propose_ms
            t = time.perf_counter()
            try:
                return await self._propose(n, r, index, prefix=prefix, **kw)
            finally:
                propose_ms = round((propose_ms or 0.0) + _ms(time.perf_counter() - t), 3)

        phase1 = time.perf_counter()
        if h.wants_rationale and h.rationale_in_prompt:
            rationale = await timed_rationale()
            proposals = await timed_propose(rationale.rationale if rationale else None)
        elif h.wants_rationale:
            rationale, proposals = await _both(timed_rationale(), timed_propose(None))
        else:
            proposals = await timed_propose(None)
        rationale_text = rationale.rationale if rationale else None
        candidates = list(proposals.candidates)
        texts = [step_text(c.text) for c in candidates]
        repeat_of = find_repeats(texts, self.steps)
        retry_t: float | None = None
        if not forced and all_repeat(texts, repeat_of):
            # Every candidate says again what the trajectory already says: one more try,
            # sampled hotter, before giving up.
            retry_t = retry_temperature(self.temperature)
            more = await timed_propose(
                rationale_text if h.rationale_in_prompt else None,
                temperature=retry_t,
                seed_offset=RETRY_SEED_OFFSET,
            )
            candidates += more.candidates
            texts += [step_text(c.text) for c in more.candidates]
            repeat_of = find_repeats(texts, self.steps)
        phase1_ms = _ms(time.perf_counter() - phase1)

        skip = [r is not None for r in repeat_of]
        repeats = sum(skip)
        self.repeats += repeats
        if forced:
            skip = [s or extract_answer(t) is None for s, t in zip(skip, texts, strict=True)]
        # Implicit supervision scores with the rationale; after a fallback there is none.
        selection = await self.rank(self.steps, texts, rationale_text, index, skip=skip)
        for trace, cand, rep in zip(selection.candidates, candidates, repeat_of, strict=True):
            trace.num_tokens = cand.num_tokens
            trace.finish_reason = cand.finish_reason
            trace.repeat_of = rep
        if selection.chosen is None:
            if forced:
                self.warnings.append(
                    f"the answer step asked for at step {index} states no readable answer"
                )
            elif repeats:
                self.out_of_candidates = True
                self.warnings.append(
                    f"every candidate at step {index} repeated an earlier step, also when "
                    f"sampled at temperature {retry_t:g}; stopping with the steps so far"
                )
            else:
                self.out_of_candidates = True
                self.warnings.append(
                    f"the agent proposed no non-empty step at step {index}; stopping"
                )
            return None
        chosen, step_warnings = self._check_answer_kind(selection.candidates, selection.chosen)
        return StepTrace(
            index=index,
            heuristic=selection.heuristic,
            rationale=rationale_text,
            rationale_logprob=rationale.mean_logprob if rationale else None,
            candidates=selection.candidates,
            chosen=chosen,
            step=texts[chosen],
            duplicates=selection.duplicates,
            repeats=repeats,
            retry_temperature=retry_t,
            forced_answer=forced,
            timings=StageTimings(
                rationale_ms=rationale_ms,
                propose_ms=propose_ms,
                score_ms=selection.score_ms,
                model_ms=round(phase1_ms + (selection.score_ms or 0.0), 3),
                total_ms=_ms(time.perf_counter() - start),
            ),
            warnings=step_warnings,
        )

    def cancel(self) -> None:
        """Stop the search: the step in flight is abandoned at once (its upstream calls are
        cancelled) and :meth:`run` yields the response with the steps chosen so far."""
        self.cancelled = True
        if self._step_timeout is not None:
            self._step_timeout.reschedule(asyncio.get_running_loop().time())

    def _check_answer_kind(
        self, candidates: Sequence[CandidateTrace], chosen: int
    ) -> tuple[int, list[str]]:
        """The chosen index after the answer-kind check, and the step's warnings about it."""
        kind, options = self.few_shot.answer_kind, self.few_shot.options
        better = prefer_answer_kind(candidates, chosen, kind, options)
        stated = extract_answer(candidates[chosen].text)
        if better is not None:
            return better, [
                f"the best-scored answer {stated!r} does not read as {kind.value}; "
                f"candidate {better} states one that does"
            ]
        if stated is not None and not answer_fits(stated, kind, options):
            message = f"the answer {stated!r} does not read as {kind.value}"
            self.warnings.append(message)
            return chosen, [message]
        return chosen, []

    async def _force_answer(self, index: int, deadline: float) -> StepTrace | None:
        """The answer step after a search that ran out without one; None when it fails.

        It may run until the search's deadline or, when that is sooner (or past), for
        ``min(answer_grace_s, deadline_s)`` from now. A failure or a timeout here is a warning
        (in strict mode a failing service still raises): the steps chosen so far stand.
        """
        now = asyncio.get_running_loop().time()
        until = max(deadline, now + min(self.answer_grace_s, self.deadline_s))
        timeout = asyncio.timeout_at(until)
        self.phase = "answer"
        try:
            async with timeout:
                self._step_timeout = timeout  # cancel() ends it too
                trace = await self._step(index, forced=True)
        except TimeoutError:
            if not timeout.expired():
                raise
            if self.cancelled:
                self.warnings.append(f"cancelled during the answer step (step {index})")
            else:
                self.warnings.append(f"the answer step did not finish in time (step {index})")
            return None
        except ServiceError as exc:
            if self.strict:
                raise
            self.warnings.append(f"the answer step failed (step {index}): {exc.message}")
            return None
        finally:
            self._step_timeout = None
            self.phase = None
        if trace is not None:
            self.forced_answer = self.finished = True
        return trace

    def finish(self) -> Finish:
        """How the search ended."""
        if self.forced_answer:
            return Finish.forced_answer
        if self.finished:
            return Finish.answer
        if self.cancelled:
            return Finish.cancelled
        if self.deadline_reached:
            return Finish.deadline
        if self.budget_reached:
            return Finish.budget
        if self.out_of_candidates:
            return Finish.no_candidates
        return Finish.max_steps

    def _over_budget(self, index: int, last_cost: int) -> bool:
        """True (and noted) when the next step, costing about as much as the last one, would
        take the search past ``max_tokens_budget``."""
        budget = self.request.max_tokens_budget
        if budget is None or index == 0 or self.budget_tokens() + last_cost <= budget:
            return False
        self.budget_reached = True
        self.warnings.append(
            f"max_tokens_budget {budget}: {self.budget_tokens()} tokens spent, the next step "
            f"would take about {last_cost} more; stopping before step {index}"
        )
        return True

    async def _guarded_step(
        self, index: int, deadline: float, last_cost: int, step: Callable[[], Awaitable[T]]
    ) -> tuple[T, int] | None:
        """Run one search step under the search's deadline, with what it cost in budget
        tokens; None, with the reason in the warnings, when the search stops before or during
        it: cancelled, out of ``max_tokens_budget`` (a next step costing about ``last_cost``),
        or past the deadline. ``cancel()`` ends a step in flight through the same timeout."""
        if self.cancelled:
            self.warnings.append(f"cancelled before step {index}")
            return None
        if self._over_budget(index, last_cost):
            return None
        spent = self.budget_tokens()
        timeout = asyncio.timeout_at(deadline if math.isfinite(deadline) else None)
        try:
            async with timeout:
                self._step_timeout = timeout
                result = await step()
        except TimeoutError:
            if not timeout.expired():
                raise
            if self.cancelled:
                self.warnings.append(f"cancelled during step {index}; returning the best so far")
            else:
                self.deadline_reached = True
                self.warnings.append(
                    f"deadline of {self.deadline_s:g}s reached during step {index}; "
                    "returning the best so far"
                )
            return None
        finally:
            self._step_timeout = None
        return result, self.budget_tokens() - spent

    async def run(self) -> AsyncGenerator[StepTrace | TreeNode | ReasonResponse, None]:
        """Yield each step's trace as it is chosen and its tree nodes, then the response."""
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        last_cost = 0
        for index in range(self.request.max_steps):
            done = await self._guarded_step(
                index, deadline, last_cost, functools.partial(self._step, index)
            )
            if done is None:
                break
            trace, last_cost = done
            if trace is None:  # no usable candidate
                break
            self.steps.append(trace.step)
            self.trace.append(trace)
            yield trace
            for node in self._add_nodes(trace):
                yield node
            if ends_solution(trace.step):
                self.finished = True
                break
        # A cancelled search stops here, and so does one out of budget.
        if not self.finished and not self.cancelled and not self.budget_reached:
            forced = await self._force_answer(len(self.steps), deadline)
            if forced is not None:
                self.steps.append(forced.step)
                self.trace.append(forced)
                yield forced
                for node in self._add_nodes(forced):
                    yield node
        yield self.response(time.perf_counter() - start)

    def _add_nodes(self, trace: StepTrace) -> list[TreeNode]:
        """The step's nodes: the chosen candidate (on the one path) and the other distinct
        candidates, pruned."""
        parent = next((n.id for n in reversed(self.tree) if n.status == "chosen"), None)
        nodes = step_nodes(trace, parent, len(self.tree), answer=extract_answer(trace.step))
        if nodes:  # the tree shows where a service failed
            nodes[0].warnings += fallback_notes(self.fallbacks, trace.index)
        self.tree.extend(nodes)
        return nodes

    def response(self, elapsed_s: float) -> ReasonResponse:
        total_ms = _ms(elapsed_s)
        model_ms = round(sum(t.timings.model_ms for t in self.trace), 3)
        return ReasonResponse(
            id=self.request_id,
            question=self.question,
            answer=solution_answer(self.steps),
            steps=list(self.steps),
            finished=self.finished,
            finish=self.finish(),
            deadline_reached=self.deadline_reached,
            cancelled=self.cancelled,
            answer_kind=self.few_shot.answer_kind,
            answer_kind_source=self.few_shot.answer_kind_source,
            few_shot_source=self.few_shot.source,
            few_shot_kind=self.few_shot.demo_kind,
            repeats=self.repeats,
            heuristic_requested=self.requested,
            heuristic_used=self.heuristic.kind,
            seed=self.seed,
            fallbacks=self.fallbacks,
            warnings=self.warnings,
            trace=self.trace,
            usage=self.usage(),
            timings=Timings(
                total_ms=total_ms, model_ms=model_ms, overhead_ms=round(total_ms - model_ms, 3)
            ),
            tree=self.tree,
            budget_reached=self.budget_reached,
        )


def fallback_notes(fallbacks: Sequence[Fallback], step: int) -> list[str]:
    """The degradations that happened at ``step``, as node warnings."""
    return [
        f"{f.service} unavailable ({f.reason}); continuing as {f.to_heuristic.value}"
        for f in fallbacks
        if f.step == step
    ]


def step_nodes(
    trace: StepTrace, parent: str | None, first_id: int, *, answer: str | None = None
) -> list[TreeNode]:
    """Tree nodes of one step of the `step` strategy: its distinct non-empty candidates, the
    chosen one ``chosen`` and the others ``pruned`` (duplicates are merged into the first)."""
    nodes: list[TreeNode] = []
    warnings = list(trace.warnings)
    for i, cand in enumerate(trace.candidates):
        if cand.duplicate_of is not None or not cand.text:
            continue
        chosen = i == trace.chosen
        nodes.append(
            TreeNode(
                id=f"n{first_id + len(nodes)}",
                parent=parent,
                depth=trace.index,
                text=cand.text,
                score=cand.score,
                aggregate=cand.score,
                status="chosen" if chosen else "pruned",
                rationale=trace.rationale,
                answer=answer if chosen else None,
                timings_ms=trace.timings.total_ms,
                warnings=warnings if chosen else [],
                tokens=cand.tokens,
            )
        )
    return nodes


async def reason(
    request: ReasonRequest,
    upstreams: Upstreams,
    *,
    max_deadline_s: float = 600.0,
    request_id: str | None = None,
    answer_grace_s: float = DEFAULT_ANSWER_GRACE_S,
) -> ReasonResponse:
    """Run the loop to the end and return the response."""
    reasoner = Reasoner(
        request,
        upstreams,
        max_deadline_s=max_deadline_s,
        request_id=request_id,
        answer_grace_s=answer_grace_s,
    )
    return await run_to_end(reasoner)


async def run_to_end(reasoner: Reasoner) -> ReasonResponse:
    """Iterate a search to its response."""
    async for item in reasoner.run():
        if isinstance(item, ReasonResponse):
            return item
    raise AssertionError("the loop ended without a response")  # pragma: no cover


async def select(
    request: SelectRequest, upstreams: Upstreams, *, request_id: str | None = None
) -> SelectResponse:
    """Rank caller-supplied candidates for the next step of a trajectory (/v1/select).

    Every distinct candidate is scored, even when there is only one.
    """
    start = time.perf_counter()
    requested = request.heuristic
    kind = Heuristic.rationalyst if requested is Heuristic.rationalyst_explicit else requested
    run = _Run(
        upstreams,
        question=request.question,
        requested=kind,
        strict=request.strict,
        seed=request.seed,
        decay=request.decay,
        demos=request.few_shot,
        answer_kind=request.answer_kind,
    )
    if requested is Heuristic.rationalyst_explicit:
        run.warnings.append("rationalyst_explicit ranks given candidates as rationalyst")
    rationale_text = request.rationale
    rationale_ms: float | None = None
    if run.heuristic.wants_rationale and rationale_text is None:
        t = time.perf_counter()
        res = await run.rationale(request.steps, len(request.steps), request.max_rationale_tokens)
        rationale_ms = _ms(time.perf_counter() - t)
        rationale_text = res.rationale if res else None
    elif rationale_text is not None and not run.heuristic.wants_rationale:
        run.warnings.append(f"{kind.value} does not use a rationale; the given one was ignored")
        rationale_text = None
    texts = [c.strip() for c in request.candidates]
    selection = await run.rank(
        request.steps, texts, rationale_text, len(request.steps), score_single=True
    )
    if selection.chosen is None:
        raise InvalidRequest("every candidate is blank", field="candidates")
    traces, score_ms, chosen = selection.candidates, selection.score_ms, selection.chosen
    total_ms = _ms(time.perf_counter() - start)
    model_ms = round((rationale_ms or 0.0) + (score_ms or 0.0), 3)
    return SelectResponse(
        id=request_id,
        chosen=chosen,
        chosen_text=texts[chosen],
        scores=[t.score for t in traces],
        candidates=traces,
        rationale=rationale_text,
        heuristic_requested=requested,
        heuristic_used=run.heuristic.kind,
        seed=run.seed,
        answer_kind=run.few_shot.answer_kind,
        answer_kind_source=run.few_shot.answer_kind_source,
        few_shot_source=run.few_shot.source,
        few_shot_kind=run.few_shot.demo_kind,
        fallbacks=run.fallbacks,
        warnings=run.warnings,
        usage=run.usage(),
        timings=StageTimings(
            rationale_ms=rationale_ms, score_ms=score_ms, model_ms=model_ms, total_ms=total_ms
        ),
    )


async def _both(
    a: Awaitable[RationaleResponse | None], b: Awaitable[ProposeResponse]
) -> tuple[RationaleResponse | None, ProposeResponse]:
    """Run two calls concurrently; if one fails the other is cancelled and the first error
    is raised as is (not wrapped in an ExceptionGroup)."""
    try:
        async with asyncio.TaskGroup() as tg:
            ta = tg.create_task(_as_coro(a))
            tb = tg.create_task(_as_coro(b))
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    return ta.result(), tb.result()


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
