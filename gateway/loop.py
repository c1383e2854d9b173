"""The propose-score-select loop (RATIONALYST inference) as plain async code.

Per step, with trajectory T = question + steps chosen so far:

1. the rationalyst writes a rationale for T and, at the same time, the agent proposes
   ``n_candidates`` next steps (explicit supervision: the agent waits for the rationale, which
   goes into its prompt);
2. identical candidates (whitespace-normalized) are merged, the first kept;
3. the scorer scores all distinct candidates in ONE /v1/score call, each as the next assistant
   turn after :func:`gateway.prompts.scoring_context`;
4. the best is kept (first on ties); the loop stops as soon as the kept step states an answer,
   or after ``max_steps``.

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
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gateway.heuristics import (
    Ranking,
    StepHeuristic,
    build_heuristic,
    without_rationale,
    without_scorer,
)
from gateway.prompts import scoring_context
from gateway.upstreams import ServiceName, Upstreams
from shared.answers import contains_end_phrase, extract_answer
from shared.errors import InvalidRequest, ServiceError, ServiceUnavailable
from shared.fewshot import DEFAULT_DEMOS
from shared.gateway_schemas import (
    CandidateTrace,
    Fallback,
    Heuristic,
    ReasonRequest,
    ReasonResponse,
    SelectRequest,
    SelectResponse,
    ServiceUsage,
    StageTimings,
    StepTrace,
    Timings,
    Usage,
)
from shared.schemas import (
    Demo,
    ProposeRequest,
    ProposeResponse,
    RationaleRequest,
    RationaleResponse,
    ScoreRequest,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

DOWN_ERRORS: tuple[type[ServiceError], ...] = (ServiceUnavailable,)
"""Upstream failures that trigger a fallback (non-strict) instead of failing the request: the
service is unreachable or answered 503. A timeout (UpstreamTimeout) is not one of them."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def normalize(text: str) -> str:
    """The form in which candidates are compared: whitespace runs collapsed, ends stripped."""
    return " ".join(text.split())


