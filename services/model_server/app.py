"""The model service's FastAPI app: routes parse, call a handler, map to HTTP; nothing else."""

from __future__ import annotations

import asyncio
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
from services.model_server.settings import ModelServerSettings
from shared.errors import EngineError, ServiceError, ServiceUnavailable
from shared.http import install_error_handlers, install_middleware
from shared.openai_schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from shared.schemas import (
    ProposeRequest,
    ProposeResponse,
    RationaleRequest,
    RationaleResponse,
    ScoreRequest,
    ScoreResponse,
)

logger = logging.getLogger(__name__)


class State:
    """What the app holds while it runs: the engine once loaded, or why it is not."""

    def __init__(self, settings: ModelServerSettings, metrics: ModelMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.service: ModelService | None = None
        self.load_error: str | None = None

    def ready_service(self) -> ModelService:
        if self.service is None:
            why = self.load_error or "the model is still loading"
            raise ServiceUnavailable(f"{self.settings.role.value} is not ready: {why}")
        if not self.service.engine.healthy():
            raise EngineError(f"{self.settings.role.value}: the model engine has failed")
        return self.service


def get_service(request: Request) -> ModelService:
    state: State = request.app.state.model
    return state.ready_service()


ServiceDep = Annotated[ModelService, Depends(get_service)]


def create_app(settings: ModelServerSettings, *, engine: Engine | None = None) -> FastAPI:
    """Build the app. Without ``engine`` the lifespan builds the one the settings name and
    loads it in the background: /health answers at once, /ready turns 200 when loaded."""
    metrics = ModelMetrics()
    state = State(settings, metrics)

    async def load(eng: Engine) -> None:
        try:
            for hook in ("on_batch",):
                if hasattr(eng, hook):
                    setattr(eng, hook, metrics.on_batch)
            await eng.start()
        except Exception as exc:
            logger.exception("model failed to load")
            state.load_error = f"the model failed to load: {type(exc).__name__}: {exc}"
            return
        state.service = ModelService(settings, eng, metrics)
        logger.info("%s ready: %s on %s", settings.role.value, eng.model_name, eng.kind)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal engine
        if engine is None:
            from services.model_server.engines import build_engine

            try:
                engine = build_engine(settings)
            except ServiceError as exc:
                state.load_error = exc.message
        loader = asyncio.create_task(load(engine)) if engine is not None else None
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
                with contextlib.suppress(BaseException):
                    await loader
            if engine is not None:
                await engine.close()

    app = FastAPI(
        title=f"rationalyst model service ({settings.role.value})",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.model = state
    install_error_handlers(app)
    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    install_middleware(app, metrics, token=token)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Alive (cheap; says nothing about the model)."""
        return {"status": "ok", "role": settings.role.value}

    @app.get("/ready")
    async def ready() -> dict[str, Any]:
        """200 once the model is loaded and the engine healthy; 503 otherwise."""
        service = state.ready_service()
        return {
            "status": "ready",
            "role": settings.role.value,
            "model": service.engine.model_name,
            "engine": service.engine.kind,
            "max_model_len": service.engine.max_model_len,
        }

    @app.post("/v1/rationale")
    async def rationale(req: RationaleRequest, service: ServiceDep) -> RationaleResponse:
        """Write the implicit rationale for a trajectory (greedy by default)."""
        return await service.rationale(req)

    @app.post("/v1/propose")
    async def propose(req: ProposeRequest, service: ServiceDep) -> ProposeResponse:
        """Propose n candidate next steps for a trajectory."""
        return await service.propose(req)

    @app.post("/v1/score")
    async def score(req: ScoreRequest, service: ServiceDep) -> ScoreResponse:
        """Score continuations of one context in one batched pass."""
        return await service.score(req)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, service: ServiceDep) -> JSONResponse:
        """OpenAI-compatible text completions (echo and logprobs; max_tokens 0 with echo)."""
        return JSONResponse(await service.completions(req))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        req: ChatCompletionRequest, service: ServiceDep
    ) -> JSONResponse | StreamingResponse:
        """OpenAI-compatible chat completions (n, logprobs, stream)."""
        result = await service.chat_completions(req)
        if not req.stream:
            return JSONResponse(result)
        return StreamingResponse(_chat_chunks(result), media_type="text/event-stream")

    @app.get("/v1/models")
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
