"""HTTP routes of the gateway: parse, call a handler, map to a response; nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from gateway import handlers
from gateway.deps import RequestIdDep, StateDep
from shared.gateway_schemas import (
    ChatCompletion,
    GatewayChatRequest,
    ReasonRequest,
    ReasonResponse,
    SelectRequest,
    SelectResponse,
    VerifyRequest,
    VerifyResponse,
)
from shared.openai_schemas import ModelCard, ModelList

router = APIRouter()

_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "With `stream: true`."}
}


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _stream(body: AsyncIterator[str], stream: handlers.SearchStream) -> StreamingResponse:
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


@router.get("/ready")
async def ready(state: StateDep) -> dict[str, Any]:
    """200 when the three model services are ready; 503 naming those that are not."""
    return await handlers.readiness(state)


@router.post("/v1/reason", response_model=ReasonResponse, responses=_STREAM)
async def reason(req: ReasonRequest, state: StateDep, rid: RequestIdDep) -> Response:
    """Solve a question step by step, each step chosen by process supervision."""
    if req.stream:
        stream = await handlers.open_stream(state, req, rid, "reason")
        return _stream(handlers.reason_events(stream, rid), stream)
    return _json(await handlers.reason(state, req, rid))


@router.post("/v1/select", response_model=SelectResponse)
async def select(req: SelectRequest, state: StateDep, rid: RequestIdDep) -> Response:
    """Rank caller-supplied candidate next steps of a trajectory."""
    return _json(await handlers.select(state, req, rid))


@router.post("/v1/verify", response_model=VerifyResponse)
async def verify(req: VerifyRequest, state: StateDep, rid: RequestIdDep) -> Response:
    """Check a step-by-step solution: all correct, or its first error step and why."""
    return _json(await handlers.verify(state, req, rid))


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_STREAM)
async def chat_completions(req: GatewayChatRequest, state: StateDep, rid: RequestIdDep) -> Response:
    """OpenAI-compatible guided reasoning; extra body fields choose the search."""
    if req.stream:
        stream, warnings = await handlers.open_chat_stream(state, req, rid)
        return _stream(handlers.chat_chunks(stream, warnings, rid), stream)
    return _json(await handlers.chat_completion(state, req, rid))


@router.get("/v1/models")
async def models(state: StateDep) -> ModelList:
    """The guided-reasoning model this gateway serves."""
    return ModelList(
        data=[ModelCard(id=state.settings.served_model_name, created=int(time.time()))]
    )
