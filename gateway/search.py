"""The search strategies of ``/v1/reason`` behind one protocol, chosen by a factory.

A strategy is a :class:`Search`: :meth:`~Search.run` yields its progress (a step's or a
round's trace) as it goes and the :class:`ReasonResponse` last; :meth:`~Search.cancel` stops
it. :func:`build_search` picks the implementation from the request's ``strategy``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from gateway.loop import Reasoner
from gateway.self_improve import SelfImproveSearch
from gateway.upstreams import ServiceName, Upstreams
from shared.gateway_schemas import ReasonRequest, ReasonResponse, RoundTrace, StepTrace, Strategy

Progress = StepTrace | RoundTrace
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
    match request.strategy:
        case Strategy.step:
            return Reasoner(
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


async def run_to_end(search: Search) -> ReasonResponse:
    """Iterate a search to its response."""
    async for item in search.run():
        if isinstance(item, ReasonResponse):
            return item
    raise AssertionError("the search ended without a response")  # pragma: no cover
