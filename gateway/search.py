"""The search strategies of ``/v1/reason`` behind one protocol, chosen by a factory.

A strategy is a :class:`Search`: :meth:`~Search.run` yields its progress (a step's or a
round's trace) as it goes and the :class:`ReasonResponse` last; :meth:`~Search.cancel` stops
it. :func:`build_search` picks the implementation from the request's ``strategy``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from gateway.beam import BeamSearch
from gateway.loop import Reasoner
from gateway.reward import REWARD_HEURISTICS, require_reward
from gateway.self_improve import SelfImproveSearch
from gateway.solutions import SolutionsSearch
from gateway.upstreams import ServiceName, Upstreams
from shared.errors import InvalidRequest
from shared.gateway_schemas import (
    Heuristic,
    ReasonRequest,
    ReasonResponse,
    RoundTrace,
    StepTrace,
    Strategy,
    TreeNode,
)

Progress = StepTrace | RoundTrace | TreeNode
"""What a search yields before its response."""


class Search(Protocol):
    """One search for one request."""

    def run(self) -> AsyncGenerator[Progress | ReasonResponse, None]:
        """Yield progress as it happens, then the response (last)."""
        ...

    def cancel(self) -> None:
        """Abandon the work in flight; :meth:`run` then yields the response so far."""
        ...


def build_search(
    request: ReasonRequest,
    upstreams: Upstreams,
    *,
    max_deadline_s: float = 600.0,
    request_id: str | None = None,
    verifier_service: ServiceName = "scorer",
    verifier_max_tokens: int = 256,
    answer_grace_s: float = 10.0,
) -> Search:
    """The search ``request.strategy`` names. Raises InvalidRequest (422 naming the field) for
    options that strategy cannot honour."""
    check_request(request, upstreams)
    match request.strategy:
        case Strategy.step:
            return Reasoner(
                request,
                upstreams,
                max_deadline_s=max_deadline_s,
                request_id=request_id,
                answer_grace_s=answer_grace_s,
            )
        case Strategy.beam:
            return BeamSearch(
                request,
                upstreams,
                max_deadline_s=max_deadline_s,
                request_id=request_id,
                answer_grace_s=answer_grace_s,
            )
        case Strategy.best_of_n | Strategy.vote | Strategy.weighted_vote:
            return SolutionsSearch(
                request,
                upstreams,
                max_deadline_s=max_deadline_s,
                request_id=request_id,
                answer_grace_s=answer_grace_s,
            )
        case Strategy.self_improve:
            return SelfImproveSearch(
                request,
                upstreams,
                max_deadline_s=max_deadline_s,
                request_id=request_id,
                verifier_service=verifier_service,
                verifier_max_tokens=verifier_max_tokens,
            )
    raise ValueError(f"unknown strategy {request.strategy!r}")  # pragma: no cover


def step_cost(request: ReasonRequest) -> int:
    """The most tokens the first step of a search may generate: what a budget must at least
    allow (scored tokens come on top and are not known in advance)."""
    rationale = (
        request.max_rationale_tokens
        if request.heuristic in (Heuristic.rationalyst, Heuristic.rationalyst_explicit)
        else 0
    )
    step = request.max_step_tokens
    match request.strategy:
        case Strategy.beam:
            return request.n_beams * step + rationale
        case Strategy.best_of_n | Strategy.vote | Strategy.weighted_vote:
            return request.n * step
    n = 1 if request.heuristic is Heuristic.greedy else request.n_candidates
    return n * step + rationale


def check_request(request: ReasonRequest, upstreams: Upstreams) -> None:
    """422 naming the field for options that do not fit together, or a reward heuristic
    without a reward service (``upstreams.reward``, where the gateway has one)."""
    if request.heuristic in REWARD_HEURISTICS:
        require_reward(upstreams.reward, request.heuristic)
    if request.strategy is Strategy.beam and request.beam_width > request.n_beams:
        raise InvalidRequest(
            f"beam_width: {request.beam_width} exceeds n_beams ({request.n_beams}); each "
            "beam's proposals compete for n_beams places",
            field="beam_width",
        )
    budget = request.max_tokens_budget
    if budget is not None and request.strategy is Strategy.self_improve:
        raise InvalidRequest(
            "max_tokens_budget: self_improve does not take a token budget (use max_rounds)",
            field="max_tokens_budget",
        )
    if budget is not None and budget < (cost := step_cost(request)):
        raise InvalidRequest(
            f"max_tokens_budget: {budget} is below the cost of one step of {request.strategy} "
            f"(up to {cost} generated tokens with these options)",
            field="max_tokens_budget",
        )


async def run_to_end(search: Search) -> ReasonResponse:
    """Iterate a search to its response."""
    async for item in search.run():
        if isinstance(item, ReasonResponse):
            return item
    raise AssertionError("the search ended without a response")  # pragma: no cover
