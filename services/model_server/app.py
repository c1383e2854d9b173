"""The model service's FastAPI app: routes parse, call a handler, map to HTTP; nothing else."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.model_server.engines.base import Engine
from services.model_server.handlers import ModelService
from services.model_server.metrics import ModelMetrics
from services.model_server.serving import EngineFactory, ServedModel
from services.model_server.settings import ModelServerSettings
from shared.errors import Forbidden
from shared.http import error_responses, install_error_handlers, install_middleware
from shared.openai_schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from shared.schemas import (
    ProposeRequest,
    ProposeResponse,
    RationaleRequest,
    RationaleResponse,
    RewardRequest,
    RewardResponse,
    RolloutRequest,
    RolloutResponse,
    ScoreRequest,
    ScoreResponse,
    SwitchModelRequest,
    SwitchModelResponse,
)

logger = logging.getLogger(__name__)

MODEL_ROUTES = frozenset(
    {
        "/v1/rationale",
        "/v1/propose",
        "/v1/rollout",
        "/v1/score",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/reward",
    }
)
"""Routes that run the model: a request whose client disconnects is cancelled, and the
engine drops its sequences."""


async def get_service(request: Request) -> AsyncIterator[ModelService]:
    """The current model's service, held by the request until its response is built (a
    switch meanwhile closes the old engine only after that)."""
    served: ServedModel = request.app.state.model
    with served.lease() as service:
        yield service


ServiceDep = Annotated[ModelService, Depends(get_service)]

MODEL_ERRORS = error_responses(
    401,
    422,
    503,
    504,
    notes={
        503: "The model is not loaded yet, or the engine failed.",
        504: "The request ran past MODEL_SERVER_REQUEST_TIMEOUT_S.",
    },
)
"""The errors of every route that runs the model."""
_CHAT_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; with `stream: true`, OpenAI stream chunks (SSE).",
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}


async def require_admin(request: Request) -> None:
    """Admin routes are off unless the internal token is set (the auth middleware then
    requires it on them, as on every non-public route)."""
    settings: ModelServerSettings = request.app.state.model.settings
    if settings.internal_token is None:
        raise Forbidden(
            "the admin API is off: set MODEL_SERVER_INTERNAL_TOKEN on this service to enable "
            "it, then send `Authorization: Bearer <token>`"
        )


AdminDep = Depends(require_admin)


def create_app(
    settings: ModelServerSettings,
    *,
    engine: Engine | None = None,
    engine_factory: EngineFactory | None = None,
) -> FastAPI:
    """Build the app. Without ``engine`` the lifespan builds the one the settings name and
    loads it in the background: /health answers at once, /ready turns 200 when loaded.
    ``engine_factory`` builds the engines of model switches (default: ``build_engine``)."""
    metrics = ModelMetrics()
    served = ServedModel(settings, metrics, engine_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served.start(engine)
        try:
            yield
        finally:
            await served.close()

    app = FastAPI(
        title=f"rationalyst model service ({settings.role.value})",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.model = served
    install_error_handlers(app)
    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    install_middleware(app, metrics, token=token, cancel_paths=MODEL_ROUTES.__contains__)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Alive; 503 once the engine has failed beyond recovery (orchestrators restart it)."""
        return served.health()

    @app.get("/ready", responses=error_responses(503, notes={503: "The model is not ready."}))
    async def ready() -> dict[str, Any]:
        """200 once the model is loaded and the engine healthy; 503 otherwise."""
        return served.ready()

    @app.post(
        "/admin/model",
        dependencies=[AdminDep],
        responses=error_responses(
            401,
            403,
            409,
            422,
            503,
            notes={
                403: "The admin API is off (no internal token set).",
                409: "Another switch is loading.",
                503: "The new model failed to load (the old one keeps serving).",
            },
        ),
    )
    async def switch_model(req: SwitchModelRequest) -> SwitchModelResponse:
        """Switch the served model: load the new one, swap, drain the old (internal token)."""
        return await served.switch(req.model)

    @app.post("/v1/rationale", responses=MODEL_ERRORS)
    async def rationale(req: RationaleRequest, service: ServiceDep) -> RationaleResponse:
        """Write the implicit rationale for a trajectory (greedy by default)."""
        return await service.rationale(req)

    @app.post("/v1/propose", responses=MODEL_ERRORS)
    async def propose(req: ProposeRequest, service: ServiceDep) -> ProposeResponse:
        """Propose n candidate next steps for a trajectory."""
        return await service.propose(req)

    @app.post("/v1/rollout", responses=MODEL_ERRORS)
    async def rollout(req: RolloutRequest, service: ServiceDep) -> RolloutResponse:
        """Complete a partial solution to its end n times (all n decoded in one batch)."""
        return await service.rollout(req)

    @app.post("/v1/score", responses=MODEL_ERRORS)
    async def score(req: ScoreRequest, service: ServiceDep) -> ScoreResponse:
        """Score continuations of one context in one batched pass."""
        return await service.score(req)

    @app.post("/v1/reward", responses=MODEL_ERRORS)
    async def reward(req: RewardRequest, service: ServiceDep) -> RewardResponse:
        """Score solutions with the reward model: per step (PRM) or per solution (ORM)."""
        return await service.reward(req)

    @app.post("/v1/completions", responses=MODEL_ERRORS)
    async def completions(req: CompletionRequest, service: ServiceDep) -> JSONResponse:
        """OpenAI-compatible text completions (echo and logprobs; max_tokens 0 with echo)."""
        return JSONResponse(await service.completions(req))

    @app.post("/v1/chat/completions", response_model=None, responses={**_CHAT_200, **MODEL_ERRORS})
    async def chat_completions(
        req: ChatCompletionRequest, service: ServiceDep
    ) -> JSONResponse | StreamingResponse:
        """OpenAI-compatible chat completions (n, logprobs, stream)."""
        result = await service.chat_completions(req)
        if not req.stream:
            return JSONResponse(result)
        return StreamingResponse(_chat_chunks(result), media_type="text/event-stream")

    @app.get("/v1/models", responses=error_responses(401))
    async def models() -> ModelList:
        """The one model this service serves, under its role's name."""
        return ModelList(data=[ModelCard(id=settings.name)])

    return app


async def _chat_chunks(result: dict[str, Any]) -> AsyncIterator[str]:
    """A finished chat completion as OpenAI stream chunks. The engine returns whole
    completions, so each choice arrives as one content delta."""
    base = {k: result[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    for choice in result["choices"]:
        i = choice["index"]
        for delta, finish in (
            ({"role": "assistant", "content": ""}, None),
            ({"content": choice["message"]["content"]}, None),
            ({}, choice["finish_reason"]),
        ):
            chunk = base | {"choices": [{"index": i, "delta": delta, "finish_reason": finish}]}
            yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
