"""HTTP routes of the gateway: parse, call a handler, map to a response; nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from gateway import handlers
from gateway.deps import RequestIdDep, StateDep
from gateway.openai_compat import openai_error_responses
from gateway.registry import strategy_models
from shared.gateway_schemas import (
    CancelResponse,
    ChatCompletion,
    GatewayChatRequest,
    ReasonRequest,
    ReasonResponse,
    SelectRequest,
    SelectResponse,
    VerifyRequest,
    VerifyResponse,
)
from shared.http import error_responses, on_close
from shared.openai_schemas import ModelCard, ModelList

router = APIRouter()

_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "With `stream: true`."}
}
_SEARCH = error_responses(
    401,
    422,
    503,
    504,
    notes={
        503: "A model service is down (the agent; others with `strict: true`), or the "
        "gateway is busy.",
        504: "A model service timed out.",
    },
)
_VERIFY = error_responses(
    401,
    422,
    503,
    504,
    notes={503: "The LLM verifier's model service is down.", 504: "The LLM verifier timed out."},
)
_CHAT = openai_error_responses(
    400,
    401,
    404,
    503,
    504,
    notes={
        404: "`model` is not the model this gateway serves (as OpenAI answers an unknown model; "
        "`code: model_not_found`).",
        503: _SEARCH[503]["description"],
        504: _SEARCH[504]["description"],
    },
)
_CANCEL = error_responses(401, 404, 422, notes={404: "No search with this id is running."})


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _stream(
    request: Request, body: AsyncIterator[str], stream: handlers.SearchStream
) -> StreamingResponse:
    on_close(request, stream.aclose)  # freed however the request ends, a disconnect included
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(stream.aclose),
    )


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive (cheap; does not check the model services)."""
    return {"status": "ok"}


@router.get("/ready", responses=error_responses(503, notes={503: "A model service is not ready."}))
async def ready(state: StateDep) -> dict[str, Any]:
    """200 when the three model services are ready; 503 naming those that are not."""
    return await handlers.readiness(state)


@router.post("/v1/reason", response_model=ReasonResponse, responses={**_STREAM, **_SEARCH})
async def reason(
    req: ReasonRequest, state: StateDep, rid: RequestIdDep, request: Request
) -> Response:
    """Solve a question step by step, each step chosen by process supervision."""
    if req.stream:
        stream = await handlers.open_stream(state, req, rid, "reason")
        return _stream(request, handlers.reason_events(stream, rid), stream)
    return _json(await handlers.reason(state, req, rid))


@router.post("/v1/reason/{search_id}/cancel", response_model=CancelResponse, responses=_CANCEL)
async def cancel_reason(search_id: str, state: StateDep) -> CancelResponse:
    """Cancel a running search by its id (the response's `id`, its X-Request-Id)."""
    return handlers.cancel(state, search_id)


@router.post("/v1/select", response_model=SelectResponse, responses=_SEARCH)
async def select(req: SelectRequest, state: StateDep, rid: RequestIdDep) -> Response:
    """Rank caller-supplied candidate next steps of a trajectory."""
    return _json(await handlers.select(state, req, rid))


@router.post("/v1/verify", response_model=VerifyResponse, responses=_VERIFY)
async def verify(req: VerifyRequest, state: StateDep, rid: RequestIdDep) -> Response:
    """Check a step-by-step solution: all correct, or its first error step and why."""
    return _json(await handlers.verify(state, req, rid))


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**_STREAM, **_CHAT})
async def chat_completions(
    req: GatewayChatRequest, state: StateDep, rid: RequestIdDep, request: Request
) -> Response:
    """OpenAI-compatible guided reasoning; extra body fields choose the search."""
    if req.stream:
        stream, warnings = await handlers.open_chat_stream(state, req, rid)
        return _stream(request, handlers.chat_chunks(stream, warnings, rid, req), stream)
    return _json(await handlers.chat_completion(state, req, rid))


@router.post(
    "/v1/chat/completions/{completion_id}/cancel",
    response_model=CancelResponse,
    responses=_CANCEL,
)
async def cancel_chat_completion(completion_id: str, state: StateDep) -> CancelResponse:
    """Cancel a running chat completion by its id (`chatcmpl-<request id>`)."""
    return handlers.cancel(state, completion_id)


@router.get("/v1/models", responses=error_responses(401))
async def models(state: StateDep) -> ModelList:
    """The guided-reasoning model this gateway serves, and one id per search strategy
    (`<name>-beam`, `<name>-best-of-n`, `<name>-vote`, `<name>-weighted-vote`)."""
    served = state.settings.served_model_name
    ids = [served, *strategy_models(served)]
    now = int(time.time())
    return ModelList(data=[ModelCard(id=model, created=now) for model in ids])