def merge_duplicates(texts: Sequence[str]) -> tuple[list[int], list[int | None]]:
    """Indices of the distinct non-empty candidates (first occurrences) and, per candidate,
    the index of the earlier identical one it duplicates (None for originals and empties)."""
    first: dict[str, int] = {}
    distinct: list[int] = []
    duplicate_of: list[int | None] = []
    for i, text in enumerate(texts):
        key = normalize(text)
        if not key:
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
    ) -> None:
        self.upstreams = upstreams
        self.question = question
        self.requested = requested
        self.strict = strict
        self.seed = seed if seed is not None else new_seed()
        self.rng = random.Random(self.seed)
        self.heuristic: StepHeuristic = build_heuristic(requested, rng=self.rng)
        self.decay = decay
        self.demos: list[Demo] = list(DEFAULT_DEMOS if demos is None else demos)
        self.fallbacks: list[Fallback] = []
        self.warnings: list[str] = []
        self.counters: dict[ServiceName, ServiceCounter] = {
            "rationalyst": ServiceCounter(),
            "agent": ServiceCounter(),
            "scorer": ServiceCounter(),
        }

    # -- upstream calls -----------------------------------------------------------------------

    async def _call(self, service: ServiceName, call: Awaitable[T]) -> T:
        """Await one upstream call: count it; a response that does not parse means the
        service is broken, which is reported as it being unavailable."""
        self.counters[service].calls += 1
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
            self._degrade("rationalyst", without_rationale(self.heuristic.kind), step, exc)
            return None
        self.counters["rationalyst"].add(completion=res.num_tokens)
        return res

    async def score(
        self, steps: Sequence[str], candidates: Sequence[str], rationale: str | None
    ) -> list[float]:
        """Score every candidate in one /v1/score call: (1/L) * sum_i decay**i * log p_i."""
        req = ScoreRequest(
            context=scoring_context(self.question, steps, self.demos, rationale),
            continuations=list(candidates),
            decay=self.decay,
            return_tokens=False,
        )
        res = await self._call("scorer", self.upstreams.scorer.score(req))
        self.counters["scorer"].add(prompt=res.prompt_tokens)
        if len(res.scores) != len(candidates):
            raise ServiceUnavailable(
                f"scorer returned {len(res.scores)} scores for {len(candidates)} continuations"
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
    ) -> _Selection:
        """Merge duplicates and rank the distinct candidates with the current heuristic.

        A single distinct candidate is taken without a scorer call unless ``score_single``.
        """
        distinct, duplicate_of = merge_duplicates(texts)
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
            return await self.score(steps, cands, r)

        unique = [texts[i] for i in distinct]
        start = time.perf_counter()
        try:
            ranking: Ranking = await self.heuristic.rank(unique, rationale, score_fn)
        except DOWN_ERRORS as exc:
            self._degrade("scorer", without_scorer(self.heuristic.kind), step, exc)
            ranking = await self.heuristic.rank(unique, rationale, score_fn)
        score_ms = _ms(time.perf_counter() - start) if scored else None
        by_index = dict(zip(distinct, ranking.scores, strict=True))
        for i, trace in enumerate(traces):
            trace.score = by_index.get(i if trace.duplicate_of is None else trace.duplicate_of)
        return _Selection(
            traces, distinct[ranking.chosen], duplicates, score_ms, self.heuristic.kind
        )

    def usage(self) -> Usage:
        return Usage(
            rationalyst=self.counters["rationalyst"].model(),
            agent=self.counters["agent"].model(),
            scorer=self.counters["scorer"].model(),
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
    ) -> None:
        super().__init__(
            upstreams,
            question=request.question,
            requested=request.heuristic,
            strict=request.strict,
            seed=request.seed,
            decay=request.decay,
            demos=request.few_shot,
        )
        self.request = request
        self.request_id = request_id
        self.deadline_s = min(request.deadline_s or math.inf, max_deadline_s)
        self.steps: list[str] = []
        self.trace: list[StepTrace] = []
        self.finished = False
        self.deadline_reached = False
        self.cancelled = False
        self._step_timeout: asyncio.Timeout | None = None
        if request.heuristic is Heuristic.greedy:
            if "n_candidates" in request.model_fields_set and request.n_candidates != 1:
                self.warnings.append("greedy proposes one candidate per step; n_candidates ignored")
            # Plain chain of thought decodes greedily unless the caller chose a temperature.
            self.temperature = (
                request.temperature if "temperature" in request.model_fields_set else 0.0
            )
        else:
            self.temperature = request.temperature

    async def _propose(self, n: int, rationale: str | None, step: int) -> ProposeResponse:
        req = ProposeRequest(
            question=self.question,
            steps=list(self.steps),
            n=n,
            temperature=self.temperature,
            seed=None if self.request.seed is None else self.request.seed + step,
            max_tokens=self.request.max_step_tokens,
            few_shot=self.demos,
            rationale=rationale,
        )
        res = await self._call("agent", self.upstreams.agent.propose(req))
        self.counters["agent"].add(completion=sum(c.num_tokens for c in res.candidates))
        return res

    async def _step(self, index: int) -> StepTrace | None:
        """Run one step; None when the agent proposed nothing usable (the run ends)."""
        start = time.perf_counter()
        h = self.heuristic
        n = h.num_candidates(self.request.n_candidates)
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

        async def timed_propose(r: str | None) -> ProposeResponse:
            nonlocal propose_ms
            t = time.perf_counter()
            try:
                return await self._propose(n, r, index)
            finally:
                propose_ms = _ms(time.perf_counter() - t)

        phase1 = time.perf_counter()
        if h.wants_rationale and h.rationale_in_prompt:
            rationale = await timed_rationale()
            proposals = await timed_propose(rationale.rationale if rationale else None)
        elif h.wants_rationale:
            rationale, proposals = await _both(timed_rationale(), timed_propose(None))
        else:
            proposals = await timed_propose(None)
        phase1_ms = _ms(time.perf_counter() - phase1)

        texts = [c.text.strip() for c in proposals.candidates]
        rationale_text = rationale.rationale if rationale else None
        # Implicit supervision scores with the rationale; after a fallback there is none.
        selection = await self.rank(self.steps, texts, rationale_text, index)
        for trace, cand in zip(selection.candidates, proposals.candidates, strict=True):
            trace.num_tokens = cand.num_tokens
            trace.finish_reason = cand.finish_reason
        if selection.chosen is None:
            self.warnings.append(f"the agent proposed no non-empty step at step {index}; stopping")
            return None
        chosen_text = texts[selection.chosen]
        return StepTrace(
            index=index,
            heuristic=selection.heuristic,
            rationale=rationale_text,
            rationale_logprob=rationale.mean_logprob if rationale else None,
            candidates=selection.candidates,
            chosen=selection.chosen,
            step=chosen_text,
            duplicates=selection.duplicates,
            timings=StageTimings(
                rationale_ms=rationale_ms,
                propose_ms=propose_ms,
                score_ms=selection.score_ms,
                model_ms=round(phase1_ms + (selection.score_ms or 0.0), 3),
                total_ms=_ms(time.perf_counter() - start),
            ),
        )

    def cancel(self) -> None:
        """Stop the search: the step in flight is abandoned at once (its upstream calls are
        cancelled) and :meth:`run` yields the response with the steps chosen so far."""
        self.cancelled = True
        if self._step_timeout is not None:
            self._step_timeout.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> AsyncGenerator[StepTrace | ReasonResponse, None]:
        """Yield each step's trace as it is chosen, then the response."""
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        for index in range(self.request.max_steps):
            if self.cancelled:
                self.warnings.append(f"cancelled before step {index}")
                break
            timeout = asyncio.timeout_at(deadline if math.isfinite(deadline) else None)
            try:
                async with timeout:
                    self._step_timeout = timeout
                    trace = await self._step(index)
            except TimeoutError:
                if not timeout.expired():
                    raise
                if self.cancelled:
                    self.warnings.append(
                        f"cancelled during step {index}; returning the steps chosen so far"
                    )
                    break
                self.deadline_reached = True
                self.warnings.append(
                    f"deadline of {self.deadline_s:g}s reached during step {index}; "
                    "returning the steps chosen so far"
                )
                break
            finally:
                self._step_timeout = None
            if trace is None:
                break
            self.steps.append(trace.step)
            self.trace.append(trace)
            yield trace
            if contains_end_phrase(trace.step):
                self.finished = True
                break
        yield self.response(time.perf_counter() - start)

    def response(self, elapsed_s: float) -> ReasonResponse:
        total_ms = _ms(elapsed_s)
        model_ms = round(sum(t.timings.model_ms for t in self.trace), 3)
        return ReasonResponse(
            id=self.request_id,
            question=self.question,
            answer=extract_answer("\n".join(self.steps)),
            steps=list(self.steps),
            finished=self.finished,
            deadline_reached=self.deadline_reached,
            cancelled=self.cancelled,
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
        )


async def reason(
    request: ReasonRequest,
    upstreams: Upstreams,
    *,
    max_deadline_s: float = 600.0,
    request_id: str | None = None,
) -> ReasonResponse:
    """Run the loop to the end and return the response."""
    reasoner = Reasoner(request, upstreams, max_deadline_s=max_deadline_s, request_id=request_id)
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
