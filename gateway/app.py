"""The gateway's FastAPI app factory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from gateway.files import create_files_router
from gateway.jobs import create_jobs_router
from gateway.metrics import GatewayMetrics
from gateway.openai_compat import install_openai_errors
from gateway.registry import create_registry_router
from gateway.routes import router
from gateway.settings import GatewaySettings
from gateway.state import GatewayState, Limiter
from gateway.traces import TraceStore
from gateway.traces import router as traces_router
from gateway.ui import install_ui, ui_paths
from gateway.upstreams import Upstreams, build_upstreams
from shared.http import install_error_handlers, install_middleware
from shared.jobs_store import JobStore

logger = logging.getLogger(__name__)

SEARCH_ROUTES = frozenset({"/v1/reason", "/v1/select", "/v1/chat/completions"})
"""Routes that run a search: a client that disconnects cancels it and its upstream calls."""


def create_app(
    settings: GatewaySettings,
    *,
    clients: Upstreams | None = None,
    job_store: JobStore | None = None,
) -> FastAPI:
    """Build the app. Without ``clients`` the lifespan opens one ModelServiceClient per model
    service (the settings' URLs, timeouts and internal token) and closes them at shutdown;
    without ``job_store`` the job API connects to the Redis the settings name."""
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstreams = clients if clients is not None else build_upstreams(settings)
        app.state.gateway = GatewayState(
            settings=settings,
            upstreams=upstreams,
            metrics=metrics,
            limiter=Limiter(
                settings.max_concurrent_requests,
                settings.queue_timeout_s,
                settings.max_queued_requests,
            ),
            traces=TraceStore(
                settings.trace_memory,
                redis_url=settings.redis_url,
                ttl_s=settings.trace_ttl_s,
                timeout_s=settings.redis_timeout_s,
            ),
        )
        logger.info(
            "gateway up: rationalyst=%s agent=%s scorer=%s auth=%s",
            settings.rationalyst_url,
            settings.agent_url,
            settings.scorer_url,
            "on" if settings.api_keys else "off",
        )
        try:
            yield
        finally:
            traces = app.state.gateway.traces
            app.state.gateway = None
            await traces.aclose()
            if clients is None:
                await upstreams.aclose()

    app = FastAPI(
        title="rationalyst gateway",
        version="0.1.0",
        description="Step-by-step reasoning with process supervision (RATIONALYST).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_openai_errors(app)
    install_middleware(
        app,
        metrics.http,
        token_list=settings.api_key_values(),
        public_paths=frozenset({"/health", "/ready", "/metrics"}) | ui_paths(),
        cancel_paths=SEARCH_ROUTES.__contains__,
    )
    app.include_router(router)
    app.include_router(create_jobs_router(settings, store=job_store))
    app.include_router(create_files_router(settings, max_upload_bytes=settings.max_upload_bytes))
    app.include_router(create_registry_router(settings))
    app.include_router(traces_router)
    install_ui(app)
    return app
